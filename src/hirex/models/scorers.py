"""Scorers: map user and item embeddings to a (users x items) score matrix.

Every scorer takes ``user: (B, P, D)`` and ``item: (N, Q, D)`` and returns ``(B, N)`` scores, so
training, exhaustive retrieval and index search share one code path.  ``pairs`` scores M given
(user, item) pairs, ``user: (M, P, D)`` and ``item: (M, Q, D)`` -> ``(M,)``: what beam search
needs, where every user keeps different nodes.  The per-item part of a scorer that does not
depend on the user (``item_side``, e.g. the item half of a gate) can be computed once per item
and passed in, so that search does not recompute it for every pair.
"""

from __future__ import annotations

import torch
from torch import nn


class DotScorer(nn.Module):
    """Inner product of one user and one item embedding (P = Q = 1)."""

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return user[:, 0] @ item[:, 0].T

    def user_side(self, user: torch.Tensor) -> None:
        return None

    def item_side(self, item: torch.Tensor) -> None:
        return None

    def pairs(
        self,
        user: torch.Tensor,
        item: torch.Tensor,
        user_side: torch.Tensor | None = None,
        item_side: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return (user[:, 0] * item[:, 0]).sum(-1)

    def extra_repr(self) -> str:
        return "dot"


class MixtureOfLogits(nn.Module):
    """Mixture of logits over P user x Q item embeddings with a learned gate.

    Zhai et al., "Revisiting Neural Retrieval on Accelerators" (KDD 2023). The gate sees the user,
    the item and the component logits, so the score is not a dot product of any fixed embedding
    pair: this is the expressive scorer that the hierarchical index is built to serve.
    """

    def __init__(self, p: int, q: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.p, self.q = p, q
        self.user_gate = nn.Sequential(
            nn.Linear(p * dim, hidden), nn.SiLU(), nn.Linear(hidden, p * q)
        )
        self.item_gate = nn.Sequential(
            nn.Linear(q * dim, hidden), nn.SiLU(), nn.Linear(hidden, p * q)
        )
        self.logit_gate = nn.Linear(p * q, p * q)
        self.fused = True
        """Mix with ``_FusedMixture`` (a hand-written backward, about half the memory traffic);
        False: with ``mixture_reference`` under autograd (the reference it is tested against)."""

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        b, n, pq = user.shape[0], item.shape[0], self.p * self.q
        # Component logits laid out (P*Q, B, N): every later step is a GEMM or an elementwise op
        # over contiguous (B, N) planes (a softmax over a last dim of size 4 is slow on CPU).
        logits = torch.matmul(user.transpose(0, 1)[:, None], item.transpose(0, 1)[None].mT)
        logits = logits.reshape(pq, b, n)
        side_u = self.user_gate(user.reshape(b, -1)).T  # (P*Q, B)
        side_i = self.item_gate(item.reshape(n, -1)).T  # (P*Q, N)
        w, bias = self.logit_gate.weight, self.logit_gate.bias
        if self.fused:
            return _FusedMixture.apply(logits, side_u, side_i, w.to(logits.dtype), bias)
        return mixture_reference(logits, side_u, side_i, w, bias)

    def user_side(self, user: torch.Tensor) -> torch.Tensor:
        """user: (B, P, D) -> (B, P*Q), the user's share of the gate."""
        return self.user_gate(user.reshape(user.shape[0], -1))

    def item_side(self, item: torch.Tensor) -> torch.Tensor:
        """item: (N, Q, D) -> (N, P*Q), the item's share of the gate."""
        return self.item_gate(item.reshape(item.shape[0], -1))

    def pairs(
        self,
        user: torch.Tensor,
        item: torch.Tensor,
        user_side: torch.Tensor | None = None,
        item_side: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """user: (M, P, D), item: (M, Q, D), sides: (M, P*Q) or None (computed here) -> (M,)."""
        if user_side is None:
            user_side = self.user_side(user)
        if item_side is None:
            item_side = self.item_side(item)
        # Component logits laid out (P*Q, M), in forward's order, so the gate is one GEMM and the
        # softmax runs across P*Q contiguous planes (as in forward).
        logits = torch.einsum("mpd,mqd->pqm", user, item).reshape(self.p * self.q, -1)
        side = (user_side + item_side).T
        gate = torch.addmm(side + self.logit_gate.bias[:, None], self.logit_gate.weight, logits)
        return (torch.softmax(gate, dim=0) * logits).sum(0)

    def extra_repr(self) -> str:
        return f"mixture of {self.p}x{self.q} logits"


def mixture_reference(
    logits: torch.Tensor,
    side_u: torch.Tensor,
    side_i: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
) -> torch.Tensor:
    """The mixture of logits in plain autograd ops: logits (K, B, N) component logits,
    side_u (K, B) and side_i (K, N) the user's and the item's gate terms, weight (K, K) and
    bias (K,) the logit gate -> (B, N) = sum_k softmax_k(gate) * logits_k, where gate =
    weight @ logits + side_u + side_i + bias."""
    k, b, n = logits.shape
    gate = (weight @ logits.reshape(k, b * n)).view(k, b, n)
    gate = gate + side_u[:, :, None] + side_i[:, None, :] + bias[:, None, None]
    return (torch.softmax(gate, dim=0) * logits).sum(0)


class _FusedMixture(torch.autograd.Function):
    """``mixture_reference`` with its backward written out, in place where it can be:
    autograd keeps and re-reads about twice as many (K, B, N) planes (the gate before and
    after each add, the softmax, the product). With p the softmax and y the output:
    d/dlogits = p * gy + weight^T @ dgate, dgate = p * (logits - y) * gy."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        logits: torch.Tensor,
        side_u: torch.Tensor,
        side_i: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        k, b, n = logits.shape
        p = (weight @ logits.reshape(k, b * n)).view(k, b, n)
        p += (side_u + bias[:, None].to(side_u.dtype)).to(p.dtype)[:, :, None]
        p += side_i.to(p.dtype)[:, None, :]
        # Softmax over the K planes, in place.
        p -= p.amax(0)
        p.exp_()
        p /= p.sum(0)
        y = p[0] * logits[0]
        for j in range(1, k):
            y.addcmul_(p[j], logits[j])
        ctx.save_for_backward(logits, p, y, weight)
        ctx.dtypes = (side_u.dtype, side_i.dtype, bias.dtype)
        return y

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, gy: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        logits, p, y, weight = ctx.saved_tensors
        k, b, n = logits.shape
        gy = gy.to(p.dtype)
        dgate = logits - y
        dgate *= p
        dgate *= gy
        dlogits = (weight.T @ dgate.reshape(k, b * n)).view(k, b, n)
        dlogits.addcmul_(p, gy)
        du, di, db = ctx.dtypes
        d_side_u = dgate.sum(2)
        return (
            dlogits,
            d_side_u.to(du),
            dgate.sum(1).to(di),
            dgate.reshape(k, b * n) @ logits.reshape(k, b * n).T,
            d_side_u.sum(1).to(db),
        )
