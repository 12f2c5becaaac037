"""DMT's tower partitioner: group features into towers so that features that interact share a
tower, under a load-balance constraint (DMT, REFERENCES.md section 3).

Input: an (F, F) interaction affinity and per-feature costs (embedding bytes, lookups per
sample). The affinity of two features measures how much their interaction matters; with
:func:`interaction_affinity` it is the absolute correlation between the dot product of their
learned embeddings and the label over a sample of examples. Output: one tower per feature.

Algorithm: spectral embedding of the affinity graph (the leading eigenvectors of its
normalised Laplacian), then a balanced assignment, then local search. The assignment visits
features by decreasing cost and puts each one in the nearest tower centroid whose load, with
it, stays within the bound; the local search then moves or swaps features between towers
while that raises the affinity kept inside towers and keeps every tower within the bound. The
bound: each cost's load in every tower is at most ``(1 + imbalance)`` times the mean load per
tower (or the largest single feature's cost, when that is larger).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["TowerPlan", "interaction_affinity", "partition_towers"]


@dataclass(frozen=True)
class TowerPlan:
    """towers: (F,) tower of each feature; loads: (T, C) per tower and cost; bound: (C,) the
    maximum allowed load per tower; kept: share of the total off-diagonal affinity inside
    towers (1: every interaction stays within a tower)."""

    towers: np.ndarray
    loads: np.ndarray
    bound: np.ndarray
    kept: float

    def groups(self) -> list[list[int]]:
        return [np.flatnonzero(self.towers == t).tolist() for t in range(len(self.loads))]


def interaction_affinity(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(F, F) |Pearson correlation| between ``<e_i, e_j>`` and the label.

    embeddings: (N, F, D) each sample's embedding of each feature; labels: (N,). The
    diagonal is 0."""
    e = np.asarray(embeddings, np.float64)
    y = np.asarray(labels, np.float64)
    if e.ndim != 3 or len(e) != len(y) or len(y) < 3:
        raise ValueError(f"need embeddings (N, F, D) and labels (N,), N >= 3; got {e.shape}")
    if np.std(y) == 0:
        raise ValueError("labels are constant: no interaction can be measured")
    dots = np.einsum("nfd,ngd->nfg", e, e)  # (N, F, F)
    dots -= dots.mean(axis=0)
    yc = (y - y.mean()) / y.std()
    cov = np.einsum("nfg,n->fg", dots, yc) / len(y)
    sd = dots.std(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(sd > 0, cov / sd, 0.0)
    a = np.abs(corr)
    np.fill_diagonal(a, 0.0)
    return a


def partition_towers(
    affinity: np.ndarray,
    n_towers: int,
    costs: np.ndarray | Sequence[Sequence[float]] | None = None,
    imbalance: float = 0.1,
    seed: int = 0,
    max_rounds: int = 50,
) -> TowerPlan:
    """Towers for F features. affinity: (F, F) symmetric, >= 0; costs: (F, C) per-feature
    costs (e.g. embedding bytes and lookups per sample; default: one unit each)."""
    a = np.asarray(affinity, np.float64)
    f = len(a)
    if a.shape != (f, f) or f == 0:
        raise ValueError(f"affinity must be a square (F, F) matrix, got {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("affinity must be finite and >= 0")
    a = (a + a.T) / 2
    np.fill_diagonal(a, 0.0)
    if not 1 <= n_towers <= f:
        raise ValueError(f"n_towers = {n_towers}; need 1 <= n_towers <= {f} (the features)")
    c = np.ones((f, 1)) if costs is None else np.asarray(costs, np.float64).reshape(f, -1)
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError("costs must be finite and >= 0")
    if imbalance < 0:
        raise ValueError(f"imbalance = {imbalance}; must be >= 0")
    bound = np.maximum((1 + imbalance) * c.sum(0) / n_towers, c.max(0))

    towers = _balanced_assignment(_spectral(a, n_towers, seed), c, n_towers, bound)
    towers = _local_search(a, c, towers, n_towers, bound, max_rounds)
    loads = np.stack([c[towers == t].sum(0) for t in range(n_towers)])
    total = a.sum()
    kept = (
        float(sum(a[np.ix_(towers == t, towers == t)].sum() for t in range(n_towers)) / total)
        if total > 0
        else 1.0
    )
    return TowerPlan(towers, loads, bound, kept)


def _spectral(a: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(F, k) row-normalised leading eigenvectors of D^-1/2 A D^-1/2."""
    deg = a.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1e-300)), 0.0)
    m = inv[:, None] * a * inv[None, :]
    vals, vecs = np.linalg.eigh(m)
    x = vecs[:, np.argsort(-vals)[:k]]
    # a tiny seeded jitter breaks exact ties between isolated features
    x = x + 1e-9 * np.random.default_rng(seed).normal(size=x.shape)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _balanced_assignment(x: np.ndarray, c: np.ndarray, k: int, bound: np.ndarray) -> np.ndarray:
    f = len(x)
    # centroids: k features far apart in the spectral space (farthest-point seeding)
    centres = [int(np.argmax(np.linalg.norm(x - x.mean(0), axis=1)))]
    while len(centres) < k:
        d = np.min([np.linalg.norm(x - x[i], axis=1) for i in centres], axis=0)
        centres.append(int(np.argmax(d)))
    mu = x[centres]
    for _ in range(10):
        towers = np.full(f, -1)
        load = np.zeros((k, c.shape[1]))
        for i in np.argsort(-c.sum(1), kind="stable"):
            order = np.argsort(np.linalg.norm(mu - x[i], axis=1), kind="stable")
            fits = [t for t in order if np.all(load[t] + c[i] <= bound + 1e-9)]
            t = fits[0] if fits else int(np.argmin((load + c[i]).max(1)))
            towers[i] = t
            load[t] += c[i]
        new = np.stack([x[towers == t].mean(0) if np.any(towers == t) else mu[t] for t in range(k)])
        if np.allclose(new, mu):
            break
        mu = new
    return towers


def _local_search(
    a: np.ndarray, c: np.ndarray, towers: np.ndarray, k: int, bound: np.ndarray, rounds: int
) -> np.ndarray:
    towers = towers.copy()
    f = len(a)

    def loads() -> np.ndarray:
        return np.stack([c[towers == t].sum(0) for t in range(k)])

    for _ in range(rounds):
        improved = False
        load = loads()
        # gain[i, t]: affinity of feature i to tower t
        for i in range(f):
            to_tower = np.array([a[i, towers == t].sum() for t in range(k)])
            here = towers[i]
            for t in np.argsort(-to_tower, kind="stable"):
                if t == here or to_tower[t] <= to_tower[here] + 1e-12:
                    break
                if np.all(load[t] + c[i] <= bound + 1e-9) and np.sum(towers == here) > 1:
                    load[here] -= c[i]
                    load[t] += c[i]
                    towers[i] = t
                    improved = True
                    break
        # swaps keep loads nearly equal, so they also fix what single moves cannot
        for i in range(f):
            for j in range(i + 1, f):
                ti, tj = towers[i], towers[j]
                if ti == tj:
                    continue
                gain = (
                    a[i, towers == tj].sum()
                    - a[i, j]
                    - a[i, towers == ti].sum()
                    + a[j, towers == ti].sum()
                    - a[i, j]
                    - a[j, towers == tj].sum()
                )
                if gain <= 1e-12:
                    continue
                li = load[ti] - c[i] + c[j]
                lj = load[tj] - c[j] + c[i]
                if np.all(li <= bound + 1e-9) and np.all(lj <= bound + 1e-9):
                    towers[i], towers[j] = tj, ti
                    load[ti], load[tj] = li, lj
                    improved = True
        if not improved:
            break
    return towers
