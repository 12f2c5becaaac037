"""Validation probe behind index.kmeans_on (issue 15): which partition and node score keep a
dot + spectral-branch model's exhaustive top-20 through a flat IVF of C k-means cells, on 3,000
validation users (the share of the exhaustive top-20 found, against the share of items scored).

    python benchmarks/index_partition_probe.py runs/bench-gowalla-spectral-branch 2048 > \
        benchmarks/results/index_partition_probe.txt

Schemes: k-means on all dimensions, on MIPS-augmented vectors (Bachrach et al. 2014), on the
learned dimensions only, in 4 bins of branch norm (norm-ranging), and centroid scores with a
ball bound or a max-norm branch.  A prototype in numpy, kept as the record of the choice.
"""

import sys
import time

import faiss
import numpy as np
import torch

from hirex.index.exhaustive import item_embeddings
from hirex.index.hierarchical_kmeans import _kmeans, _nearest
from hirex.models.user_batch import user_blocks
from hirex.runs import load_run

torch.set_num_threads(1)
faiss.omp_set_num_threads(1)
run = load_run(sys.argv[1], device="cpu")
model, ds = run.model, run.dataset
d = model.cfg.dim
rng = np.random.default_rng(0)
valid = ds.valid
vu = valid.active_users()
users = rng.choice(vu, 3000, replace=False)
with torch.no_grad():
    U = torch.cat(
        [model.encode_users(b)[:, 0] for b, _ in user_blocks(users, ds.train, 500)]
    ).numpy()
    X = item_embeddings(model)[:, 0].numpy()
N = X.shape[0]
S = U @ X.T
tr = ds.train.to_csr()[users]
S[tr.nonzero()] = -np.inf
ex = np.argpartition(-S, 20, axis=1)[:, :20]
ex_set = [set(r) for r in ex]
print(
    "learned norm",
    np.linalg.norm(X[:, :d], axis=1).mean(),
    "branch norm pct",
    np.percentile(np.linalg.norm(X[:, d:], axis=1), [5, 50, 95, 99]),
)
print("user branch norm pct", np.percentile(np.linalg.norm(U[:, d:], axis=1), [5, 50, 95]))


def kmeans(x, k, seed=0):
    """(N,) cell of each row: the index's own k-means (faiss, 20 iterations)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return _nearest(x, _kmeans(x, k, seed, 20))


def centroids(xs, assign, c):
    """(C, F) mean of each cell's rows of xs."""
    cen = np.zeros((c, xs.shape[1]), np.float32)
    np.add.at(cen, assign, xs)
    return cen / np.maximum(np.bincount(assign, minlength=c), 1)[:, None]


def evaluate(name, assign, node_scores_fn, probes=(8, 16, 32, 64, 128, 256)):
    C = assign.max() + 1
    members = [np.flatnonzero(assign == c) for c in range(C)]
    NS = node_scores_fn(assign, C)
    order = np.argsort(-NS, axis=1)
    for p in probes:
        kept = order[:, :p]
        ov, scored = 0.0, 0
        for r in range(len(users)):
            cand = np.concatenate([members[c] for c in kept[r]])
            scored += len(cand)
            s = S[r, cand]
            top = cand[np.argsort(-s)[:20]]
            ov += len(ex_set[r].intersection(top[np.isfinite(S[r, top])])) / 20
        print(
            f"{name:40s} probe {p:4d} scored {scored / len(users) / N:.4f} "
            f"overlap {ov / len(users):.4f}",
            flush=True,
        )


def centroid_scores(Xs, Us):
    def f(assign, C):
        return Us @ centroids(Xs, assign, C).T

    return f


def ball_scores(lam):
    def f(assign, C):
        cen = centroids(X, assign, C)
        rb = np.zeros(C)
        np.maximum.at(rb, assign, np.linalg.norm(X[:, d:] - cen[assign, d:], axis=1))
        return U @ cen.T + lam * np.linalg.norm(U[:, d:], axis=1)[:, None] * rb[None]

    return f


def maxnorm_scores(assign, C):
    # node branch = centroid direction scaled to the members' largest branch norm
    cen = centroids(X, assign, C)
    mx = np.zeros(C)
    np.maximum.at(mx, assign, np.linalg.norm(X[:, d:], axis=1))
    cb = cen[:, d:] / np.maximum(np.linalg.norm(cen[:, d:], axis=1), 1e-12)[:, None] * mx[:, None]
    return U[:, :d] @ cen[:, :d].T + U[:, d:] @ cb.T


C = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
schemes = (
    sys.argv[3].split(",")
    if len(sys.argv) > 3
    else ["base", "mips", "learned", "learned_full", "norm4", "ball", "maxnorm"]
)
t0 = time.time()
if "base" in schemes:
    a = kmeans(X, C)
    evaluate("kmeans full / centroid", a, centroid_scores(X, U))
if "mips" in schemes:
    nrm = np.linalg.norm(X, axis=1)
    M = nrm.max()
    Xa = np.hstack([X, np.sqrt(np.maximum(M**2 - nrm**2, 0))[:, None]])
    a = kmeans(Xa, C)
    evaluate("kmeans mips-augmented / centroid", a, centroid_scores(X, U))
if "learned" in schemes or "learned_full" in schemes:
    a = kmeans(X[:, :d], C)
    if "learned" in schemes:
        evaluate("kmeans learned / learned centroid", a, centroid_scores(X[:, :d], U[:, :d]))
    if "learned_full" in schemes:
        evaluate("kmeans learned / full centroid", a, centroid_scores(X, U))
if "norm4" in schemes:
    bn = np.linalg.norm(X[:, d:], axis=1)
    bins = np.digitize(bn, np.quantile(bn, [0.25, 0.5, 0.75]))
    a = np.zeros(N, np.int64)
    for b in range(4):
        rows = np.flatnonzero(bins == b)
        a[rows] = kmeans(X[rows], C // 4) + b * (C // 4)
    evaluate("norm-ranging 4 bins / centroid", a, centroid_scores(X, U))
if "ball" in schemes:
    a = kmeans(X, C)
    for lam in (0.25, 0.5, 1.0):
        evaluate(f"kmeans full / ball lam {lam}", a, ball_scores(lam))
if "maxnorm" in schemes:
    a = kmeans(X, C)
    evaluate("kmeans full / maxnorm branch", a, maxnorm_scores)
print("seconds", time.time() - t0)
