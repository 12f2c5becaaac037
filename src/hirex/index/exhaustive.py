"""Exact top-K by scoring every item: the reference that every index is measured against."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from hirex.data.interactions import Interactions
from hirex.index.topk import TopK, empty_topk, merge_topk
from hirex.models.retrieval_model import RetrievalModel
from hirex.models.user_batch import UserBatch, user_blocks

log = logging.getLogger(__name__)


@torch.no_grad()
def item_embeddings(model: RetrievalModel, chunk: int = 65536) -> torch.Tensor:
    """All item embeddings, (N, Q, D), computed in chunks."""
    model.eval()
    parts = []
    for start in range(0, model.n_items, chunk):
        ids = torch.arange(start, min(start + chunk, model.n_items), device=model.device)
        parts.append(model.encode_items(ids))
    return torch.cat(parts)


@torch.no_grad()
def exhaustive_topk(
    model: RetrievalModel,
    users: np.ndarray | UserBatch,
    history: Interactions | None,
    k: int,
    *,
    exclude: Interactions | None = None,
    exclude_ids: list[np.ndarray] | None = None,
    items: torch.Tensor | None = None,
    user_batch: int = 512,
    item_chunk: int = 65536,
    progress: bool = False,
) -> TopK:
    """Score every item for each user and keep the best ``k``.

    users: (U,) dense user ids whose histories come from ``history``, or a ready ``UserBatch``
    (e.g. ad-hoc users given only by their histories).
    exclude: items never returned for a user (typically their training items); ``exclude_ids``
    gives extra per-row items to drop.  items: precomputed ``item_embeddings(model)``.
    Memory is bounded by ``user_batch x item_chunk`` scores; no users x items matrix is built.
    Returns TopK with (U, k) scores and ids; rows with fewer than k eligible items end in -1.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    model.eval()
    device = model.device
    if items is None:
        items = item_embeddings(model, item_chunk)
    n_items = items.shape[0]
    n_users = len(users)
    max_len = model.cfg.max_history if model.sequential else None
    out_scores, out_ids = [], []
    blocks = user_blocks(users, history, user_batch, max_len)
    bar = tqdm(
        blocks,
        total=-(-n_users // user_batch),
        desc="scoring",
        unit="batch",
        disable=None if progress else True,
        leave=False,
    )
    t0 = time.perf_counter()
    start = 0
    for batch, rows_users in bar:
        stop = start + len(batch)
        u = model.encode_users(batch.to(device))
        mask_rows, mask_items = exclusion_pairs(
            stop - start,
            rows_users,
            exclude,
            None if exclude_ids is None else exclude_ids[start:stop],
        )
        mask_rows = torch.from_numpy(mask_rows).to(device)
        mask_items = torch.from_numpy(mask_items).to(device)
        best = empty_topk(stop - start, k, device)
        for c0 in range(0, n_items, item_chunk):
            c1 = min(c0 + item_chunk, n_items)
            scores = model.score(u, items[c0:c1]).float()
            sel = (mask_items >= c0) & (mask_items < c1)
            scores[mask_rows[sel], mask_items[sel] - c0] = float("-inf")
            ids = torch.arange(c0, c1, device=device).expand(stop - start, -1)
            best = merge_topk(best, scores, ids, k)
        # Excluded items score -inf; report them as "no result".
        ids = torch.where(torch.isinf(best.scores), torch.full_like(best.ids, -1), best.ids)
        out_scores.append(best.scores.cpu())
        out_ids.append(ids.cpu())
        start = stop
    log.debug("exhaustive: %d users in %.2fs", n_users, time.perf_counter() - t0)
    if not out_ids:
        return empty_topk(0, k)
    return TopK(torch.cat(out_scores), torch.cat(out_ids))


def exclusion_pairs(
    n_rows: int,
    users: np.ndarray | None,
    exclude: Interactions | None,
    extra: list[np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(row, item) pairs to mask for a block of ``n_rows`` rows, as two int64 arrays: the items
    of each row's user in ``exclude`` (when the rows have user ids) plus the row's ``extra``."""
    rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    if exclude is not None and users is not None:
        r, c = exclude.gather(users)
        rows.append(r)
        cols.append(c)
    if extra is not None:
        for r, ids in enumerate(extra):
            ids = np.asarray(ids, dtype=np.int64)
            rows.append(np.full(len(ids), r, np.int64))
            cols.append(ids)
    return np.concatenate(rows), np.concatenate(cols)
