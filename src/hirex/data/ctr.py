"""Click-through data with many sparse features: the Criteo TSV format, and a seeded synthetic
generator with planted groups of interacting features (for DMT's tower partitioner).

Criteo format (Criteo Terabyte / Kaggle display advertising): one sample per line, tab
separated: the label (0 or 1), 13 integer dense features, 26 categorical features as hex
strings (8 hex digits). Any dense or categorical field may be empty (missing). Dense values
get DLRM's transform ``log(1 + max(x, 0))``; a categorical value is hashed into its table as
``1 + value % (size - 1)``, id 0 standing for a missing value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from hirex.data.interactions import DataError, read_data_text

__all__ = [
    "CRITEO_DENSE",
    "CRITEO_SPARSE",
    "CtrData",
    "SyntheticCtrConfig",
    "make_synthetic_ctr",
    "read_criteo_tsv",
]

CRITEO_DENSE, CRITEO_SPARSE = 13, 26
FORMAT = "one sample per line: label<TAB>13 integers<TAB>26 hex strings (fields may be empty)"


@dataclass(frozen=True)
class CtrData:
    """labels: (N,) float32 in {0, 1}; dense: (N, n_dense) float32; sparse: (N, F) int64 ids,
    column f in ``0..table_sizes[f] - 1`` (0: missing). ``planted_groups`` holds the feature
    groups whose interactions make the label, for synthetic data; empty otherwise."""

    labels: np.ndarray
    dense: np.ndarray
    sparse: np.ndarray
    table_sizes: tuple[int, ...]
    planted_groups: tuple[tuple[int, ...], ...] = field(default=())

    def __len__(self) -> int:
        return len(self.labels)

    def split(self, fraction: float, seed: int = 0) -> tuple[CtrData, CtrData]:
        """A seeded random (1 - fraction, fraction) split, e.g. train and held-out."""
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
        order = np.random.default_rng(seed).permutation(len(self))
        cut = len(self) - max(1, int(round(fraction * len(self))))
        return self._take(order[:cut]), self._take(order[cut:])

    def _take(self, rows: np.ndarray) -> CtrData:
        return CtrData(
            self.labels[rows],
            self.dense[rows],
            self.sparse[rows],
            self.table_sizes,
            self.planted_groups,
        )


def read_criteo_tsv(
    path: str | os.PathLike,
    table_size: int | tuple[int, ...] = 100_000,
    bad_rows: Literal["error", "skip"] = "error",
) -> CtrData:
    """Read a Criteo-format file. ``table_size``: rows of each categorical feature's table
    (one size for all 26, or one each). ``bad_rows="skip"`` drops malformed lines (counted in
    a warning) instead of stopping at the first with its line, field and value."""
    import logging

    path = Path(path)
    sizes = (table_size,) * CRITEO_SPARSE if isinstance(table_size, int) else tuple(table_size)
    if len(sizes) != CRITEO_SPARSE or min(sizes) < 2:
        raise ValueError(f"table_size must be one size >= 2 or {CRITEO_SPARSE} of them")
    if bad_rows not in ("error", "skip"):
        raise ValueError(f"bad_rows = {bad_rows!r}; choose 'error' or 'skip'")
    text = read_data_text(path, FORMAT)
    labels, dense, sparse, skipped = [], [], [], []
    mod = np.array(sizes, dtype=np.int64) - 1
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            y, d, s = _parse_line(line)
        except ValueError as err:
            if bad_rows == "error":
                raise DataError(
                    f"{path}:{lineno}: {err}; expected {FORMAT} (or read with bad_rows='skip')"
                ) from None
            skipped.append(lineno)
            continue
        labels.append(y)
        dense.append(d)
        sparse.append(s)
    if skipped:
        logging.getLogger(__name__).warning(
            "%s: skipped %d malformed lines (first: line %d)", path, len(skipped), skipped[0]
        )
    if not labels:
        raise DataError(f"{path}: no valid samples; expected {FORMAT}")
    raw = np.array(sparse, dtype=np.int64)
    ids = np.where(raw < 0, 0, 1 + np.where(raw < 0, 0, raw) % mod)
    d = np.array(dense, dtype=np.float64)
    return CtrData(
        np.array(labels, dtype=np.float32),
        np.log1p(np.maximum(d, 0.0)).astype(np.float32),
        ids,
        sizes,
    )


def _parse_line(line: str) -> tuple[float, list[float], list[int]]:
    cols = line.rstrip("\r\n").split("\t")
    if len(cols) != 1 + CRITEO_DENSE + CRITEO_SPARSE:
        raise ValueError(
            f"{len(cols)} tab-separated fields, not {1 + CRITEO_DENSE + CRITEO_SPARSE}"
        )
    if cols[0] not in ("0", "1"):
        raise ValueError(f"label {cols[0]!r} is not 0 or 1")
    dense = []
    for j, v in enumerate(cols[1 : 1 + CRITEO_DENSE], 1):
        try:
            dense.append(float(int(v)) if v else 0.0)
        except ValueError:
            raise ValueError(f"dense feature I{j} = {v!r} is not an integer") from None
    sparse = []
    for j, v in enumerate(cols[1 + CRITEO_DENSE :], 1):
        try:
            sparse.append(int(v, 16) if v else -1)
        except ValueError:
            raise ValueError(f"categorical feature C{j} = {v!r} is not hexadecimal") from None
    return float(cols[0]), dense, sparse


@dataclass(frozen=True)
class SyntheticCtrConfig:
    """A click-through task whose label comes only from interactions within planted groups.

    Each of ``n_tables`` categorical features takes Zipf-distributed ids from a table of
    ``table_size``; every id has a hidden latent vector of ``latent_dim``. The logit is the
    sum over each planted group's pairs of features of the dot products of their latent
    vectors (scaled by ``strength`` over the square root of the group's number of pairs),
    plus noise; features outside every group are distractors. ``groups``: explicit groups of
    feature indices, or () for ``n_groups`` consecutive groups of ``group_size`` features."""

    n_samples: int = 20_000
    n_tables: int = 16
    table_size: int = 500
    n_dense: int = 4
    latent_dim: int = 4
    n_groups: int = 4
    group_size: int = 3
    groups: tuple[tuple[int, ...], ...] = ()
    strength: float = 1.5
    noise: float = 0.3
    zipf: float = 1.1
    seed: int = 0

    def planted(self) -> tuple[tuple[int, ...], ...]:
        if self.groups:
            return tuple(tuple(g) for g in self.groups)
        return tuple(
            tuple(range(g * self.group_size, (g + 1) * self.group_size))
            for g in range(self.n_groups)
        )


def make_synthetic_ctr(cfg: SyntheticCtrConfig) -> tuple[CtrData, np.ndarray]:
    """(data, latent): latent is (n_tables, table_size, latent_dim), the hidden vectors the
    label was made from (the known answer a model's embeddings can be compared with)."""
    groups = cfg.planted()
    used = [f for g in groups for f in g]
    if len(used) != len(set(used)) or min(used) < 0 or max(used) >= cfg.n_tables:
        raise ValueError(
            f"groups {groups} must be disjoint feature indices in 0..{cfg.n_tables - 1}"
        )
    if any(len(g) < 2 for g in groups):
        raise ValueError("every planted group needs at least 2 features to interact")
    rng = np.random.default_rng(cfg.seed)
    ranks = np.arange(1, cfg.table_size)
    p = ranks ** (-cfg.zipf)
    p /= p.sum()
    # id 0 is reserved for "missing", as in read_criteo_tsv
    sparse = 1 + rng.choice(cfg.table_size - 1, size=(cfg.n_samples, cfg.n_tables), p=p)
    latent = rng.normal(size=(cfg.n_tables, cfg.table_size, cfg.latent_dim)) / np.sqrt(
        cfg.latent_dim
    )
    z = latent[np.arange(cfg.n_tables), sparse]  # (N, F, r)
    logit = np.zeros(cfg.n_samples)
    for g in groups:
        pairs = [(a, b) for i, a in enumerate(g) for b in g[i + 1 :]]
        for a, b in pairs:
            logit += cfg.strength * (z[:, a] * z[:, b]).sum(-1) / np.sqrt(len(pairs))
    logit += cfg.noise * rng.normal(size=cfg.n_samples)
    labels = (rng.random(cfg.n_samples) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    dense = rng.normal(size=(cfg.n_samples, cfg.n_dense)).astype(np.float32)
    data = CtrData(labels, dense, sparse.astype(np.int64), (cfg.table_size,) * cfg.n_tables, groups)
    return data, latent.astype(np.float32)
