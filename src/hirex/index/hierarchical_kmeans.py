"""Hierarchical k-means paths: k-means on all items, then k-means inside every node.

Residual k-means (``ResidualCodebooks.fit_kmeans``) shares one codebook per level across all
parents, so a leaf is the intersection of a first-level cell with a residual cell: leaves are
uneven and are not the Voronoi cells of their own centroids.  Hierarchical k-means splits each
node's own items into up to ``sizes[l]`` children, so every node is a k-means cell of its
parent's items and its centroid routes a search well.  New items follow the same rule: they
descend to the nearest child centroid level by level (``HierarchicalIndex(assign="centroids")``).
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np
import torch

from hirex.index.codebooks import ResidualCodebooks

MIN_ITEMS_PER_CHILD = 4
"""A node of m items gets at most m // MIN_ITEMS_PER_CHILD children (and at least one)."""


@torch.no_grad()
def fit_hierarchical_kmeans(
    items: torch.Tensor, sizes: Sequence[int], seed: int = 0, niter: int = 20
) -> tuple[ResidualCodebooks, torch.Tensor]:
    """items: (N, Q, D) -> (codebooks, codes (N, L) int64).

    Level 1 is k-means over all items (the codebooks' first level holds its centroids, so the
    user maps and shapes work as for any index); a node at level l is then split by k-means on
    its own items into min(sizes[l], its items // MIN_ITEMS_PER_CHILD) children, code c being
    its c-th centroid.  Deeper codewords stay zero: these nodes are scored at their centroids.
    """
    sizes = [int(k) for k in sizes]
    n, q, dim = items.shape
    codebooks = ResidualCodebooks(sizes, q, dim)
    x = np.ascontiguousarray(items.reshape(n, -1).float().cpu().numpy())
    if n < sizes[0]:
        raise ValueError(
            f"{n} items cannot fill an index level of {sizes[0]} nodes; use fewer nodes per "
            "level (index.levels)"
        )
    codes = np.zeros((n, len(sizes)), np.int64)
    top = _kmeans(x, sizes[0], seed, niter)
    codes[:, 0] = _nearest(x, top)
    codebooks.codewords[0].data.copy_(torch.from_numpy(top))
    key = codes[:, 0].copy()
    for level in range(1, len(sizes)):
        order = np.argsort(key, kind="stable")
        bounds = np.flatnonzero(np.diff(key[order])) + 1
        for g, rows in enumerate(np.split(order, bounds)):
            k = min(sizes[level], max(1, len(rows) // MIN_ITEMS_PER_CHILD))
            if k > 1:
                centroids = _kmeans(x[rows], k, seed + 1000 * level + g, niter)
                codes[rows, level] = _nearest(x[rows], centroids)
        key = key * sizes[level] + codes[:, level]
    return codebooks, torch.from_numpy(codes)


def _kmeans(x: np.ndarray, k: int, seed: int, niter: int) -> np.ndarray:
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False)
    km.cp.min_points_per_centroid = 1
    km.cp.max_points_per_centroid = 1 << 30
    km.train(x)
    return km.centroids.astype(np.float32)


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids)
    return index.search(x, 1)[1][:, 0].astype(np.int64)
