"""A DLRM-style click-through model over many sparse features (Naumov et al., 2019): one
embedding table per categorical feature, a bottom MLP over the dense features, pairwise dot
interactions of all feature vectors, and a top MLP over them. The flat baseline that DMT's
towers are measured against, and the source of the learned embeddings that the tower
partitioner reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["DLRM", "DlrmTrainConfig", "ctr_metrics", "train_dlrm"]


def mlp(sizes: Sequence[int], last_act: bool) -> nn.Sequential:
    """Linear layers of the given sizes with ReLU between them (and after the last one when
    ``last_act``)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_act:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    """table_sizes: rows per categorical feature; n_dense: dense features; dim: embedding
    width (the bottom MLP ends at it); top: hidden sizes of the top MLP."""

    def __init__(
        self,
        table_sizes: Sequence[int],
        n_dense: int,
        dim: int = 16,
        bottom: Sequence[int] = (32,),
        top: Sequence[int] = (64, 32),
    ) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n, dim) for n in table_sizes)
        for t in self.tables:
            nn.init.normal_(t.weight, std=1 / np.sqrt(dim))
        self.bottom = mlp([n_dense, *bottom, dim], last_act=True) if n_dense else None
        n_vec = len(table_sizes) + (1 if n_dense else 0)
        self._pairs = torch.triu_indices(n_vec, n_vec, offset=1)
        self.top = mlp([dim + self._pairs.shape[1], *top, 1], last_act=False)

    def embed(self, sparse: torch.Tensor) -> torch.Tensor:
        """sparse: (B, F) int64 ids -> (B, F, dim) feature embeddings."""
        return torch.stack([t(sparse[:, f]) for f, t in enumerate(self.tables)], dim=1)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """dense: (B, n_dense) float, sparse: (B, F) int64 -> (B,) logits."""
        vecs = self.embed(sparse)
        d = (
            self.bottom(dense)
            if self.bottom is not None
            else vecs.new_zeros(len(vecs), vecs.shape[-1])
        )
        if self.bottom is not None:
            vecs = torch.cat([d.unsqueeze(1), vecs], dim=1)
        inter = torch.bmm(vecs, vecs.transpose(1, 2))[:, self._pairs[0], self._pairs[1]]
        return self.top(torch.cat([d, inter], dim=1)).squeeze(-1)


@dataclass(frozen=True)
class DlrmTrainConfig:
    dim: int = 16
    epochs: int = 3
    batch_size: int = 256
    lr: float = 0.01
    seed: int = 0


def train_dlrm(data, cfg: DlrmTrainConfig = DlrmTrainConfig()) -> DLRM:  # noqa: ANN001, B008
    """Train on a ``CtrData`` with Adam and binary cross-entropy (CPU, deterministic)."""
    torch.manual_seed(cfg.seed)
    model = DLRM(data.table_sizes, data.dense.shape[1], dim=cfg.dim)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    dense = torch.from_numpy(data.dense)
    sparse = torch.from_numpy(data.sparse)
    labels = torch.from_numpy(data.labels)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.epochs):
        for rows in torch.randperm(len(labels), generator=gen).split(cfg.batch_size):
            loss = nn.functional.binary_cross_entropy_with_logits(
                model(dense[rows], sparse[rows]), labels[rows]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


@torch.no_grad()
def ctr_metrics(model: DLRM, data) -> dict[str, float]:  # noqa: ANN001
    """AUC and normalised entropy (log loss over the entropy of the base rate; < 1 beats
    predicting the average click rate) on ``data``."""
    from sklearn.metrics import roc_auc_score

    model.eval()
    logits = model(torch.from_numpy(data.dense), torch.from_numpy(data.sparse))
    y = torch.from_numpy(data.labels)
    ll = nn.functional.binary_cross_entropy_with_logits(logits, y).item()
    p = float(y.mean())
    if p in (0.0, 1.0):
        raise ValueError("held-out labels are all one class: AUC and NE are undefined")
    base = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    model.train()
    return {"auc": float(roc_auc_score(data.labels, logits.numpy())), "ne": ll / base}
