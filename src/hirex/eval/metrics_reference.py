"""Plain-loop reference for :mod:`hirex.eval.metrics`: one user at a time, sets and lists.

Slow and obviously correct; the tests compare the vectorised metrics against it.  The
definitions are those of the :mod:`hirex.eval.metrics` module docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hirex.data.interactions import Interactions
from hirex.eval.metrics import MetricReport, metric_keys

__all__ = ["ranking_metrics_reference"]


def ranking_metrics_reference(
    ranked: np.ndarray, users: np.ndarray, targets: Interactions, ks: Sequence[int]
) -> MetricReport:
    """Same contract as ``ranking_metrics(..., per_user=True)``; ks must be distinct.

    ranked: (U, W) int item ids, best first, -1 padding.  users: (U,) int ids into targets.
    """
    keys = metric_keys(ks)
    rows = np.asarray(ranked).tolist()
    per_user: dict[str, list[float]] = {key: [] for key in keys}
    sums = dict.fromkeys(keys, 0.0)
    n_users = 0
    for row, user in zip(rows, np.asarray(users).tolist(), strict=True):
        target_set = set(targets.user_items(user).tolist())
        if not target_set:
            for key in keys:
                per_user[key].append(math.nan)
            continue
        n_users += 1
        for k in ks:
            if k > len(row):
                raise ValueError(f"k={k} is larger than the ranking width {len(row)}")
            values = _user_metrics(row[:k], target_set, k)
            for name, value in values.items():
                per_user[f"{name}@{k}"].append(value)
                sums[f"{name}@{k}"] += value
    means = {key: (sums[key] / n_users if n_users else math.nan) for key in keys}
    arrays = {key: np.array(per_user[key], dtype=np.float64) for key in keys}
    return MetricReport(values=means, n_users=n_users, per_user=arrays)


def _user_metrics(top_k: list[int], target_set: set[int], k: int) -> dict[str, float]:
    """Metrics of one user's top-k list against a non-empty set of target items."""
    hit_ranks = []  # 0-based ranks of hits, first occurrences only
    seen = set()
    for rank, item in enumerate(top_k):
        if item in target_set and item not in seen:
            hit_ranks.append(rank)
        seen.add(item)
    n_hits = len(hit_ranks)
    dcg = sum(1.0 / math.log2(rank + 2) for rank in hit_ranks)
    idcg = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(target_set), k)))
    return {
        "recall": n_hits / len(target_set),
        "ndcg": dcg / idcg,
        "hit": 1.0 if n_hits else 0.0,
        "mrr": 1.0 / (hit_ranks[0] + 1) if hit_ranks else 0.0,
        "precision": n_hits / k,
    }
