"""Semantic IDs: every item's short sequence of discrete codes, in one format for every method.

An item's ID is ``codes[i] = (c_1, ..., c_L, d)``: L semantic codes (position t takes values in
``0..sizes[t]-1``) and a last disambiguation code ``d`` that numbers the items sharing the same
L codes (0 for the first), so that every ID names exactly one item (TIGER's fix for
collisions).  The generator (``generator.py``) reads and writes these tokens whatever method
made them: LMIndexer, RQ-VAE, residual or hierarchical k-means, random, or HILL index paths.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

METHODS = ("lmindexer", "rqvae", "rq_kmeans", "hierarchical_kmeans", "random", "hill_paths")


def catalogue_fingerprint(raw_item_ids: list | np.ndarray) -> str:
    """sha256 over the catalogue's original item ids in dense-id order: an ID file and the data
    it is used with must agree on it."""
    h = hashlib.sha256()
    for raw in list(raw_item_ids):
        h.update(str(raw).encode())
        h.update(b"\n")
    return h.hexdigest()


def prefix_keys(codes: np.ndarray, sizes: tuple[int, ...] | list[int], depth: int) -> np.ndarray:
    """(N,) int64 mixed-radix key of each row's first ``depth`` codes (0 for depth 0)."""
    key = np.zeros(len(codes), np.int64)
    for t in range(depth):
        key = key * int(sizes[t]) + codes[:, t]
    return key


def disambiguate(codes: np.ndarray, headroom: int = 4) -> tuple[np.ndarray, int]:
    """codes: (N, L) semantic codes -> ((N, L + 1) with the disambiguation code, its size).

    Items sharing their L codes get 0, 1, 2, ... in dense-id order.  The disambiguation
    vocabulary has room for ``headroom`` more items per ID than the largest collision group, so
    new items can join (``SemanticIds.add``) without a bigger vocabulary."""
    codes = np.asarray(codes, dtype=np.int64)
    n = len(codes)
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    sorted_groups = inverse[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - group_start
    biggest = int(rank.max()) + 1 if n else 1
    return np.concatenate([codes, rank[:, None]], axis=1), biggest + headroom


def code_usage(codes: np.ndarray, sizes: list[int] | tuple[int, ...]) -> list[dict[str, float]]:
    """Per semantic position: perplexity of the code distribution (``sizes[t]`` at best) and
    the number of dead codes (never used)."""
    out = []
    for t, k in enumerate(sizes):
        counts = np.bincount(codes[:, t], minlength=k).astype(np.float64)
        p = counts / max(counts.sum(), 1)
        nz = p[p > 0]
        out.append(
            {
                "size": int(k),
                "perplexity": round(float(np.exp(-(nz * np.log(nz)).sum())), 2),
                "dead_codes": int((counts == 0).sum()),
            }
        )
    return out


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose semantic codes (without the disambiguation code) are not unique."""
    if len(codes) == 0:
        return 0.0
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.reshape(-1)] > 1).mean())


@dataclass
class SemanticIds:
    """The IDs of a catalogue, as every method writes them.

    codes: (N, L + 1) int64, the last column the disambiguation code.
    sizes: (L + 1,) vocabulary size per position.
    active: (N,) bool; a removed item keeps its row (ids are dense) but leaves the trie.
    catalogue: ``catalogue_fingerprint`` of the item ids the IDs were fitted on.
    assigner: for new items from text (``semantic_ids.assign``), None when the method has none.
    """

    codes: np.ndarray
    sizes: tuple[int, ...]
    method: str
    catalogue: str
    active: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    assigner: Any = None

    def __post_init__(self) -> None:
        self.codes = np.ascontiguousarray(self.codes, dtype=np.int64)
        self.sizes = tuple(int(k) for k in self.sizes)
        if self.active is None:
            self.active = np.ones(len(self.codes), bool)
        self.check()

    @property
    def n_items(self) -> int:
        return len(self.codes)

    @property
    def length(self) -> int:
        """Tokens per ID, the disambiguation code included."""
        return len(self.sizes)

    def check(self) -> None:
        if self.codes.ndim != 2 or self.codes.shape[1] != len(self.sizes):
            raise ValueError(
                f"semantic IDs: codes of shape {self.codes.shape} for {len(self.sizes)} positions"
            )
        if len(self.codes) and (
            (self.codes < 0).any() or (self.codes >= np.array(self.sizes)).any()
        ):
            raise ValueError("semantic IDs: a code lies outside its position's vocabulary")
        if np.prod(np.array(self.sizes, np.float64)) >= 2**62:
            raise ValueError(f"semantic IDs: vocabulary sizes {self.sizes} overflow a 64-bit key")
        keys = prefix_keys(self.codes[self.active], self.sizes, self.length)
        if len(np.unique(keys)) != len(keys):
            raise ValueError("semantic IDs: two active items share one ID (disambiguation broken)")

    def keys(self) -> np.ndarray:
        """(N,) int64 full-ID key of every item."""
        return prefix_keys(self.codes, self.sizes, self.length)

    def stats(self) -> dict[str, Any]:
        semantic = self.codes[self.active, :-1]
        return {
            "method": self.method,
            "items": int(self.active.sum()),
            "levels": self.length - 1,
            "codebook_sizes": list(self.sizes[:-1]),
            "disambiguation_size": self.sizes[-1],
            "collision_rate": round(collision_rate(semantic), 4),
            "max_disambiguation": int(self.codes[self.active, -1].max()) if len(semantic) else 0,
            "usage": code_usage(semantic, self.sizes[:-1]),
            "distinct_prefixes": [
                int(len(np.unique(prefix_keys(semantic, self.sizes, t))))
                for t in range(1, self.length)
            ],
        }

    def add(self, semantic: np.ndarray) -> np.ndarray:
        """Append items with semantic codes (M, L); each takes the lowest free disambiguation
        code under its codes.  Returns their dense ids.  Refused, with nothing changed, when an
        ID has no free disambiguation code left."""
        semantic = np.asarray(semantic, dtype=np.int64).reshape(-1, self.length - 1)
        if len(semantic) and ((semantic < 0).any() or (semantic >= self.sizes[:-1]).any()):
            raise ValueError("new items' codes lie outside the codebooks")
        taken: dict[int, set[int]] = {}
        base = prefix_keys(self.codes[self.active], self.sizes, self.length - 1)
        for k, d in zip(base.tolist(), self.codes[self.active, -1].tolist(), strict=True):
            taken.setdefault(k, set()).add(d)
        new_keys = prefix_keys(semantic, self.sizes, self.length - 1)
        rows = []
        for k, row in zip(new_keys.tolist(), semantic, strict=True):
            used = taken.setdefault(k, set())
            d = next((d for d in range(self.sizes[-1]) if d not in used), None)
            if d is None:
                raise ValueError(
                    f"the semantic ID {row.tolist()} already holds {self.sizes[-1]} items, the "
                    "most its disambiguation code can tell apart; refit the IDs with the new "
                    "items (hirex sid fit) for a larger disambiguation vocabulary"
                )
            used.add(d)
            rows.append([*row.tolist(), d])
        ids = np.arange(self.n_items, self.n_items + len(rows), dtype=np.int64)
        if rows:
            self.codes = np.concatenate([self.codes, np.asarray(rows, np.int64)])
            self.active = np.concatenate([self.active, np.ones(len(rows), bool)])
        return ids

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.n_items):
            raise ValueError(f"item ids to remove must lie in 0..{self.n_items - 1}")
        self.active[ids] = False


def finish_ids(
    semantic: np.ndarray,
    sizes: list[int] | tuple[int, ...],
    method: str,
    catalogue: str,
    info: dict[str, Any] | None = None,
    assigner: Any = None,
) -> SemanticIds:
    """Semantic codes (N, L) of a method -> SemanticIds with disambiguation codes and stats."""
    codes, extra = disambiguate(semantic)
    ids = SemanticIds(codes, (*sizes, extra), method, catalogue, info=dict(info or {}))
    ids.assigner = assigner
    ids.info.setdefault("stats", ids.stats())
    return ids
