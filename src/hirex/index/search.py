"""Batched level-by-level beam search with the full model scoring the items at the bottom.

Level 1: score every node for each user and keep the best ``beam[0]``.  Level l: gather the
children of the kept nodes (CSR ranges, padded per user), score them with level l's scorer and keep
the best ``beam[l - 1]``.  Bottom: gather the member items of the kept bottom nodes and score them
with the model itself; the result is ranked by the model's own scores (exact over the candidates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from hirex.data.interactions import Interactions
from hirex.index.exhaustive import exclusion_pairs
from hirex.index.hierarchy import HierarchicalIndex
from hirex.index.inverted_lists import DotLists
from hirex.index.topk import TopK, empty_topk
from hirex.models.retrieval_model import RetrievalModel
from hirex.models.user_batch import UserBatch, user_blocks


@dataclass(frozen=True)
class SearchResult:
    topk: TopK
    nodes_scored: np.ndarray
    """(U,) nodes scored per user, all levels together."""
    items_scored: np.ndarray
    """(U,) items scored by the full model per user."""


def parse_beam(beam: int | str | list[int] | tuple[int, ...], levels: int) -> tuple[int, ...]:
    """One width for every level, or one per level ('8,16' or [8, 16])."""
    if isinstance(beam, str):
        try:
            beam = [int(b) for b in beam.split(",") if b.strip()]
        except ValueError as err:
            raise ValueError(f"beam {beam!r}: give integers like 8 or 8,16") from err
    if isinstance(beam, int):
        beam = [beam] * levels
    beam = tuple(int(b) for b in beam)
    if len(beam) == 1:
        beam = beam * levels
    if len(beam) != levels or min(beam) < 1:
        raise ValueError(f"beam needs {levels} positive widths (one per level) or one, got {beam}")
    return beam


@torch.no_grad()
def beam_search(
    model: RetrievalModel,
    index: HierarchicalIndex,
    users: np.ndarray | UserBatch,
    history: Interactions | None,
    k: int,
    beam: int | str | tuple[int, ...],
    *,
    exclude: Interactions | None = None,
    exclude_ids: list[np.ndarray] | None = None,
    user_batch: int = 256,
    item_chunk: int = 65536,
    scan: Literal["auto", "torch", "faiss"] = "auto",
    progress: bool = False,
) -> SearchResult:
    """Top ``k`` items per user through the index.

    users: (U,) dense user ids with histories in ``history``, or a ready ``UserBatch``.
    beam: nodes kept per level (one width for all levels or one per level).
    exclude: items never returned for a user (typically their training items); ``exclude_ids``
    gives extra per-row items to drop (one array per user, e.g. for ad-hoc users).
    Removed items are never returned.  Rows with fewer than ``k`` candidates end in -1 / -inf.
    scan: how nodes and items are scored.  "torch" gathers (user, candidate) pairs and scores
    them with the model; "faiss" (dot-product models on CPU) scans faiss inverted lists laid
    over the index (``DotLists``) and gives the same result; "auto" takes faiss where it applies.
    Either way the returned scores are the model's own.
    progress: a progress bar over the user batches (on a terminal).
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    widths = parse_beam(beam, len(index.sizes))
    model.eval()
    device = model.device
    index.to(device)
    use_faiss = resolve_scan(model, scan) == "faiss"
    levels = index.levels
    member_ptr, members = index.members
    item_side = _item_side(model, index)
    t_member_ptr = torch.from_numpy(member_ptr).to(device)
    t_members = torch.from_numpy(members).to(device)
    max_len = model.cfg.max_history if model.sequential else None
    if exclude_ids is not None and len(exclude_ids) != len(users):
        raise ValueError(
            f"exclude_ids needs one array per user ({len(users)}), got {len(exclude_ids)}"
        )
    scores_out, ids_out, nodes_out, items_out = [], [], [], []
    start = 0
    blocks = tqdm(
        user_blocks(users, history, user_batch, max_len),
        total=-(-len(users) // user_batch),
        desc="searching",
        unit="batch",
        disable=None if progress else True,
        leave=False,
    )
    for batch, rows_users in blocks:
        stop = start + len(batch)
        u = model.encode_users(batch.to(device))
        rows, cols = exclusion_pairs(
            stop - start,
            rows_users,
            exclude,
            None if exclude_ids is None else exclude_ids[start:stop],
        )
        if use_faiss:
            items, nodes_scored, items_scored = _faiss_candidates(index, u, widths, k, rows, cols)
            valid = items >= 0
        else:
            kept, _, nodes_scored = descend(model, index, u, widths, len(levels), item_chunk)
            cand = _expand(kept, t_member_ptr)
            valid = cand >= 0
            items = torch.where(valid, t_members[cand.clamp(min=0)], -1)
        valid &= ~_excluded(items, rows, cols, device)
        items = torch.where(valid, items, -1)
        if not use_faiss:
            items_scored = valid.sum(1)
        s = _score_valid(model, u, index.item_emb, item_side, items, valid, item_chunk)
        best = _top_scores(s, items, k)
        scores_out.append(best.scores.cpu())
        ids_out.append(best.ids.cpu())
        nodes_out.append(nodes_scored.cpu().numpy())
        items_out.append(items_scored.cpu().numpy())
        start = stop
    if not ids_out:
        return SearchResult(empty_topk(0, k), np.zeros(0, np.int64), np.zeros(0, np.int64))
    return SearchResult(
        TopK(torch.cat(scores_out), torch.cat(ids_out)),
        np.concatenate(nodes_out),
        np.concatenate(items_out),
    )


def resolve_scan(model: RetrievalModel, scan: str = "auto") -> Literal["torch", "faiss"]:
    """The scan ``beam_search(..., scan=scan)`` uses for ``model``: "auto" is faiss for a
    dot-product model on CPU and torch otherwise."""
    if scan not in ("auto", "torch", "faiss"):
        raise ValueError(f"scan must be 'auto', 'torch' or 'faiss', got {scan!r}")
    applies = model.cfg.scorer == "dot" and model.device.type == "cpu"
    if scan == "faiss" and not applies:
        raise ValueError(
            "scan='faiss' scores dot-product models on CPU; this model has scorer "
            f"{model.cfg.scorer!r} on {model.device.type} (use scan='torch' or 'auto')"
        )
    return "faiss" if applies and scan != "torch" else "torch"


def _faiss_candidates(
    index: HierarchicalIndex,
    u: torch.Tensor,
    widths: tuple[int, ...],
    k: int,
    rows: np.ndarray,
    cols: np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best items of the kept leaves by faiss: (B, k + the most exclusions of a row) ids
    (-1 padded; the caller drops the excluded (rows, cols) pairs and rescores with the model),
    nodes scored (B,) and eligible items under the kept leaves (B,), as the torch scan counts
    them (the faiss scan also scores the excluded ones, then they are dropped)."""
    faiss.omp_set_num_threads(torch.get_num_threads())
    lists = DotLists.of(index)
    spare = int(np.bincount(rows).max()) if len(rows) else 0
    u_nodes = [index.codebooks.map_user(u, lv)[:, 0] for lv in range(len(index.sizes))]
    ids, _, kept, nodes, items = lists.search(u_nodes, u[:, 0], widths, k + spare)
    if len(rows):
        # Excluded pairs (each counted once) whose item lies under a kept leaf of its row.
        n = max(index.n_items, int(cols.max()) + 1)
        pairs = np.unique(rows * n + cols)
        rows, cols = pairs // n, pairs % n
        leaf = lists.leaf_of[cols.clip(max=len(lists.leaf_of) - 1)]
        leaf = np.where(cols < len(lists.leaf_of), leaf, -1)
        n_leaves = len(lists.list_sizes[-1]) + 1
        kept_keys = (np.arange(len(kept))[:, None] * n_leaves + kept)[kept >= 0]
        hit = (leaf >= 0) & np.isin(rows * n_leaves + leaf, kept_keys)
        items = items - np.bincount(rows[hit], minlength=len(items))
    return torch.from_numpy(ids), torch.from_numpy(nodes), torch.from_numpy(items)


@torch.no_grad()
def descend(
    model: RetrievalModel,
    index: HierarchicalIndex,
    u: torch.Tensor,
    widths: tuple[int, ...],
    depth: int,
    chunk: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Beam search from the top down to level ``depth`` (1-based) for users u: (B, P, D).

    Returns the kept nodes of that level (B, W) (indices into ``index.levels[depth - 1]``, -1
    where fewer were found), their scores (B, W) and the nodes scored per user (B,).
    """
    device = u.device
    levels = index.levels
    nonempty = [torch.from_numpy(lv.count > 0).to(device) for lv in levels[:depth]]
    node_side = _node_sides(model, index)[:depth]
    b = u.shape[0]
    s = model.score(index.codebooks.map_user(u, 0), levels[0].emb).float()
    s = s.masked_fill(~nonempty[0][None, :], float("-inf"))
    nodes_scored = torch.full((b,), int(nonempty[0].sum()), dtype=torch.int64, device=device)
    ids = torch.arange(s.shape[1], device=device).expand(b, -1)
    kept, kept_scores = _top(s, ids, widths[0])
    for level in range(1, depth):
        child_ptr = torch.from_numpy(levels[level - 1].child_ptr).to(device)
        cand = _expand(kept, child_ptr)
        valid = (cand >= 0) & nonempty[level][cand.clamp(min=0)]
        u_level = index.codebooks.map_user(u, level)
        s = _score_valid(model, u_level, levels[level].emb, node_side[level], cand, valid, chunk)
        nodes_scored += valid.sum(1)
        kept, kept_scores = _top(s, torch.where(valid, cand, -1), widths[level])
    return kept, kept_scores, nodes_scored


@torch.no_grad()
def prepare_index(model: RetrievalModel, index: HierarchicalIndex) -> None:
    """Compute everything search derives from the index's items now (node levels, member
    lists, the scorer's per-item and per-node work), so that later searches only read it.

    Search computes these lazily; a service that changes items calls this while it holds
    searches off, so that concurrent searches never race to fill the caches."""
    index.to(model.device)
    _ = index.levels, index.members
    _item_side(model, index)
    _node_sides(model, index)
    if resolve_scan(model) == "faiss":
        DotLists.of(index)


def _item_side(model: RetrievalModel, index: HierarchicalIndex) -> torch.Tensor | None:
    return index.cached_rows("item_side", _scorer_key(model), model.item_side)


def _node_sides(model: RetrievalModel, index: HierarchicalIndex) -> list[torch.Tensor | None]:
    return [
        index.cached(("node_side", i, *_scorer_key(model)), lambda e=lv.emb: model.item_side(e))
        for i, lv in enumerate(index.levels)
    ]


def _scorer_key(model: RetrievalModel) -> tuple:
    """Identifies the scorer's current weights: the model, and the version counters of its
    parameters (bumped by every in-place update, e.g. an optimiser step)."""
    return (id(model), *(p._version for p in model.scorer.parameters()))


def _score_valid(
    model: RetrievalModel,
    u: torch.Tensor,
    emb: torch.Tensor,
    side: torch.Tensor | None,
    cand: torch.Tensor,
    valid: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """Scores (B, C) of each row's valid candidates (ids into ``emb``), -inf elsewhere; only the
    valid (row, candidate) pairs are scored.

    The pairs are scored ``chunk`` at a time, gathered with ``index_select`` into buffers that
    every chunk reuses: on CPU, advanced indexing into fresh tensors of this size spends most of
    its time faulting in new pages, several times what the scoring itself costs."""
    rows = torch.repeat_interleave(torch.arange(cand.shape[0], device=cand.device), valid.sum(1))
    ids = cand[valid]  # row-major, the order of ``rows`` and of masked_scatter_ below
    u_side = model.user_side(u)
    flat = torch.empty(len(ids), device=cand.device)
    m = min(chunk, len(ids))
    u_buf = u.new_empty(m, *u.shape[1:])
    e_buf = emb.new_empty(m, *emb.shape[1:])
    us_buf = None if u_side is None else u_side.new_empty(m, *u_side.shape[1:])
    es_buf = None if side is None else side.new_empty(m, *side.shape[1:])
    for c0 in range(0, len(ids), chunk):
        r, i = rows[c0 : c0 + chunk], ids[c0 : c0 + chunk]
        n = len(r)
        flat[c0 : c0 + n] = model.score_pairs(
            torch.index_select(u, 0, r, out=u_buf[:n]),
            torch.index_select(emb, 0, i, out=e_buf[:n]),
            None if u_side is None else torch.index_select(u_side, 0, r, out=us_buf[:n]),
            None if side is None else torch.index_select(side, 0, i, out=es_buf[:n]),
        ).float()
    out = torch.full(cand.shape, float("-inf"), device=cand.device)
    return out.masked_scatter_(valid, flat)


def _top_scores(scores: torch.Tensor, ids: torch.Tensor, k: int) -> TopK:
    """(B, C) scores (-inf: no candidate) -> TopK of width k, -1 / -inf padded."""
    if scores.shape[1] < k:
        pad = k - scores.shape[1]
        scores = torch.cat([scores, scores.new_full((scores.shape[0], pad), float("-inf"))], 1)
        ids = torch.cat([ids, ids.new_full((ids.shape[0], pad), -1)], 1)
    top, pos = torch.topk(scores, k, dim=1)
    best = torch.gather(ids, 1, pos)
    return TopK(top, torch.where(torch.isinf(top), torch.full_like(best, -1), best))


def _top(scores: torch.Tensor, ids: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C) scores and ids -> (B, min(width, C)) ids of the best (-1 where -inf), scores."""
    top, pos = torch.topk(scores, min(width, scores.shape[1]), dim=1)
    return torch.where(torch.isinf(top), -1, torch.gather(ids, 1, pos)), top


def _expand(parents: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
    """parents: (B, W) node ids (-1: none), ptr: CSR pointers -> (B, C) child ids, -1 padded."""
    ok = parents >= 0
    p = parents.clamp(min=0)
    lo = torch.where(ok, ptr[p], 0)
    n = torch.where(ok, ptr[p + 1] - ptr[p], 0)
    per_row = n.sum(1)
    width = int(per_row.max()) if per_row.numel() else 0
    b = parents.shape[0]
    out = torch.full((b, max(width, 1)), -1, dtype=torch.int64, device=parents.device)
    if width == 0:
        return out
    # Flat list of (row, child) pairs: child = lo of its parent + rank within the parent.
    flat_n = n.reshape(-1)
    total = int(flat_n.sum())
    seg = torch.repeat_interleave(torch.arange(flat_n.numel(), device=p.device), flat_n)
    seg_start = torch.cumsum(flat_n, 0) - flat_n
    rank = torch.arange(total, device=p.device) - seg_start[seg]
    child = lo.reshape(-1)[seg] + rank
    row = seg // parents.shape[1]
    row_start = torch.cumsum(per_row, 0) - per_row
    col = torch.arange(total, device=p.device) - row_start[row]
    out[row, col] = child
    return out


def _excluded(
    items: torch.Tensor, rows: np.ndarray, cols: np.ndarray, device: torch.device
) -> torch.Tensor:
    """(B, C) bool: candidate (row, item) pairs listed in (rows, cols)."""
    if len(rows) == 0:
        return torch.zeros_like(items, dtype=torch.bool)
    n = max(int(items.max()) + 1, int(cols.max()) + 1, 1)
    keys = torch.from_numpy(rows * n + cols).to(device)
    cand = torch.arange(items.shape[0], device=device)[:, None] * n + items
    return torch.isin(cand, keys) & (items >= 0)
