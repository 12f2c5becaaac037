"""The two-stage baselines: item text embeddings -> discrete codes.

Every quantizer maps (N, D) embeddings to (N, L) codes with ``encode`` (also for items added
after fitting), and stores its state as named tensors (``tensors`` / ``from_tensors``) in the ID
file.  LMIndexer, which learns the codes end to end, is in ``lmindexer.py``.

- ``rq_kmeans``: residual k-means (faiss), one codebook per level shared by all parents (the
  index's ``ResidualCodebooks``).
- ``hierarchical_kmeans``: k-means inside every node (the index's
  ``fit_hierarchical_kmeans``); new items descend to the nearest child centroid.
- ``rqvae``: TIGER's RQ-VAE (Rajput et al., NeurIPS 2023): an MLP encoder, residual vector
  quantization with k-means-initialised codebooks and a straight-through estimator, an MLP
  decoder that reconstructs the embedding.
- ``random``: codes drawn uniformly; the floor any learned ID must clear.
- ``hill_paths``: the paths of hirex's hierarchical index over a trained retrieval model's item
  embeddings (collaborative, not textual, IDs), see ``hill_path_codes``.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from hirex.index.codebooks import ResidualCodebooks
from hirex.index.hierarchical_kmeans import fit_hierarchical_kmeans
from hirex.semantic_ids.ids import prefix_keys

log = logging.getLogger(__name__)


class RQKmeans:
    """Residual k-means codes (faiss), ``sizes[l]`` codewords at level l."""

    name = "rq_kmeans"

    def __init__(self, codebooks: ResidualCodebooks) -> None:
        self.codebooks = codebooks

    @classmethod
    def fit(cls, emb: np.ndarray, sizes: list[int], seed: int = 0) -> RQKmeans:
        x = torch.from_numpy(np.ascontiguousarray(emb, np.float32))[:, None, :]
        codebooks = ResidualCodebooks(sizes, 1, x.shape[2])
        codebooks.fit_kmeans(x, seed=seed, niter=25)
        return cls(codebooks)

    def encode(self, emb: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(emb, np.float32))[:, None, :]
        return self.codebooks.encode(x).numpy()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"rq.{i}": cw.detach().clone() for i, cw in enumerate(self.codebooks.codewords)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], sizes: list[int]) -> RQKmeans:
        dim = tensors["rq.0"].shape[1]
        codebooks = ResidualCodebooks(sizes, 1, dim)
        for i, cw in enumerate(codebooks.codewords):
            cw.data.copy_(tensors[f"rq.{i}"])
        return cls(codebooks)


class HierarchicalKmeans:
    """k-means inside every node; node centroids kept per level for new items."""

    name = "hierarchical_kmeans"

    def __init__(self, sizes: list[int], keys: list[np.ndarray], centroids: list[np.ndarray]):
        self.sizes, self.keys, self.centroids = sizes, keys, centroids

    @classmethod
    def fit(cls, emb: np.ndarray, sizes: list[int], seed: int = 0) -> HierarchicalKmeans:
        x = torch.from_numpy(np.ascontiguousarray(emb, np.float32))[:, None, :]
        _, codes = fit_hierarchical_kmeans(x, sizes, seed=seed, niter=25)
        codes = codes.numpy()
        keys, centroids = [], []
        for level in range(len(sizes)):
            k = prefix_keys(codes, sizes, level + 1)
            uniq, inverse = np.unique(k, return_inverse=True)
            sums = np.zeros((len(uniq), emb.shape[1]), np.float64)
            np.add.at(sums, inverse, emb)
            counts = np.bincount(inverse, minlength=len(uniq))[:, None]
            keys.append(uniq)
            centroids.append((sums / counts).astype(np.float32))
        out = cls(list(sizes), keys, centroids)
        out.fitted_codes = codes
        return out

    def encode(self, emb: np.ndarray) -> np.ndarray:
        emb = np.asarray(emb, np.float32)
        codes = np.zeros((len(emb), len(self.sizes)), np.int64)
        parent = np.zeros(len(emb), np.int64)
        for level, size in enumerate(self.sizes):
            keys, cents = self.keys[level], self.centroids[level]
            for i in range(len(emb)):
                # children of this item's parent: keys in [parent * size, (parent + 1) * size)
                lo, hi = np.searchsorted(keys, [parent[i] * size, (parent[i] + 1) * size])
                if hi == lo:  # the parent has one unsplit child (code 0)
                    codes[i, level] = 0
                else:
                    d = ((cents[lo:hi] - emb[i]) ** 2).sum(1)
                    codes[i, level] = keys[lo + int(d.argmin())] - parent[i] * size
            parent = parent * size + codes[:, level]
        return codes

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for level, (k, c) in enumerate(zip(self.keys, self.centroids, strict=True)):
            out[f"hkm.keys.{level}"] = torch.from_numpy(k.astype(np.int64))
            out[f"hkm.centroids.{level}"] = torch.from_numpy(c)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], sizes: list[int]):  # noqa: ANN206
        keys = [tensors[f"hkm.keys.{lv}"].numpy() for lv in range(len(sizes))]
        cents = [tensors[f"hkm.centroids.{lv}"].numpy() for lv in range(len(sizes))]
        return cls(list(sizes), keys, cents)


class RandomIds:
    """Uniform random codes, seeded; new items draw from a generator seeded by their count."""

    name = "random"

    def __init__(self, sizes: list[int], seed: int = 0) -> None:
        self.sizes, self.seed, self.drawn = list(sizes), seed, 0

    def encode(self, emb: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.drawn])
        self.drawn += len(emb)
        return np.stack([rng.integers(0, k, len(emb)) for k in self.sizes], axis=1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"random.state": torch.tensor([self.seed, self.drawn], dtype=torch.int64)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], sizes: list[int]) -> RandomIds:
        out = cls(sizes, int(tensors["random.state"][0]))
        out.drawn = int(tensors["random.state"][1])
        return out


class RQVAE(nn.Module):
    """TIGER's RQ-VAE over item text embeddings: x (N, D) -> z (N, d) -> L residual codes."""

    name = "rqvae"

    def __init__(self, in_dim: int, sizes: list[int], latent: int = 32, hidden: int = 256):
        super().__init__()
        self.sizes = list(sizes)
        self.encoder = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden // 2), nn.SiLU(),
            nn.Linear(hidden // 2, latent),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden // 2), nn.SiLU(), nn.Linear(hidden // 2, hidden), nn.SiLU(),
            nn.Linear(hidden, in_dim),
        )  # fmt: skip
        self.codebooks = nn.ParameterList(nn.Parameter(torch.zeros(k, latent)) for k in sizes)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z: (N, d) -> (quantized with straight-through (N, d), codes (N, L), vq loss)."""
        residual, total, codes = z, torch.zeros_like(z), []
        loss = z.new_zeros(())
        for cb in self.codebooks:
            c = torch.cdist(residual, cb).argmin(1)
            q = cb[c]
            # codebook loss pulls codewords to residuals; commitment (0.25) the other way
            loss = loss + F.mse_loss(q, residual.detach()) + 0.25 * F.mse_loss(residual, q.detach())
            total = total + q
            residual = residual - q.detach()
            codes.append(c)
        quantized = z + (total - z).detach()
        return quantized, torch.stack(codes, 1), loss

    @torch.no_grad()
    def encode(self, emb: np.ndarray) -> np.ndarray:
        self.eval()
        z = self.encoder(torch.from_numpy(np.asarray(emb, np.float32)))
        return self.quantize(z)[1].numpy()

    @torch.no_grad()
    def _kmeans_init(self, x: torch.Tensor, seed: int) -> None:
        import faiss

        residual = self.encoder(x).numpy()
        for level, cb in enumerate(self.codebooks):
            km = faiss.Kmeans(residual.shape[1], cb.shape[0], niter=20, seed=seed + level)
            km.cp.min_points_per_centroid = 1
            km.train(np.ascontiguousarray(residual, np.float32))
            cb.data.copy_(torch.from_numpy(km.centroids))
            _, a = km.index.search(np.ascontiguousarray(residual, np.float32), 1)
            residual = residual - km.centroids[a[:, 0]]

    @torch.no_grad()
    def _reset_dead(self, x: torch.Tensor, gen: torch.Generator) -> int:
        """Move codewords no item uses onto residuals of random items (against collapse)."""
        residual, dead = self.encoder(x), 0
        for cb in self.codebooks:
            c = torch.cdist(residual, cb).argmin(1)
            unused = torch.ones(cb.shape[0], dtype=torch.bool)
            unused[c] = False
            n = int(unused.sum())
            if n:
                pick = torch.randint(0, len(x), (n,), generator=gen)
                cb.data[unused] = residual[pick] + 1e-3 * torch.randn(n, cb.shape[1], generator=gen)
                dead += n
            residual = residual - cb[torch.cdist(residual, cb).argmin(1)]
        return dead

    @classmethod
    def fit(
        cls,
        emb: np.ndarray,
        sizes: list[int],
        *,
        epochs: int = 200,
        batch_size: int = 1024,
        lr: float = 1e-3,
        seed: int = 0,
        progress: bool = False,
    ) -> RQVAE:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        x = torch.from_numpy(np.ascontiguousarray(emb, np.float32))
        model = cls(x.shape[1], sizes)
        model._kmeans_init(x, seed)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        bar = tqdm(range(epochs), desc="rqvae", disable=not progress)
        for epoch in bar:
            model.train()
            order = torch.randperm(len(x), generator=gen)
            total = 0.0
            for start in range(0, len(x), batch_size):
                xb = x[order[start : start + batch_size]]
                z = model.encoder(xb)
                quantized, _, vq = model.quantize(z)
                loss = F.mse_loss(model.decoder(quantized), xb) + vq
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(xb)
            if epoch < epochs - 10 and epoch % 10 == 9:
                model._reset_dead(x, gen)
            bar.set_postfix(loss=f"{total / len(x):.4f}")
        if not math.isfinite(total):
            raise ValueError("RQ-VAE training diverged (loss is not finite); lower sid.lr")
        return model.eval()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"rqvae.{k}": v.detach().clone() for k, v in self.state_dict().items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], sizes: list[int]) -> RQVAE:
        state = {k[len("rqvae.") :]: v for k, v in tensors.items() if k.startswith("rqvae.")}
        model = cls(state["encoder.0.weight"].shape[1], sizes, state["codebooks.0"].shape[1])
        model.load_state_dict(state)
        return model.eval()


def hill_path_codes(index) -> np.ndarray:  # noqa: ANN001
    """(N, L) codes: each item's path in a hirex HierarchicalIndex (collaborative IDs)."""
    return index.codes.cpu().numpy().astype(np.int64)
