"""DMT's tower modules (REFERENCES.md section 3): what runs on a tower's host between its
embedding lookups and the cross-host exchange.

A tower module receives the pooled embeddings of its tower's features for the host's batch
(a TorchRec ``KeyedTensor``, ``(B, F_t * D)``) and returns ``(B, width)``, the part of the
sample that crosses hosts. :class:`IdentityTower` passes the embeddings through (SPTT alone,
output identical to the flat model); :class:`TowerInteraction` computes the tower's local
interaction (pairwise dots of its features) and compresses it with a linear projection to
``width`` values, ``width / (F_t * D)`` of the identity's bytes.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["IdentityTower", "TowerInteraction", "keyed_values", "pairwise_dots"]


def pairwise_dots(vecs: torch.Tensor) -> torch.Tensor:
    """vecs: (B, N, D) -> (B, N (N - 1) / 2) dot products of all pairs i < j."""
    n = vecs.shape[1]
    i, j = torch.triu_indices(n, n, offset=1, device=vecs.device)
    return torch.bmm(vecs, vecs.transpose(1, 2))[:, i, j]


def keyed_values(embeddings, keys: list[str] | None, dim: int) -> torch.Tensor:  # noqa: ANN001
    """A TorchRec KeyedTensor of pooled embeddings -> (B, len(keys) * dim) in the order of
    ``keys`` (sharded modules may return their keys in another order, e.g. table-wise by
    rank); a plain tensor is returned as it is."""
    if isinstance(embeddings, torch.Tensor) or keys is None:
        return embeddings if isinstance(embeddings, torch.Tensor) else embeddings.values()
    x = embeddings.values()
    got = list(embeddings.keys())
    if got == keys:
        return x
    perm = torch.tensor([got.index(k) for k in keys], device=x.device)
    return x.view(len(x), len(got), dim)[:, perm].reshape(len(x), -1)


class IdentityTower(nn.Module):
    """The tower's pooled embeddings unchanged: (B, F_t * D) -> (B, F_t * D)."""

    def __init__(self, n_features: int, dim: int, keys: list[str] | None = None) -> None:
        super().__init__()
        self.keys = keys
        self.n_features = n_features
        self.dim = dim
        self.width = n_features * dim

    def forward(self, embeddings) -> torch.Tensor:  # noqa: ANN001
        return keyed_values(embeddings, self.keys, self.dim)


class TowerInteraction(nn.Module):
    """Local interaction and compression of one tower (DMT's tower module).

    (B, F_t * D) pooled embeddings -> (B, width): a linear projection of the concatenation of
    the tower's embeddings and their F_t (F_t - 1) / 2 pairwise dots. ``width`` must be a
    multiple of ``dim``: the top model reads the output as ``width / dim`` vectors of ``dim``
    for its cross-tower interaction."""

    def __init__(
        self, n_features: int, dim: int, width: int, keys: list[str] | None = None
    ) -> None:
        super().__init__()
        self.keys = keys
        if n_features < 1:
            raise ValueError("a tower needs at least one feature")
        if width < dim or width % dim:
            raise ValueError(f"tower width {width} must be a positive multiple of dim {dim}")
        self.n_features = n_features
        self.dim = dim
        self.width = width
        n_pairs = n_features * (n_features - 1) // 2
        self.proj = nn.Linear(n_features * dim + n_pairs, width)

    def forward(self, embeddings) -> torch.Tensor:  # noqa: ANN001
        x = keyed_values(embeddings, self.keys, self.dim)
        vecs = x.view(len(x), self.n_features, self.dim)
        return self.proj(torch.cat([x, pairwise_dots(vecs)], dim=1))
