"""Full-ranking evaluation protocols over a split dataset.

- ``lightgcn`` (set data, e.g. Gowalla): rank all items, mask each user's history (train and,
  for the test split, validation items), Recall@20 / NDCG@20 averaged over users with targets.
- ``leave_one_out`` (sequences, e.g. Amazon): one target per user (the next item), history
  items masked, R@5, R@10, N@5, N@10.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from hirex.data.interactions import Dataset, Interactions
from hirex.eval.metrics import MetricAccumulator
from hirex.index.exhaustive import exhaustive_topk, item_embeddings
from hirex.index.hierarchy import HierarchicalIndex
from hirex.index.search import beam_search
from hirex.models.retrieval_model import RetrievalModel

PROTOCOL_KS = {"set": (20,), "sequence": (5, 10)}


def default_ks(dataset: Dataset) -> tuple[int, ...]:
    return PROTOCOL_KS[dataset.kind]


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    n_users: int
    seconds: float
    cost: dict[str, float] | None = None
    """Index search only: items_scored_fraction, items_scored and nodes_scored per user."""

    @property
    def users_per_second(self) -> float:
        return self.n_users / self.seconds if self.seconds > 0 else float("inf")


Ranker = Callable[[np.ndarray, Interactions, int], np.ndarray]
"""(users (U,), history, k) -> (U, k) ranked item ids, history items excluded, -1 padding."""


def evaluate_ranker(
    ranker: Ranker,
    dataset: Dataset,
    split: Literal["valid", "test"] = "test",
    ks: tuple[int, ...] | None = None,
    *,
    block: int = 4096,
    max_users: int | None = None,
) -> Evaluation:
    """Full-ranking metrics of any ranker on ``split``, users processed ``block`` at a time.

    max_users: evaluate a fixed, evenly spaced subset of the users (for quick validation).
    """
    ks = tuple(ks or default_ks(dataset))
    targets = dataset.targets(split)
    history = dataset.history(split)
    users = targets.active_users()
    if max_users is not None and max_users < 1:
        raise ValueError(f"max_users (--max-users) must be at least 1, got {max_users}")
    if max_users is not None and len(users) > max_users:
        users = users[np.linspace(0, len(users) - 1, max_users).astype(np.int64)]
    acc = MetricAccumulator(ks)
    t0 = time.perf_counter()
    for start in range(0, len(users), block):
        chunk = users[start : start + block]
        acc.add(ranker(chunk, history, max(ks)), chunk, targets)
    seconds = time.perf_counter() - t0
    report = acc.result()
    return Evaluation(dict(report.values), report.n_users, seconds)


def evaluate(
    model: RetrievalModel,
    dataset: Dataset,
    split: Literal["valid", "test"] = "test",
    ks: tuple[int, ...] | None = None,
    *,
    user_batch: int = 512,
    item_chunk: int = 65536,
    max_users: int | None = None,
    progress: bool = False,
) -> Evaluation:
    """Exhaustive full-ranking metrics of ``model`` on ``split`` (history items masked)."""
    items = item_embeddings(model, item_chunk)

    def ranker(users: np.ndarray, history: Interactions, k: int) -> np.ndarray:
        top = exhaustive_topk(
            model,
            users,
            history,
            k,
            exclude=history,
            items=items,
            user_batch=user_batch,
            item_chunk=item_chunk,
            progress=progress,
        )
        return top.ids.numpy()

    return evaluate_ranker(ranker, dataset, split, ks, max_users=max_users)


def evaluate_index(
    model: RetrievalModel,
    index: HierarchicalIndex,
    dataset: Dataset,
    split: Literal["valid", "test"] = "test",
    ks: tuple[int, ...] | None = None,
    beam: int | str | tuple[int, ...] = 8,
    *,
    user_batch: int = 256,
    max_users: int | None = None,
    progress: bool = False,
) -> Evaluation:
    """Full-ranking metrics of beam search through ``index`` (history items masked), with the
    search cost: the mean share of the active items the full model scored per user."""
    items_scored: list[np.ndarray] = []
    nodes_scored: list[np.ndarray] = []

    def ranker(users: np.ndarray, history: Interactions, k: int) -> np.ndarray:
        res = beam_search(
            model,
            index,
            users,
            history,
            k,
            beam,
            exclude=history,
            user_batch=user_batch,
            progress=progress,
        )
        items_scored.append(res.items_scored)
        nodes_scored.append(res.nodes_scored)
        return res.topk.ids.numpy()

    ev = evaluate_ranker(ranker, dataset, split, ks, max_users=max_users)
    items = np.concatenate(items_scored) if items_scored else np.zeros(1)
    nodes = np.concatenate(nodes_scored) if nodes_scored else np.zeros(1)
    cost = {
        "items_scored_fraction": float(items.mean() / max(index.n_active, 1)),
        "items_scored": float(items.mean()),
        "nodes_scored": float(nodes.mean()),
    }
    return Evaluation(ev.metrics, ev.n_users, ev.seconds, cost)
