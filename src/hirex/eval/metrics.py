"""Vectorised top-K ranking metrics over full-ranking retrieval results.

Definitions (per evaluated user; ``T`` is the user's set of distinct target items, ``r`` the
0-based rank of an entry in the ranking, a *hit* an entry of the top K that is in ``T``):

- ``recall@K    = hits / |T|`` -- divided by ``|T|``, not ``min(|T|, K)``, as in LightGCN's
  ``RecallPrecision_ATk`` (gusye1234/LightGCN-PyTorch, code/utils.py), which NGCF, LightGCN
  and most graph-CF papers report.  A user with more than K targets cannot reach 1.
- ``ndcg@K      = DCG / IDCG`` with binary gains: ``DCG = sum over hits of 1 / log2(r + 2)``,
  ``IDCG = sum_{r < min(|T|, K)} 1 / log2(r + 2)`` (LightGCN's ``NDCGatK_r``).
- ``hit@K       = 1`` if there is at least one hit, else 0.
- ``mrr@K       = 1 / (r + 1)`` of the first hit, 0 if there is none in the top K.
- ``precision@K = hits / K`` -- K, not the number of non-padding entries (LightGCN).

Conventions: ``-1`` in a ranking is padding ("no result"), never a hit, and still takes a
rank.  The ranking is a list, not a set: a repeated item counts only at its first occurrence
(later copies are misses), so no metric can exceed 1.  Targets are a set: an item listed twice
for a user counts once in ``|T|``.  Users with no target are skipped; every metric is the mean
over the remaining rows (a user that appears in two rows counts twice).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hirex.data.interactions import Interactions

__all__ = [
    "METRIC_NAMES",
    "MetricAccumulator",
    "MetricReport",
    "check_ks",
    "metric_keys",
    "ranking_metrics",
]

logger = logging.getLogger(__name__)

METRIC_NAMES: tuple[str, ...] = ("recall", "ndcg", "hit", "mrr", "precision")


@dataclass(frozen=True)
class MetricReport:
    """Metrics averaged over the evaluated users.

    values: ``{"recall@20": 0.12, ...}`` one entry per metric and K (see :func:`metric_keys`);
        NaN when no user was evaluated.
    n_users: number of rows evaluated (rows whose user has at least one target).
    per_user: when requested, ``{key: (R,) float64}`` for the same keys, aligned with the R
        rows passed in (in the order given, across batches), NaN for skipped rows; else None.
    """

    values: dict[str, float]
    n_users: int
    per_user: dict[str, np.ndarray] | None = None


def check_ks(ks: int | Sequence[int]) -> tuple[int, ...]:
    """Validate cut-offs: positive ints, duplicates dropped, order kept."""
    ks_seq = [ks] if isinstance(ks, (int, np.integer)) else list(ks)
    if not ks_seq:
        raise ValueError("ks is empty; pass at least one cut-off, e.g. ks=[10, 20]")
    for k in ks_seq:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"each k must be a positive int; got {k!r} in ks={ks_seq!r}")
    return tuple(dict.fromkeys(int(k) for k in ks_seq))


def metric_keys(ks: Sequence[int]) -> list[str]:
    """Report keys in report order: for each K, ``recall@K, ndcg@K, hit@K, mrr@K, precision@K``."""
    return [f"{name}@{k}" for k in ks for name in METRIC_NAMES]


def ranking_metrics(
    ranked: np.ndarray,
    users: np.ndarray,
    targets: Interactions,
    ks: int | Sequence[int],
    *,
    per_user: bool = False,
) -> MetricReport:
    """Recall, NDCG, hit rate, MRR and precision at each K (definitions in the module docstring).

    ranked: (U, W) int item ids per row, best first, -1 for padding; every K must be <= W.
    users: (U,) int user id of each row, indexing ``targets``.
    targets: held-out items per user, e.g. ``dataset.targets("test")``.
    ks: cut-offs, e.g. ``[10, 20, 50]``.
    per_user: also return the (U,) per-row values (NaN for skipped rows).
    """
    acc = MetricAccumulator(ks, per_user=per_user)
    acc.add(ranked, users, targets)
    return acc.result()


class MetricAccumulator:
    """Batch-by-batch evaluation: ``add`` each batch of rankings, then ``result``.

    The result equals one :func:`ranking_metrics` call on all rows (up to float rounding).
    Memory is O(number of metrics) unless ``per_user`` keeps the per-row values.
    """

    def __init__(self, ks: int | Sequence[int], *, per_user: bool = False) -> None:
        self.ks = check_ks(ks)
        self.keys = metric_keys(self.ks)
        self._sums = np.zeros(len(self.keys), dtype=np.float64)
        self._n_users = 0
        self._per_user: list[np.ndarray] | None = [] if per_user else None

    def add(self, ranked: np.ndarray, users: np.ndarray, targets: Interactions) -> None:
        """Add one batch.  ranked: (B, W) int, -1 padding; users: (B,) int ids into targets."""
        ranked, users = _check_batch(ranked, users, targets, self.ks)
        values, evaluated = _batch_metrics(ranked, users, targets, self.ks)  # (B, M), (B,)
        self._sums += values[evaluated].sum(axis=0)
        self._n_users += int(evaluated.sum())
        if self._per_user is not None:
            values[~evaluated] = np.nan
            self._per_user.append(values)

    def result(self) -> MetricReport:
        """Means over all evaluated rows so far (NaN, with a warning, if there were none)."""
        if self._n_users == 0:
            logger.warning("no evaluated user has a target; all metrics are NaN")
            means = np.full(len(self.keys), np.nan)
        else:
            means = self._sums / self._n_users
        per_user = None
        if self._per_user is not None:
            table = (
                np.concatenate(self._per_user)
                if self._per_user
                else np.zeros((0, len(self.keys)), dtype=np.float64)
            )
            per_user = {key: table[:, j].copy() for j, key in enumerate(self.keys)}
        values = {key: float(v) for key, v in zip(self.keys, means, strict=True)}
        return MetricReport(values=values, n_users=self._n_users, per_user=per_user)


def _check_batch(
    ranked: np.ndarray, users: np.ndarray, targets: Interactions, ks: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    ranked = np.asarray(ranked)
    users = np.asarray(users)
    if ranked.ndim != 2 or not np.issubdtype(ranked.dtype, np.integer):
        raise ValueError(
            f"ranked must be a 2-d integer array (U, W); got shape {ranked.shape} "
            f"dtype {ranked.dtype}"
        )
    if users.shape != (ranked.shape[0],) or not np.issubdtype(users.dtype, np.integer):
        raise ValueError(
            f"users must be a 1-d integer array with one id per row of ranked "
            f"({ranked.shape[0]}); got shape {users.shape} dtype {users.dtype}"
        )
    width = ranked.shape[1]
    for k in ks:
        if k > width:
            raise ValueError(
                f"k={k} is larger than the ranking width {width}; retrieve at least "
                f"{max(ks)} items per user or drop k={k} from ks"
            )
    ranked = ranked.astype(np.int64, copy=False)
    users = users.astype(np.int64, copy=False)
    if users.size and (users.min() < 0 or users.max() >= targets.n_users):
        raise ValueError(
            f"user ids must lie in [0, {targets.n_users}) (targets.n_users); "
            f"got min {users.min()}, max {users.max()}"
        )
    if ranked.size and (ranked.min() < -1 or ranked.max() >= targets.n_items):
        raise ValueError(
            f"ranked item ids must lie in [0, {targets.n_items}) or be -1 for padding; "
            f"got min {ranked.min()}, max {ranked.max()}"
        )
    if targets.n_items and ranked.shape[0] > np.iinfo(np.int64).max // targets.n_items:
        raise ValueError("batch too large for int64 (row, item) keys; evaluate in smaller batches")
    return ranked, users


def _batch_metrics(
    ranked: np.ndarray, users: np.ndarray, targets: Interactions, ks: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(B, len(ks) * 5) float64 metric values in ``metric_keys`` order, and (B,) bool evaluated."""
    n_rows = ranked.shape[0]
    kmax = max(ks)
    hits, n_targets = _first_hits(ranked[:, :kmax], users, targets)  # (B, kmax), (B,)
    evaluated = n_targets > 0
    out = np.zeros((n_rows, len(ks) * len(METRIC_NAMES)), dtype=np.float64)
    if not evaluated.any():
        return out, evaluated

    # Every K reads the same prefix sums, so one pass serves all cut-offs.
    discount = 1.0 / np.log2(np.arange(kmax, dtype=np.float64) + 2.0)  # (kmax,)
    n_hits = np.cumsum(hits, axis=1, dtype=np.int64)  # (B, kmax)
    dcg = np.cumsum(hits * discount, axis=1)  # (B, kmax)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])  # ideal[m] = IDCG with m hits
    any_hit = hits.any(axis=1)
    first = np.where(any_hit, hits.argmax(axis=1), kmax)  # rank of the first hit, kmax if none
    safe_targets = np.maximum(n_targets, 1)  # skipped rows divide by 1 and are masked later

    for i, k in enumerate(ks):
        h = n_hits[:, k - 1].astype(np.float64)
        cols = out[:, i * len(METRIC_NAMES) : (i + 1) * len(METRIC_NAMES)]
        cols[:, 0] = h / safe_targets
        cols[:, 1] = dcg[:, k - 1] / ideal[np.clip(n_targets, 1, k)]
        cols[:, 2] = h > 0
        cols[:, 3] = np.where(first < k, 1.0 / (first + 1.0), 0.0)
        cols[:, 4] = h / k
    out[~evaluated] = 0.0
    return out, evaluated


def _first_hits(
    ranked: np.ndarray, users: np.ndarray, targets: Interactions
) -> tuple[np.ndarray, np.ndarray]:
    """(B, W) bool: entry is a target of its row's user and its first occurrence in the row;
    (B,) int64 number of distinct targets of each row's user."""
    n_rows, width = ranked.shape
    n_items = targets.n_items

    # Targets of this batch as sorted unique int64 keys row * n_items + item.
    row_of, target_items = targets.gather(users)
    if len(row_of) == 0:
        return np.zeros((n_rows, width), dtype=bool), np.zeros(n_rows, dtype=np.int64)
    rows = np.arange(n_rows, dtype=np.int64)
    target_keys = np.sort(row_of * n_items + target_items)
    target_keys = target_keys[_first_of_runs(target_keys)]  # sorted, deduplicated
    n_targets = np.bincount(target_keys // n_items, minlength=n_rows).astype(np.int64)

    # Membership of every ranked entry by binary search; -1 padding would alias the previous
    # row's last item, so it is masked out explicitly.
    keys = rows[:, None] * n_items + ranked  # (B, W)
    pos = np.minimum(np.searchsorted(target_keys, keys), len(target_keys) - 1)
    hits = (target_keys[pos] == keys) & (ranked >= 0)

    # A repeated item is a hit only at its first occurrence: row-major order is (row, rank)
    # order, and a stable sort keeps equal keys in that order, so each run starts with the
    # first occurrence.
    flat = np.flatnonzero(hits)
    order = np.argsort(keys.ravel()[flat], kind="stable")
    first = order[_first_of_runs(keys.ravel()[flat[order]])]
    if len(first) < len(flat):
        hits = np.zeros(n_rows * width, dtype=bool)
        hits[flat[first]] = True
        hits = hits.reshape(n_rows, width)
    return hits, n_targets


def _first_of_runs(sorted_keys: np.ndarray) -> np.ndarray:
    """(N,) bool: True where a sorted (N,) array starts a run of equal values.

    Used instead of np.unique, which took 0.2 s against 5 ms for 450k int64 keys (numpy 2.4).
    """
    starts = np.ones(len(sorted_keys), dtype=bool)
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=starts[1:])
    return starts
