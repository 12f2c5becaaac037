"""The hierarchical index: item paths through residual codebooks, stored as flat arrays.

A node at level l is a path prefix (c_1, ..., c_l).  Its embedding, the pseudo-item the model
scores, is either the sum of those codewords (``node_embedding="codewords"``) or the mean of the
active items under the node (``"centroids"``, codewords for an empty node).  Residual codewords
are fitted to residuals pooled over every parent, so below the first level their sum can sit far
from the items it stands for; the mean of a node's items routes a search better.

Per level the nodes are kept sorted by their prefix key, so the children of a node are one
contiguous range (``child_ptr``) and the items of a bottom node are one contiguous range of
``members`` (``member_ptr``): search gathers ranges, it never loops over nodes in Python.

Items come and go without retraining: ``add_items`` assigns a new embedding to a path with the
learned codebooks (or, for hierarchical k-means paths, down the nearest node centroids),
``remove_items`` deactivates items.  A node stays in the structure when its last
item leaves (it is skipped by search while empty) and can take items again later.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hirex.index.codebooks import ResidualCodebooks


@dataclass(frozen=True)
class Level:
    """One level's nodes, sorted by prefix key; n = number of nodes."""

    keys: np.ndarray
    """(n,) int64 prefix keys."""
    emb: torch.Tensor
    """(n, Q, D) node embeddings (pseudo-items)."""
    count: np.ndarray
    """(n,) active items under each node."""
    parent: np.ndarray
    """(n,) index of the parent node in the level above (-1 on the top level)."""
    child_ptr: np.ndarray
    """(n + 1,) CSR pointers into the next level's nodes (empty on the bottom level)."""
    representative: np.ndarray
    """(n,) the active item nearest to the node's embedding, -1 for an empty node."""


class HierarchicalIndex:
    """Residual codebooks + per-item paths + the item memory the model scores at the bottom.

    item_emb: (N, Q, D) item embeddings; codes: (N, L) paths; active: (N,) bool.
    node_embedding: "codewords" (sum of the path's codewords) or "centroids" (mean of the node's
    active items), see the module docstring.
    assign: how ``add_items`` puts an item on a path: "codebooks" (the nearest codeword level by
    level, ``ResidualCodebooks.encode``) or "centroids" (down to the nearest non-empty child
    centroid level by level; for paths from ``fit_hierarchical_kmeans``, whose deeper codewords
    mean nothing; needs node_embedding "centroids" and the items' codes).
    assign_dims: with assign "centroids", descend by the first ``assign_dims`` of each of the Q
    embeddings only (the learned part of a model with a spectral branch, for paths that k-means
    found on those dimensions, ``index.kmeans_on = "learned"``); None: all of them.
    """

    NODE_EMBEDDINGS = ("codewords", "centroids")
    ASSIGNS = ("codebooks", "centroids")

    def __init__(
        self,
        codebooks: ResidualCodebooks,
        item_emb: torch.Tensor,
        codes: torch.Tensor | None = None,
        active: np.ndarray | None = None,
        extra_nodes: list[np.ndarray] | None = None,
        node_embedding: str = "centroids",
        assign: str = "codebooks",
        assign_dims: int | None = None,
    ) -> None:
        if node_embedding not in self.NODE_EMBEDDINGS:
            raise ValueError(
                f"node_embedding must be one of {self.NODE_EMBEDDINGS}, got {node_embedding!r}"
            )
        if assign not in self.ASSIGNS:
            raise ValueError(f"assign must be one of {self.ASSIGNS}, got {assign!r}")
        if assign == "centroids" and (node_embedding != "centroids" or codes is None):
            raise ValueError(
                "assign='centroids' descends node centroids: it needs node_embedding='centroids' "
                "and the items' codes (e.g. from fit_hierarchical_kmeans)"
            )
        if assign_dims is not None and (
            assign != "centroids" or not 0 < assign_dims <= item_emb.shape[-1]
        ):
            raise ValueError(
                f"assign_dims={assign_dims} needs assign='centroids' and 1 to "
                f"{item_emb.shape[-1]} dimensions"
            )
        self.node_embedding = node_embedding
        self.assign = assign
        self.assign_dims = assign_dims
        self.codebooks = codebooks.eval().requires_grad_(False)
        self.item_emb = item_emb.detach()
        if codes is None:
            codes = codebooks.encode(self.item_emb)
        n = self.item_emb.shape[0]
        if codes.shape != (n, codebooks.levels):
            raise ValueError(f"codes must be ({n}, {codebooks.levels}), got {tuple(codes.shape)}")
        self.codes = codes.cpu().to(torch.int64)
        self.active = np.ones(n, dtype=bool) if active is None else np.asarray(active, dtype=bool)
        # Nodes that exist whether or not they hold items (kept when their last item leaves).
        self._node_keys = [np.zeros(0, np.int64) for _ in codebooks.sizes]
        for level in range(codebooks.levels):
            have = self.item_keys(level)
            if extra_nodes is not None:
                have = np.concatenate([have, extra_nodes[level]])
            self._node_keys[level] = np.unique(have)
        self._levels: list[Level] | None = None
        self._members: tuple[np.ndarray, np.ndarray] | None = None
        self._cache: dict = {}
        # name -> (version, compute, (N, ...) rows): per-item values kept current row by row.
        self._row_cache: dict = {}
        # name -> (version, value): values derived from the current items (cached_state).
        self._state_cache: dict = {}
        self._version = 0
        # version -> per level, the nodes a patched change touched (absent: arrays rebuilt).
        self._patched: dict[int, list[np.ndarray]] = {}
        # Spare capacity behind item_emb / codes / active once items are appended (_grow).
        self._storage: tuple[torch.Tensor, torch.Tensor, np.ndarray] | None = None

    # ---- shape -----------------------------------------------------------------------------
    @property
    def sizes(self) -> list[int]:
        return self.codebooks.sizes

    @property
    def n_items(self) -> int:
        """Item slots, active or not (dense ids run from 0 to n_items - 1)."""
        return self.item_emb.shape[0]

    @property
    def n_active(self) -> int:
        return int(self.active.sum())

    @property
    def node_keys(self) -> list[np.ndarray]:
        """Per level, the sorted prefix keys of every node, empty ones included."""
        return self._node_keys

    @property
    def levels(self) -> list[Level]:
        if self._levels is None:
            self._rebuild()
        assert self._levels is not None
        return self._levels

    @property
    def members(self) -> tuple[np.ndarray, np.ndarray]:
        """(member_ptr (n_bottom + 1,), members (n_active,)): the active items of each bottom
        node, as CSR."""
        if self._members is None:
            self._rebuild()
        assert self._members is not None
        return self._members

    # ---- online maintenance ----------------------------------------------------------------
    def add_items(self, emb: torch.Tensor, ids: np.ndarray | None = None) -> np.ndarray:
        """Put items on paths by hard assignment with the learned codebooks, no retraining.

        emb: (M, Q, D).  ids: dense ids to (re)use, or None to append new ids after the last one.
        An id that exists already gets the new embedding and path (an update).  Returns the ids.
        """
        emb = emb.detach().to(self.item_emb.device, self.item_emb.dtype)
        if emb.ndim != 3 or emb.shape[1:] != self.item_emb.shape[1:]:
            raise ValueError(
                f"item embeddings must be (M, {self.item_emb.shape[1]}, {self.item_emb.shape[2]})"
                f", got {tuple(emb.shape)}"
            )
        m = emb.shape[0]
        if ids is None:
            ids = np.arange(self.n_items, self.n_items + m, dtype=np.int64)
        ids = np.asarray(ids, dtype=np.int64)
        if ids.shape != (m,) or (m and ids.min() < 0):
            raise ValueError(f"ids must be {m} non-negative integers, one per embedding")
        if len(np.unique(ids)) != m:
            raise ValueError("ids must not repeat within one add_items call")
        new_codes = self.paths_for(emb)  # before any change: a refusal here changes nothing
        self._changed()
        grow = int(ids.max()) + 1 - self.n_items if m else 0
        if grow > 0:
            self._grow(self.n_items + grow)
        old_codes, was_active = self.codes[torch.from_numpy(ids)].numpy(), self.active[ids].copy()
        t_ids = torch.from_numpy(ids).to(self.item_emb.device)
        self.item_emb[t_ids] = emb
        with torch.no_grad():
            for name, (version, compute, rows) in list(self._row_cache.items()):
                if rows is None:  # nothing per item for this function (e.g. the dot scorer)
                    continue
                if grow > 0:
                    rows = torch.cat([rows, rows.new_zeros(grow, *rows.shape[1:])])
                rows[t_ids] = compute(emb)
                self._row_cache[name] = (version, compute, rows)
        self.codes[torch.from_numpy(ids)] = new_codes
        self.active[ids] = True
        new_nodes = False
        for level in range(len(self.sizes)):
            keys = self.item_keys(level, ids)
            new_nodes |= not np.isin(keys, self._node_keys[level]).all()
            self._node_keys[level] = np.union1d(self._node_keys[level], keys)
        if new_nodes:
            self._invalidate()  # node arrays are re-laid out: rebuilt on the next search
        else:
            self._update_derived(ids, old_codes, was_active)
        return ids

    def with_node_embedding(self, node_embedding: str) -> HierarchicalIndex:
        """The same items, paths, activity and nodes with nodes scored at ``node_embedding``: a
        new index over the same item memory (e.g. to compare centroids with codewords)."""
        return HierarchicalIndex(
            self.codebooks,
            self.item_emb,
            self.codes,
            self.active.copy(),
            self.node_keys,
            node_embedding=node_embedding,
            assign=self.assign,
            assign_dims=self.assign_dims,
        )

    @torch.no_grad()
    def paths_for(self, emb: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
        """emb: (M, Q, D) -> (M, L) int64 codes, the paths ``add_items`` gives these embeddings
        (see ``assign``)."""
        if self.assign == "codebooks":
            return self.codebooks.encode(emb).cpu()
        levels = self.levels
        dims = self.assign_dims or emb.shape[-1]
        flat = emb[..., :dims].reshape(emb.shape[0], -1)
        flat = flat.to(self.item_emb.device, self.item_emb.dtype)
        # Each level's node embeddings over the descent's dimensions, once for every chunk.
        node_embs = [lv.emb[..., :dims].reshape(len(lv.keys), -1) for lv in levels]
        codes = np.zeros((emb.shape[0], len(levels)), np.int64)
        for c0 in range(0, emb.shape[0], chunk):
            x = flat[c0 : c0 + chunk]
            node = None
            for level, lv in enumerate(levels):
                nodes_emb = node_embs[level]
                if level == 0:  # every top node: one product, no gather
                    cand = np.broadcast_to(np.arange(len(lv.keys)), (len(x), len(lv.keys)))
                else:
                    cand = _children(node, levels[level - 1].child_ptr)
                ok = (cand >= 0) & (lv.count[cand.clip(0)] > 0)
                if not ok.any(1).all():
                    raise ValueError(
                        "no non-empty node to put an item under: the index has no active "
                        "items left; rebuild it"
                    )
                if level == 0:
                    d = (nodes_emb * nodes_emb).sum(-1)[None] - 2 * x @ nodes_emb.T
                else:
                    e = nodes_emb[torch.from_numpy(cand.clip(0)).to(x.device)]
                    d = (e * e).sum(-1) - 2 * torch.einsum("mcd,md->mc", e, x)
                d = d.masked_fill(~torch.from_numpy(ok).to(x.device), float("inf"))
                pick = d.argmin(1).cpu().numpy()
                node = cand[np.arange(len(x)), pick]
                codes[c0 : c0 + len(x), level] = lv.keys[node] % self.sizes[level]
        return torch.from_numpy(codes)

    def _grow(self, n: int) -> None:
        """Make ``n`` item slots (the new ones empty and inactive).  The storage grows by a
        quarter at a time, so adding items one by one costs amortised O(1), not a copy of the
        whole item memory per item."""
        old = self.n_items
        if self._storage is None or self._storage[0].shape[0] < n:
            cap = max(n, old + old // 4 + 64)
            emb = self.item_emb.new_zeros(cap, *self.item_emb.shape[1:])
            codes = self.codes.new_zeros(cap, self.codes.shape[1])
            active = np.zeros(cap, dtype=bool)
            emb[:old], codes[:old], active[:old] = self.item_emb, self.codes, self.active
            self._storage = (emb, codes, active)
        emb, codes, active = self._storage
        self.item_emb, self.codes, self.active = emb[:n], codes[:n], active[:n]

    def remove_items(self, ids: np.ndarray) -> None:
        """Deactivate items: search never returns them again.  Unknown ids are an error."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if len(ids) and (ids.min() < 0 or ids.max() >= self.n_items):
            raise ValueError(f"item ids must lie in [0, {self.n_items}) to be removed")
        self._changed()
        was_active = self.active[ids].copy()
        self.active[ids] = False
        self._update_derived(ids, self.codes[torch.from_numpy(ids)].numpy(), was_active)

    # Above this many changed items at once, a full rebuild is cheaper than patching.
    INCREMENTAL_MAX = 256

    def _update_derived(
        self, ids: np.ndarray, old_codes: np.ndarray, was_active: np.ndarray
    ) -> None:
        """Patch counts, member lists and representatives after items ``ids`` changed path or
        activity (old paths ``old_codes``, activity before ``was_active``), with the node set
        unchanged: O(changed items + the members of the nodes on their paths), not O(N).
        Gives exactly what a full rebuild gives."""
        if self._levels is None or self._members is None:
            return  # nothing derived yet: built in full on the next search
        if len(ids) > self.INCREMENTAL_MAX:
            self._invalidate()
            return
        levels, depth = self._levels, len(self.sizes)
        now_active = self.active[ids]
        new_codes = self.codes[torch.from_numpy(ids)].numpy()
        touched: list[np.ndarray] = []
        old_node = new_node = None
        for level, lv in enumerate(levels):
            old_node = np.searchsorted(lv.keys, _prefix(old_codes[was_active], self.sizes, level))
            new_node = np.searchsorted(lv.keys, _prefix(new_codes[now_active], self.sizes, level))
            np.subtract.at(lv.count, old_node, 1)
            np.add.at(lv.count, new_node, 1)
            touched.append(np.union1d(old_node, new_node))
        # Member lists: take the changed items out of their old leaves, put the active ones into
        # their new leaves at their sorted place (a leaf's members are in id order).
        member_ptr, members = self._members
        n_leaves = len(levels[-1].keys)
        out = np.flatnonzero(np.isin(members, ids[was_active]))
        leaf_of_out = np.searchsorted(member_ptr, out, side="right") - 1
        members = np.delete(members, out)
        member_ptr = member_ptr.copy()
        member_ptr[1:] -= np.cumsum(np.bincount(leaf_of_out, minlength=n_leaves))
        for item, leaf in sorted(zip(ids[now_active].tolist(), new_node.tolist(), strict=True)):
            lo, hi = member_ptr[leaf], member_ptr[leaf + 1]
            at = lo + np.searchsorted(members[lo:hi], item)
            members = np.insert(members, at, item)
            member_ptr[leaf + 1 :] += 1
        self._members = (member_ptr, members)
        # Representatives (and centroids) of every node on an old or new path, from its
        # subtree's members.
        flat = self.item_emb.reshape(self.n_items, -1)
        centroids = self.node_embedding == "centroids"
        for level, nodes in enumerate(touched):
            lv = levels[level]
            for node in nodes.tolist():
                lo, hi = node, node + 1
                for below in range(level, depth - 1):
                    lo, hi = levels[below].child_ptr[lo], levels[below].child_ptr[hi]
                sub = members[member_ptr[lo] : member_ptr[hi]]
                if centroids:
                    lv.emb[node] = self._node_centroid(flat, sub, level, lv.keys[node])
                lv.representative[node] = _nearest(flat, sub, lv.emb[node].reshape(-1))
        if centroids:
            self._cache = {}  # per-node values (e.g. the scorer's node side) saw the old means
        if self._state_cache:  # kept only while some cached state may need the patch
            self._patched[self._version] = touched

    def _node_centroid(
        self, flat: torch.Tensor, sub: np.ndarray, level: int, key: int
    ) -> torch.Tensor:
        """(Q, D) embedding of one node in "centroids" mode: the mean of its active items
        ``sub`` (summed in float64, as in the full rebuild, so that both give the same float32
        mean and hence the same representative), codewords when empty."""
        if len(sub) == 0:
            codes = torch.from_numpy(self._keys_to_codes(np.array([key]), level))
            return self.codebooks.decode(codes)[0].to(flat.device)
        rows = flat.index_select(0, torch.from_numpy(sub).to(flat.device)).double()
        mean = (rows.sum(0) / len(sub)).to(flat.dtype)
        return mean.reshape(self.item_emb.shape[1:])

    def _invalidate(self) -> None:
        self._levels = None
        self._members = None
        self._cache = {}

    # ---- derived arrays --------------------------------------------------------------------
    def item_keys(self, level: int, ids: np.ndarray | None = None) -> np.ndarray:
        """(n,) prefix keys at ``level`` (0-based) of the given (default: active) items."""
        codes = self.codes.numpy()
        rows = codes[np.flatnonzero(self.active)] if ids is None else codes[ids]
        return _prefix(rows, self.sizes, level)

    def _keys_to_codes(self, keys: np.ndarray, level: int) -> np.ndarray:
        codes = np.zeros((len(keys), level + 1), np.int64)
        rest = keys.copy()
        for j in range(level, -1, -1):
            codes[:, j] = rest % self.sizes[j]
            rest //= self.sizes[j]
        return codes

    def to(self, device: torch.device | str) -> HierarchicalIndex:
        """Move the item memory and codebooks to ``device`` (in place); returns self."""
        device = torch.device(device)
        if self.item_emb.device != device:
            self.item_emb = self.item_emb.to(device)
            self._storage = None
            self.codebooks = self.codebooks.to(device)
            self._invalidate()
            self._row_cache = {}
            self._changed()
        return self

    @torch.no_grad()
    def cached(self, key: tuple, compute):  # noqa: ANN001, ANN201
        """A value derived from the nodes (e.g. a scorer's per-node precomputation), computed
        once and dropped whenever the node arrays are rebuilt (not when items only move between
        existing nodes); per-item values belong in ``cached_rows``."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    @torch.no_grad()
    def cached_rows(self, name: str, version: tuple, compute):  # noqa: ANN001, ANN201
        """compute(item_emb) for a function that works row by row ((M, Q, D) -> (M, ...)), e.g.
        a scorer's per-item gate: computed once, then only the rows of added or updated items
        are recomputed.  A new ``version`` (other weights) recomputes every row."""
        held = self._row_cache.get(name)
        if held is None or held[0] != version:
            held = (version, compute, compute(self.item_emb))
            self._row_cache[name] = held
        return held[2]

    def cached_state(self, name: str, compute, patch=None):  # noqa: ANN001, ANN201
        """A value derived from the current items, paths and nodes (e.g. faiss lists over the
        members): computed once and brought up to date on first use after a change.

        When every change since it was computed was patched in place (the node set did not
        change), ``patch(value, touched)`` updates it, ``touched`` being per level the nodes whose
        items, counts or embeddings changed; otherwise (or without ``patch``) it is recomputed."""
        held = self._state_cache.get(name)
        if held is not None and held[0] != self._version and patch is not None:
            steps = [self._patched.get(v) for v in range(held[0] + 1, self._version + 1)]
            if all(t is not None for t in steps):
                touched = [
                    np.unique(np.concatenate([t[lv] for t in steps]))
                    for lv in range(len(self.sizes))
                ]
                patch(held[1], touched)
                held = (self._version, held[1])
                self._state_cache[name] = held
        if held is None or held[0] != self._version:
            self._state_cache.pop(name, None)  # never hold the stale and the new one together
            held = (self._version, compute())
            self._state_cache[name] = held
        oldest = min(v for v, _ in self._state_cache.values())
        self._patched = {v: t for v, t in self._patched.items() if v > oldest}
        return held[1]

    def _changed(self) -> None:
        self._version += 1

    def _rebuild(self) -> None:
        act = np.flatnonzero(self.active)
        flat = self.item_emb.reshape(self.n_items, -1)
        levels: list[Level] = []
        for level in range(len(self.sizes)):
            keys = self._node_keys[level]
            node_of = np.searchsorted(keys, self.item_keys(level))
            count = np.bincount(node_of, minlength=len(keys)).astype(np.int64)
            emb = self.codebooks.decode(torch.from_numpy(self._keys_to_codes(keys, level)))
            emb = emb.to(self.item_emb.device)
            if self.node_embedding == "centroids" and len(act):
                emb = _centroids(flat, act, node_of, count, emb)
            if level == 0:
                parent = np.full(len(keys), -1, np.int64)
            else:
                parent = np.searchsorted(levels[-1].keys, keys // self.sizes[level])
            # The representative: the active item of the subtree nearest to the node embedding.
            rep = np.full(len(keys), -1, np.int64)
            if len(act):
                node_flat = emb.reshape(len(keys), -1)
                dist = torch.cat(
                    [
                        _sq_dist(flat, act[c : c + _CHUNK], node_flat, node_of[c : c + _CHUNK])
                        for c in range(0, len(act), _CHUNK)
                    ]
                )
                order = np.lexsort((dist.cpu().numpy(), node_of))
                first = np.ones(len(order), dtype=bool)
                first[1:] = node_of[order][1:] != node_of[order][:-1]
                rep[node_of[order][first]] = act[order][first]
            levels.append(Level(keys, emb, count, parent, np.zeros(0, np.int64), rep))
        for level in range(len(levels) - 1):
            child_ptr = np.searchsorted(
                levels[level + 1].parent, np.arange(len(levels[level].keys) + 1)
            )
            levels[level] = _with_children(levels[level], child_ptr)
        bottom = levels[-1]
        leaf = np.searchsorted(bottom.keys, self.item_keys(len(levels) - 1))
        order = np.argsort(leaf, kind="stable")
        members = act[order]
        member_ptr = np.searchsorted(leaf[order], np.arange(len(bottom.keys) + 1))
        self._levels = levels
        self._members = (member_ptr.astype(np.int64), members.astype(np.int64))

    # ---- checks ----------------------------------------------------------------------------
    def check(self) -> None:
        """Raise ValueError if the derived arrays disagree with the item paths."""
        levels = self.levels
        member_ptr, members = self.members
        _require(len(members) == self.n_active, "members must list every active item once")
        _require(
            np.array_equal(np.sort(members), np.flatnonzero(self.active)),
            "members must be exactly the active items",
        )
        for level, lv in enumerate(levels):
            _require(bool(np.all(np.diff(lv.keys) > 0)), "node keys must be sorted and unique")
            _require(int(lv.count.sum()) == self.n_active, f"level {level + 1} loses items")
            if level > 0:
                above = levels[level - 1]
                _require(
                    np.array_equal(above.keys[lv.parent], lv.keys // self.sizes[level]),
                    f"level {level + 1} nodes point at the wrong parents",
                )
                sums = np.bincount(lv.parent, weights=lv.count, minlength=len(above.keys))
                _require(
                    np.array_equal(sums.astype(np.int64), above.count),
                    f"level {level} counts differ from the sum of their children",
                )
                _require(
                    np.array_equal(
                        np.diff(above.child_ptr), np.bincount(lv.parent, minlength=len(above.keys))
                    ),
                    f"level {level} child pointers are wrong",
                )
            _require(
                bool(np.all((lv.representative == -1) == (lv.count == 0))),
                f"level {level + 1}: every non-empty node needs a representative item",
            )
        _require(np.array_equal(np.diff(member_ptr), levels[-1].count), "member pointers are wrong")

    def stats(self) -> dict:
        """Level sizes, node-size balance and empty nodes."""
        out = {"n_items": self.n_items, "n_active": self.n_active, "levels": []}
        for level, lv in enumerate(self.levels):
            c = lv.count
            nonempty = c[c > 0]
            out["levels"].append(
                {
                    "level": level + 1,
                    "codebook_size": self.sizes[level],
                    "nodes": int(len(c)),
                    "empty_nodes": int((c == 0).sum()),
                    "items_per_node_mean": float(nonempty.mean()) if len(nonempty) else 0.0,
                    "items_per_node_max": int(c.max()) if len(c) else 0,
                    "items_per_node_min_nonempty": int(nonempty.min()) if len(nonempty) else 0,
                    # Coefficient of variation of the node sizes: 0 is perfectly balanced.
                    "size_cv": float(nonempty.std() / nonempty.mean()) if len(nonempty) else 0.0,
                }
            )
        return out


def _prefix(codes: np.ndarray, sizes: list[int], level: int) -> np.ndarray:
    """(n, L) paths -> (n,) prefix keys at ``level`` (0-based)."""
    key = np.zeros(len(codes), np.int64)
    for j in range(level + 1):
        key = key * sizes[j] + codes[:, j]
    return key


def _nearest(flat: torch.Tensor, items: np.ndarray, centre: torch.Tensor) -> int:
    """The item of ``items`` whose flattened embedding is nearest ``centre`` (lowest id among
    equals, as in the full rebuild), -1 when there is none."""
    if len(items) == 0:
        return -1
    order = np.sort(items)
    dist = _sq_dist(flat, order, centre[None], np.zeros(len(order), np.int64))
    return int(order[int(torch.argmin(dist))])


_CHUNK = 65536  # items per block of distance work: bounded temporaries at any corpus size


def _sq_dist(
    flat: torch.Tensor, items: np.ndarray, centres: torch.Tensor, centre_of: np.ndarray
) -> torch.Tensor:
    """(n,) squared distances from flat[items] to centres[centre_of] (one formula everywhere, so
    the incremental and the full rebuild pick the same representatives)."""
    dev = flat.device
    x = flat[torch.from_numpy(items).to(dev)]
    return ((x - centres[torch.from_numpy(centre_of).to(dev)]) ** 2).sum(1)


def _children(parents: np.ndarray, child_ptr: np.ndarray) -> np.ndarray:
    """(M,) node ids -> (M, C) their children's ids, -1 padded."""
    lo, hi = child_ptr[parents], child_ptr[parents + 1]
    width = max(int((hi - lo).max()), 1) if len(parents) else 1
    cand = lo[:, None] + np.arange(width)[None, :]
    return np.where(cand < hi[:, None], cand, -1)


def _centroids(
    flat: torch.Tensor,
    act: np.ndarray,
    node_of: np.ndarray,
    count: np.ndarray,
    fallback: torch.Tensor,
) -> torch.Tensor:
    """(n, Q, D) mean of the active items ``act`` of each node (``node_of``: their nodes),
    ``fallback`` rows for empty nodes.  Summed in float64 (see ``_node_centroid``)."""
    dev = flat.device
    sums = torch.zeros(len(count), flat.shape[1], dtype=torch.float64, device=dev)
    for c in range(0, len(act), _CHUNK):
        rows = flat.index_select(0, torch.from_numpy(act[c : c + _CHUNK]).to(dev)).double()
        sums.index_add_(0, torch.from_numpy(node_of[c : c + _CHUNK]).to(dev), rows)
    n = torch.from_numpy(count).to(dev, torch.float64)
    mean = (sums / n.clamp(min=1)[:, None]).to(flat.dtype)
    out = torch.where((n > 0)[:, None], mean, fallback.reshape(mean.shape))
    return out.reshape(fallback.shape)


def _with_children(level: Level, child_ptr: np.ndarray) -> Level:
    return Level(
        level.keys,
        level.emb,
        level.count,
        level.parent,
        child_ptr.astype(np.int64),
        level.representative,
    )


def _require(ok: bool, problem: str) -> None:
    if not ok:
        raise ValueError(f"inconsistent index: {problem}")
