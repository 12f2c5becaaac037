"""Criteo TSV reading (generated files, bad rows) and the synthetic click-through task."""

from __future__ import annotations

import numpy as np
import pytest

from hirex.data.ctr import SyntheticCtrConfig, make_synthetic_ctr, read_criteo_tsv
from hirex.data.interactions import DataError


def row(label="1", dense=None, sparse=None):
    dense = [str(i) for i in range(13)] if dense is None else dense
    sparse = [f"{i:08x}" for i in range(26)] if sparse is None else sparse
    return "\t".join([label, *dense, *sparse])


def test_reads_generated_file(tmp_path):
    d2 = [""] + [str(i) for i in range(1, 12)] + ["-5"]
    s2 = ["", *[f"{255 + i:08x}" for i in range(25)]]
    (tmp_path / "t.tsv").write_text(row() + "\n" + row("0", d2, s2) + "\n")
    data = read_criteo_tsv(tmp_path / "t.tsv", table_size=100)
    assert data.labels.tolist() == [1.0, 0.0]
    assert data.dense.shape == (2, 13) and data.sparse.shape == (2, 26)
    assert data.dense[0, 3] == pytest.approx(np.log1p(3))
    assert data.dense[1, 0] == 0.0 and data.dense[1, 12] == 0.0  # missing, negative
    assert data.sparse[0, 5] == 1 + 5 % 99 and data.sparse[1, 0] == 0  # hashed; missing
    assert data.sparse[1, 1] == 1 + 255 % 99


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (row()[: row().rindex("\t")], r"t.tsv:2: 39 tab-separated fields, not 40"),
        (row(label="2"), "label '2' is not 0 or 1"),
        (row(dense=["x"] + ["1"] * 12), "dense feature I1 = 'x' is not an integer"),
        (row(sparse=["zz"] + ["0"] * 25), "categorical feature C1 = 'zz' is not hexadecimal"),
    ],
)
def test_bad_rows(tmp_path, line, message):
    (tmp_path / "t.tsv").write_text(row() + "\n" + line + "\n" + row("0") + "\n")
    with pytest.raises(DataError, match=message):
        read_criteo_tsv(tmp_path / "t.tsv")
    data = read_criteo_tsv(tmp_path / "t.tsv", bad_rows="skip")
    assert data.labels.tolist() == [1.0, 0.0]


def test_synthetic_task_is_seeded_and_learnable():
    cfg = SyntheticCtrConfig(n_samples=4000, seed=5)
    a, la = make_synthetic_ctr(cfg)
    b, _ = make_synthetic_ctr(cfg)
    assert np.array_equal(a.sparse, b.sparse) and np.array_equal(a.labels, b.labels)
    assert a.planted_groups == ((0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11))
    assert a.sparse.min() >= 1 and a.sparse.max() < cfg.table_size
    # the true logit (from the latent vectors) separates the labels: AUC well above 0.5
    from sklearn.metrics import roc_auc_score

    z = la[np.arange(cfg.n_tables), a.sparse]
    logit = sum(
        (z[:, i] * z[:, j]).sum(-1) for g in a.planted_groups for i in g for j in g if i < j
    )
    assert roc_auc_score(a.labels, logit) > 0.75
    train, held = a.split(0.2)
    assert len(train) == 3200 and len(held) == 800
    with pytest.raises(ValueError, match="disjoint"):
        make_synthetic_ctr(SyntheticCtrConfig(groups=((0, 1), (1, 2))))
