"""Training-free baselines, measured beside the trained model in the same run.

Each is a ranker: ``(users (U,), history, k) -> (U, k) ranked item ids`` with history masked.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds

from hirex.data.interactions import Interactions


def mask_and_topk(scores: np.ndarray, users: np.ndarray, history: Interactions, k: int):
    """scores: (U, N) float, modified in place: history items -inf, then top k ids."""
    rows, items = history.gather(users)
    scores[rows, items] = -np.inf
    t = torch.from_numpy(scores)
    top, ids = torch.topk(t, min(k, t.shape[1]), dim=1)
    ids = ids.numpy().astype(np.int64)
    ids[np.isinf(top.numpy())] = -1
    return ids


class Popularity:
    """Most-interacted items first."""

    def __init__(self, train: Interactions) -> None:
        self.counts = train.item_counts().astype(np.float32)

    def __call__(self, users: np.ndarray, history: Interactions, k: int) -> np.ndarray:
        scores = np.broadcast_to(self.counts, (len(users), len(self.counts))).copy()
        return mask_and_topk(scores, users, history, k)


class GFCF:
    """GF-CF: a linear item-item filter plus an ideal low-pass filter, no training.

    Shen et al., "How Powerful is Graph Convolution for Recommendation?" (CIKM 2021).
    scores = r~ R~^T R~ + alpha * r D_i^-1/2 V V^T D_i^1/2, with R~ = D_u^-1/2 R D_i^-1/2 and V
    the top singular vectors of R~.  Computed per block of users with sparse products, so no
    dense items x items matrix is built.
    """

    def __init__(self, train: Interactions, rank: int = 256, alpha: float = 0.3, seed: int = 0):
        r = train.to_csr().astype(np.float64)
        du = np.asarray(r.sum(1)).ravel()
        di = np.asarray(r.sum(0)).ravel()
        with np.errstate(divide="ignore"):
            du_is = np.where(du > 0, du**-0.5, 0.0)
            di_is = np.where(di > 0, di**-0.5, 0.0)
        self.norm = (sp.diags(du_is) @ r @ sp.diags(di_is)).tocsr().astype(np.float32)
        self.di_is = di_is.astype(np.float32)
        self.di_s = np.where(di > 0, di**0.5, 0.0).astype(np.float32)
        rank = min(rank, min(r.shape) - 1)
        _, _, vt = svds(self.norm.astype(np.float64), k=rank, random_state=seed)
        self.vt = vt.astype(np.float32)
        self.alpha = alpha
        self.train = train.to_csr()

    def __call__(self, users: np.ndarray, history: Interactions, k: int) -> np.ndarray:
        r = history.to_csr()[users].astype(np.float32)
        linear = np.asarray(((r @ self.norm.T) @ self.norm).todense())
        low = ((r.multiply(self.di_is[None, :]).tocsr() @ self.vt.T) @ self.vt) * self.di_s
        scores = np.ascontiguousarray(linear + self.alpha * low, dtype=np.float32)
        return mask_and_topk(scores, users, history, k)
