"""Beam search for the dot-product scorer on faiss inverted lists (CPU).

For a dot-product model, scoring a node's children or a leaf's items is an inner product with
the user embedding, which is what faiss's IVF scan computes, in compiled code and without
gathering rows into temporaries.  ``DotLists`` lays the index out as one ``IndexIVFFlat`` per
level below the top: at level l the inverted list of a node holds its non-empty children
(level l + 1, labelled by node index), and at the bottom the list of a leaf holds its active
items (labelled by item id).  A search then is: score the top level densely, keep the best
``beam[0]``; at every later level ``search_preassigned`` scans exactly the lists of the kept
nodes and keeps the best ``beam[l]``; at the bottom it returns the best items of the kept
leaves.  The result equals ``beam_search`` with the torch scorer (tested): same nodes kept,
same items, same model scores.

The lists copy the node and item embeddings (one more float32 copy of the item memory).  After
a change that the index patches in place, ``patch`` rewrites only the lists of the nodes on the
changed items' old and new paths; a change that creates nodes rebuilds them
(``HierarchicalIndex.cached_state``).
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

from hirex.index.hierarchy import HierarchicalIndex


class DotLists:
    """faiss inverted lists over the levels of ``index`` (dot-product scorer, Q = 1)."""

    @classmethod
    def of(cls, index: HierarchicalIndex) -> DotLists:
        """The lists of ``index``, current with its items (built, patched or rebuilt)."""
        return index.cached_state(
            "dot_lists", lambda: cls(index), lambda lists, touched: lists.patch(index, touched)
        )

    def __init__(self, index: HierarchicalIndex) -> None:
        if index.item_emb.shape[1] != 1:
            raise ValueError("faiss lists serve the dot-product scorer (one item embedding)")
        levels = index.levels
        dim = index.item_emb.shape[2]
        self.top = _f32(levels[0].emb[:, 0]).copy()  # patched in place: never a view
        self.top_nonempty = levels[0].count > 0
        self.ivfs: list[faiss.IndexIVFFlat] = []
        self._quantizers: list[faiss.IndexFlatIP] = []
        self.list_sizes: list[np.ndarray] = []
        for level in range(1, len(levels)):
            parents, lv = levels[level - 1], levels[level]
            keep = np.flatnonzero(lv.count > 0)
            self._add(dim, _f32(parents.emb[:, 0]), _f32(lv.emb[keep, 0]), lv.parent[keep], keep)
        member_ptr, members = index.members
        leaf_of = np.repeat(np.arange(len(member_ptr) - 1), np.diff(member_ptr))
        emb = _f32(index.item_emb[torch.from_numpy(members).to(index.item_emb.device), 0])
        self._add(dim, _f32(levels[-1].emb[:, 0]), emb, leaf_of, members)
        self.leaf_of = np.full(index.n_items, -1, np.int64)
        """(N,) the leaf of every active item, -1 for removed ones."""
        self.leaf_of[members] = leaf_of

    def patch(self, index: HierarchicalIndex, touched: list[np.ndarray]) -> None:
        """Bring the lists up to date after changes that touched (per level) these nodes: a
        touched node's list (its non-empty children, or a leaf's items) is written anew, and a
        touched top node's embedding and emptiness are copied."""
        levels = index.levels
        top = touched[0]
        self.top[top] = _f32(levels[0].emb[top, 0])
        self.top_nonempty[top] = levels[0].count[top] > 0
        for level in range(len(levels) - 1):
            lv, below = levels[level], levels[level + 1]
            for node in touched[level].tolist():
                kids = np.arange(lv.child_ptr[node], lv.child_ptr[node + 1])
                kids = kids[below.count[kids] > 0]
                self._set_list(level, node, kids, _f32(below.emb[kids, 0]))
        member_ptr, members = index.members
        if len(self.leaf_of) < index.n_items:
            grown = np.full(index.n_items, -1, np.int64)
            grown[: len(self.leaf_of)] = self.leaf_of
            self.leaf_of = grown
        bottom = len(levels) - 1
        invlists = self.ivfs[bottom].invlists
        for leaf in touched[bottom].tolist():  # items that left a touched leaf: no leaf for now
            n = invlists.list_size(leaf)
            if n:
                self.leaf_of[faiss.rev_swig_ptr(invlists.get_ids(leaf), n).copy()] = -1
        device = index.item_emb.device
        for leaf in touched[bottom].tolist():
            ids = members[member_ptr[leaf] : member_ptr[leaf + 1]]
            emb = _f32(index.item_emb[torch.from_numpy(ids).to(device), 0])
            self._set_list(bottom, leaf, ids, emb)
            self.leaf_of[ids] = leaf

    def _set_list(self, which: int, list_no: int, ids: np.ndarray, x: np.ndarray) -> None:
        """Replace inverted list ``list_no`` of IVF ``which`` by rows x (n, D) labelled ids."""
        ivf = self.ivfs[which]
        invlists = ivf.invlists
        ivf.ntotal += len(ids) - invlists.list_size(list_no)
        invlists.resize(list_no, 0)
        if len(ids):
            invlists.add_entries(
                list_no,
                len(ids),
                faiss.swig_ptr(np.ascontiguousarray(ids, dtype=np.int64)),
                faiss.swig_ptr(np.ascontiguousarray(x).view(np.uint8)),
            )
        self.list_sizes[which][list_no] = len(ids)

    def _add(
        self, dim: int, heads: np.ndarray, x: np.ndarray, lists: np.ndarray, ids: np.ndarray
    ) -> None:
        """One IVF: list j holds rows of x (labelled ids) whose list is j; heads are the list
        owners' embeddings (the quantizer is never used to assign: lists are given)."""
        quantizer = faiss.IndexFlatIP(dim)
        quantizer.add(heads)
        ivf = faiss.IndexIVFFlat(quantizer, dim, len(heads), faiss.METRIC_INNER_PRODUCT)
        ivf.is_trained = True
        if len(x):
            ivf.add_core(
                len(x),
                faiss.swig_ptr(x),
                faiss.swig_ptr(np.ascontiguousarray(ids, dtype=np.int64)),
                faiss.swig_ptr(np.ascontiguousarray(lists, dtype=np.int64)),
            )
        self._quantizers.append(quantizer)  # the IVF points at it: keep it alive as long
        self.ivfs.append(ivf)
        self.list_sizes.append(np.bincount(lists, minlength=len(heads)).astype(np.int64))

    def search(
        self, u_nodes: list[torch.Tensor], u: torch.Tensor, widths: tuple[int, ...], k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """u_nodes: per level, (B, D) users as that level's scorer sees them
        (``ResidualCodebooks.map_user``); u: (B, D) the users as the model scores items.
        Returns item ids (B, k) (-1 padded), their inner products (B, k) (-inf padded), the
        kept leaves (B, W) (-1 padded), nodes scored (B,) and items scored (B,)."""
        b = u.shape[0]
        u_nodes = [_f32(x) for x in u_nodes]
        u = _f32(u)
        # torch, not numpy, for the product: it runs on torch's threads (numpy's BLAS keeps a
        # pool of its own that competes with them).
        s = torch.from_numpy(u_nodes[0]) @ torch.from_numpy(self.top).T
        s[:, torch.from_numpy(~self.top_nonempty)] = float("-inf")
        nodes = np.full(b, int(self.top_nonempty.sum()), np.int64)
        kept = _top(s, widths[0])
        for level, ivf in enumerate(self.ivfs[:-1]):
            scanned = _scanned(self.list_sizes[level], kept)
            nodes += scanned
            kept = _scan(ivf, u_nodes[level + 1], kept, widths[level + 1], scanned)[1]
        items = _scanned(self.list_sizes[-1], kept)
        scores, ids = _scan(self.ivfs[-1], u, kept, k, items)
        return ids, scores, kept, nodes, items


def _scanned(sizes: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """(B,) entries in the lists (B, W) (-1: none) of each row."""
    return np.where(lists >= 0, sizes[lists.clip(0)], 0).sum(1)


def _scan(
    ivf: faiss.IndexIVFFlat, u: np.ndarray, lists: np.ndarray, k: int, scanned: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Best (inner products, labels) per row over the given lists (B, W) (-1: none), at most k
    and no wider than the fullest row (``scanned``: entries per row); rows with fewer entries
    end in -inf / -1."""
    n, w = lists.shape
    k = max(1, min(k, int(scanned.max()) if n else 1))
    params = faiss.SearchParametersIVF()
    params.nprobe = w  # the width of ``lists``, per call: no shared state between searches
    dist = np.empty((n, k), np.float32)
    labels = np.empty((n, k), np.int64)
    lists = np.ascontiguousarray(lists, dtype=np.int64)
    coarse = np.zeros(lists.shape, np.float32)
    ivf.search_preassigned_c(
        n,
        faiss.swig_ptr(u),
        k,
        faiss.swig_ptr(lists),
        faiss.swig_ptr(coarse),
        faiss.swig_ptr(dist),
        faiss.swig_ptr(labels),
        False,
        params,
    )
    dist[labels < 0] = -np.inf
    return dist, labels


def _top(s: torch.Tensor, width: int) -> np.ndarray:
    """(B, n) scores -> (B, min(width, n)) column ids of the best, -1 where -inf."""
    t = torch.topk(s, min(width, s.shape[1]), dim=1)
    ids = t.indices.numpy()
    return np.where(np.isinf(t.values.numpy()), -1, ids)


def _f32(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().float().cpu().numpy())
