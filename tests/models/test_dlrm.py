"""The DLRM-style click-through model: shapes, learning the synthetic task, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hirex.data.ctr import CtrData, SyntheticCtrConfig, make_synthetic_ctr
from hirex.models.dlrm import DLRM, DlrmTrainConfig, ctr_metrics, train_dlrm


def test_forward_shapes_and_interactions():
    m = DLRM([10, 20, 30], n_dense=4, dim=8)
    out = m(torch.randn(5, 4), torch.randint(0, 10, (5, 3)))
    assert out.shape == (5,)
    assert m._pairs.shape[1] == 6  # 4 vectors (dense + 3 tables): 6 pairs


def test_learns_the_synthetic_task_deterministically():
    cfg = SyntheticCtrConfig(n_samples=40_000, n_tables=12, n_groups=3, table_size=200, seed=2)
    train, held = make_synthetic_ctr(cfg)[0].split(0.2)
    a = train_dlrm(train, DlrmTrainConfig(epochs=2, dim=8))
    b = train_dlrm(train, DlrmTrainConfig(epochs=2, dim=8))
    ma, mb = ctr_metrics(a, held), ctr_metrics(b, held)
    assert ma == mb
    assert ma["ne"] < 1.0 and ma["auc"] > 0.55  # better than the base click rate


def test_normalised_entropy_of_the_base_rate_is_one():
    n = 1000
    rng = np.random.default_rng(0)
    labels = (rng.random(n) < 0.3).astype(np.float32)
    data = CtrData(labels, np.zeros((n, 0), np.float32), np.zeros((n, 1), np.int64), (2,))
    m = DLRM([2], n_dense=0, dim=2)
    for p in m.top.parameters():
        torch.nn.init.zeros_(p)
    with torch.no_grad():
        m.top[-1].bias.fill_(float(np.log(labels.mean() / (1 - labels.mean()))))
    assert ctr_metrics(m, data)["ne"] == pytest.approx(1.0, abs=1e-5)
