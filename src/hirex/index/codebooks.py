"""Residual codebooks: L levels of K_l codewords over the item memory, and per-level scorers.

An item's embedding ``v: (Q, D)`` is flattened to ``F = Q * D`` numbers.  Level 1 quantizes ``v``,
level l quantizes what the levels above left over (the residual).  The sum of an item's first l
codewords is its pseudo-item at level l, which the model scores like an item: that is how the
index reuses the model's scorer at every level.

Two ways to assign: ``soft`` (cross-attention of the residual over the level's codewords with a
temperature, differentiable: used while learning the index jointly with the model) and ``encode``
(nearest codeword, greedy over levels: used to build and serve the index).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import torch
from torch import nn

from hirex.atomic_files import atomic_write_bytes
from hirex.models.retrieval_model import read_safetensors, safetensors_bytes

CODEBOOKS_FORMAT = "hirex-codebooks"
CODEBOOKS_VERSION = 1

# Prefix keys (c_1 * K_2 + c_2) * K_3 + ... must fit in int64.
MAX_PATHS = 2**62


@dataclass
class SoftAssignment:
    pseudo: list[torch.Tensor]
    """Per level l: (N, F) pseudo-items q_l = cbar_1 + ... + cbar_l."""
    probs: list[torch.Tensor]
    """Per level l: (N, K_l) attention weights of each item over the level's codewords."""


class ResidualCodebooks(nn.Module):
    """Codewords ``(K_l, F)`` for each level and a per-level map of the user embedding.

    The per-level map ``(D, D)`` (initialised to the identity) makes the scorer of level l the
    model's scorer applied to ``user @ W_l``: coarse levels learn their own view of the user while
    sharing the item-level scorer's weights.
    """

    def __init__(self, sizes: Sequence[int], q: int, dim: int) -> None:
        super().__init__()
        sizes = [int(k) for k in sizes]
        if not 1 <= len(sizes) <= 8 or min(sizes) < 2:
            raise ValueError(f"index levels must be 1 to 8 sizes of at least 2 nodes, got {sizes}")
        if np.prod(np.array(sizes, dtype=np.float64)) >= MAX_PATHS:
            raise ValueError(f"index levels {sizes}: too many paths (product must be < 2**62)")
        self.sizes, self.q, self.dim = sizes, q, dim
        self.codewords = nn.ParameterList(nn.Parameter(torch.zeros(k, q * dim)) for k in sizes)
        self.user_maps = nn.ParameterList(nn.Parameter(torch.eye(dim)) for _ in sizes)

    @property
    def levels(self) -> int:
        return len(self.sizes)

    def map_user(self, user: torch.Tensor, level: int) -> torch.Tensor:
        """user: (B, P, D) -> the user as level ``level``'s scorer sees it, (B, P, D)."""
        return user @ self.user_maps[level].to(user.dtype)

    def soft(self, items: torch.Tensor, alpha: float) -> SoftAssignment:
        """items: (N, Q, D) -> soft residual quantization with attention sharpness ``alpha``:
        a = softmax(-alpha * d / mean(d)), d_k = ||r_l - c_k||, cbar_l = a @ C_l,
        r_{l+1} = r_l - cbar_l.  Distances are divided by their (detached) row mean so that
        alpha does not depend on the scale of the embeddings."""
        r = items.reshape(items.shape[0], -1).float()
        q = torch.zeros_like(r)
        pseudo, probs = [], []
        for codes in self.codewords:
            dist = torch.cdist(r, codes)
            dist = dist / dist.mean(1, keepdim=True).detach().clamp(min=1e-12)
            a = torch.softmax(-alpha * dist, dim=1)
            cbar = a @ codes
            q = q + cbar
            r = r - cbar
            pseudo.append(q)
            probs.append(a)
        return SoftAssignment(pseudo, probs)

    @torch.no_grad()
    def encode(self, items: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """items: (N, Q, D) -> (N, L) int64 codes, the nearest codeword level by level."""
        out = []
        for start in range(0, items.shape[0], chunk):
            r = items[start : start + chunk].reshape(-1, self.q * self.dim).float()
            codes = []
            for cw in self.codewords:
                c = torch.cdist(r, cw.to(r.device)).argmin(dim=1)
                codes.append(c)
                r = r - cw.to(r.device)[c]
            out.append(torch.stack(codes, dim=1))
        if not out:
            return torch.zeros(0, self.levels, dtype=torch.int64)
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: (N, l) the first l codes of N paths -> (N, Q, D) pseudo-items."""
        q = torch.zeros(codes.shape[0], self.q * self.dim, device=codes.device)
        for level in range(codes.shape[1]):
            q += self.codewords[level].detach().to(codes.device)[codes[:, level]]
        return q.view(-1, self.q, self.dim)

    @torch.no_grad()
    def fit_kmeans(
        self, items: torch.Tensor, seed: int = 0, niter: int = 20, max_points: int = 262144
    ) -> None:
        """Set the codewords by residual k-means (faiss) on items (N, Q, D), level by level.

        Each level's k-means runs on at most ``max_points`` residuals (a seeded sample) and
        starts from the current codewords when they are not all zero (the E-step of EM).
        """
        x = items.reshape(items.shape[0], -1).float().cpu().numpy()
        n = x.shape[0]
        if n < max(self.sizes):
            raise ValueError(
                f"{n} items cannot fill an index level of {max(self.sizes)} nodes; use fewer "
                "nodes per level (index.levels)"
            )
        rng = np.random.default_rng(seed)
        sample = rng.choice(n, max_points, replace=False) if n > max_points else np.arange(n)
        residual = np.ascontiguousarray(x, dtype=np.float32)
        for level, cw in enumerate(self.codewords):
            init = cw.detach().cpu().numpy()
            km = faiss.Kmeans(
                residual.shape[1], self.sizes[level], niter=niter, seed=seed + level, verbose=False
            )
            km.cp.min_points_per_centroid = 1
            km.cp.max_points_per_centroid = 1 << 30
            train = np.ascontiguousarray(residual[sample])
            if np.any(init):
                km.train(train, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
            else:
                km.train(train)
            centroids = km.centroids.astype(np.float32)
            _, assign = km.index.search(residual, 1)
            residual = residual - centroids[assign[:, 0]]
            cw.data.copy_(torch.from_numpy(centroids).to(cw.device))


def save_codebooks(codebooks: ResidualCodebooks, path: str | os.PathLike) -> None:
    """Codewords and user maps in one safetensors file, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in codebooks.state_dict().items()}
    meta = {
        "format": CODEBOOKS_FORMAT,
        "version": str(CODEBOOKS_VERSION),
        "shape": json.dumps({"sizes": codebooks.sizes, "q": codebooks.q, "dim": codebooks.dim}),
    }
    atomic_write_bytes(path, safetensors_bytes(tensors, meta))


def load_codebooks(path: str | os.PathLike) -> ResidualCodebooks:
    tensors, meta = read_safetensors(path, CODEBOOKS_FORMAT, CODEBOOKS_VERSION)
    try:
        shape = json.loads(meta["shape"])
        codebooks = ResidualCodebooks(shape["sizes"], shape["q"], shape["dim"])
        codebooks.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: codebooks file is damaged ({err})") from err
    return codebooks
