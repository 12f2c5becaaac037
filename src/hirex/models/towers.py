"""User and item towers: each maps ids (and features) to ``(n, E, D)`` embeddings."""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hirex.models.user_batch import UserBatch, pad_right_aligned


def hash_text_tokens(texts: list[str], buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Hash each text's whitespace tokens into ``buckets``; returns CSR (indptr, token ids)."""
    indptr = np.zeros(len(texts) + 1, dtype=np.int64)
    tokens: list[int] = []
    for i, text in enumerate(texts):
        toks = sorted({zlib.crc32(t.encode()) % buckets for t in text.lower().split()})
        tokens.extend(toks)
        indptr[i + 1] = len(tokens)
    return indptr, np.asarray(tokens, dtype=np.int64)


class ItemTower(nn.Module):
    """Item id embedding, optionally plus a mean of hashed text-token embeddings.

    Output: (N, Q, D), Q embeddings per item (Q = 1 for the dot scorer).
    """

    def __init__(
        self,
        n_items: int,
        dim: int,
        n_embs: int = 1,
        text: list[str] | None = None,
        text_buckets: int = 65536,
        init_std: float = 0.0,
    ) -> None:
        super().__init__()
        self.n_items, self.dim, self.n_embs = n_items, dim, n_embs
        self.id_emb = nn.Embedding(n_items, n_embs * dim)
        nn.init.normal_(self.id_emb.weight, std=init_std or 1.0 / math.sqrt(dim))
        self.text_emb: nn.EmbeddingBag | None = None
        if text is not None:
            if len(text) != n_items:
                raise ValueError(f"item text has {len(text)} entries for {n_items} items")
            indptr, tokens = hash_text_tokens(text, text_buckets)
            self.register_buffer("text_indptr", torch.from_numpy(indptr), persistent=True)
            self.register_buffer("text_tokens", torch.from_numpy(tokens), persistent=True)
            self.text_emb = nn.EmbeddingBag(text_buckets, n_embs * dim, mode="mean")
            nn.init.normal_(self.text_emb.weight, std=0.1 / math.sqrt(dim))

    def forward(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """items: (N,) int64, or None for all items -> (N, Q, D)."""
        if items is None:
            items = torch.arange(self.n_items, device=self.id_emb.weight.device)
        out = self.id_emb(items)
        if self.text_emb is not None:
            starts, ends = self.text_indptr[items], self.text_indptr[items + 1]
            lengths = ends - starts
            offsets = torch.cumsum(lengths, 0) - lengths
            within = torch.arange(
                int(lengths.sum()), device=items.device
            ) - torch.repeat_interleave(offsets, lengths)
            flat = self.text_tokens[torch.repeat_interleave(starts, lengths) + within]
            out = out + self.text_emb(flat, offsets)
        return out.view(-1, self.n_embs, self.dim)

    def encode_text(self, texts: list[str], buckets: int) -> torch.Tensor:
        """The text part alone, for items the id table does not hold: (M,) texts -> (M, Q, D).
        A text with no tokens is a ValueError."""
        if self.text_emb is None:
            raise ValueError("this model has no text features (model.item_text = false)")
        indptr, tokens = hash_text_tokens(texts, buckets)
        empty = np.flatnonzero(np.diff(indptr) == 0)
        if len(empty):
            raise ValueError(f"item text {int(empty[0])} has no words to encode")
        device = self.text_emb.weight.device
        out = self.text_emb(
            torch.from_numpy(tokens).to(device), torch.from_numpy(indptr[:-1]).to(device)
        )
        return out.view(-1, self.n_embs, self.dim)


class PooledHistory(nn.Module):
    """Order-free history encoder: sum of history embeddings / |history| ** exponent."""

    def __init__(self, n_items: int, dim: int, exponent: float, init_std: float = 0.0) -> None:
        super().__init__()
        self.exponent = exponent
        self.emb = nn.Embedding(n_items, dim)
        nn.init.normal_(self.emb.weight, std=init_std or 1.0 / math.sqrt(dim))

    def forward(self, batch: UserBatch) -> torch.Tensor:
        """-> (B, D)"""
        if isinstance(self.emb, nn.Embedding):
            return pool_history(batch, self.emb.weight, self.exponent)
        # A table held elsewhere (hirex.distributed.tables.ShardedTable) sums the bags itself.
        summed = self.emb.bag_sum(batch.hist_items, batch.hist_indptr)
        return summed / batch.lengths.to(summed.dtype).clamp(min=1.0)[:, None] ** self.exponent


def pool_history(batch: UserBatch, table: torch.Tensor, exponent: float) -> torch.Tensor:
    """table: (N, D) -> (B, D), the sum of each history's rows / |history| ** exponent."""
    summed = F.embedding_bag(batch.hist_items, table, batch.hist_indptr[:-1], mode="sum")
    return summed / batch.lengths.to(summed.dtype).clamp(min=1.0)[:, None] ** exponent


class CausalTransformer(nn.Module):
    """SASRec-style causal transformer over the most recent ``max_len`` history items.

    Kang and McAuley, "Self-Attentive Sequential Recommendation" (ICDM 2018). Histories are
    left-padded and positions counted from the right, so the newest item always has the same
    position embedding whatever the batch's length. Real items never attend to padding, so a
    user's embedding does not depend on the other histories in its batch; a padding position
    attends only to itself (a query with no key at all would produce NaN).
    """

    def __init__(
        self,
        n_items: int,
        dim: int,
        max_len: int,
        n_layers: int,
        n_heads: int,
        dropout: float,
        *,
        shared_items: nn.Embedding | None = None,
        init_std: float = 0.0,
    ) -> None:
        super().__init__()
        self.max_len, self.pad = max_len, n_items
        std = init_std or 1.0 / math.sqrt(dim)
        # With ``shared_items`` the inputs are the item tower's embeddings (SASRec's weight
        # tying); it is held in a tuple so that it is not registered (and saved) twice.
        self._shared = (shared_items,) if shared_items is not None else None
        self.emb = None if shared_items is not None else nn.Embedding(n_items, dim)
        if self.emb is not None:
            nn.init.normal_(self.emb.weight, std=std)
        self.pos = nn.Embedding(max_len, dim)
        nn.init.normal_(self.pos.weight, std=init_std or 0.02)
        layer = nn.TransformerEncoderLayer(
            dim,
            n_heads,
            dim_feedforward=dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        if init_std:
            for module in self.encoder.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=init_std)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dim = dim

    def _item_weight(self) -> torch.Tensor:
        return self._shared[0].weight if self._shared is not None else self.emb.weight

    def forward_positions(self, seq: torch.Tensor) -> torch.Tensor:
        """seq: (B, T) item ids left-padded with ``pad`` -> (B, T, D) state after each item."""
        t = seq.shape[1]
        if t > self.max_len:
            seq, t = seq[:, -self.max_len :], self.max_len
        real = (seq != self.pad)[..., None]
        x = F.embedding(seq.clamp(max=self.pad - 1), self._item_weight()) * real
        x = x * math.sqrt(self.dim)
        x = x + self.pos.weight[self.max_len - t :][None]
        x = self.dropout(x)
        future = torch.triu(torch.ones(t, t, dtype=torch.bool, device=seq.device), diagonal=1)
        eye = torch.eye(t, dtype=torch.bool, device=seq.device)
        blocked = future[None] | (~real[..., 0][:, None, :] & ~eye[None])  # (B, T, T)
        heads = self.encoder.layers[0].self_attn.num_heads
        return self.norm(self.encoder(x, mask=blocked.repeat_interleave(heads, dim=0)))

    def forward(self, batch: UserBatch) -> torch.Tensor:
        """-> (B, D) state after the most recent item."""
        seq = pad_right_aligned(batch, self.max_len, self.pad)
        return self.forward_positions(seq)[:, -1]


class UserTower(nn.Module):
    """User id embedding plus a history encoder, projected to P embeddings: (B, P, D).

    Users the model has never seen (id -1) are encoded from their history alone.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        n_embs: int,
        encoder: str,
        use_user_id: bool,
        *,
        pooling_exponent: float = 0.5,
        max_len: int = 50,
        n_layers: int = 2,
        n_heads: int = 1,
        dropout: float = 0.2,
        shared_items: nn.Embedding | None = None,
        init_std: float = 0.0,
        user_init_std: float = -1.0,
        history_projection: bool = False,
    ) -> None:
        super().__init__()
        self.dim, self.n_embs = dim, n_embs
        self.id_emb = nn.Embedding(n_users, n_embs * dim) if use_user_id else None
        if self.id_emb is not None:
            std = user_init_std if user_init_std >= 0 else init_std or 1.0 / math.sqrt(dim)
            nn.init.normal_(self.id_emb.weight, std=std)
        self.history: nn.Module | None
        if encoder == "pooling":
            self.history = PooledHistory(n_items, dim, pooling_exponent, init_std)
        elif encoder == "transformer":
            self.history = CausalTransformer(
                n_items,
                dim,
                max_len,
                n_layers,
                n_heads,
                dropout,
                shared_items=shared_items,
                init_std=init_std,
            )
        elif encoder == "none":
            self.history = None
        else:
            raise ValueError(f"unknown user encoder {encoder!r}; choose pooling, transformer, none")
        self.proj = None
        if self.history is not None and (n_embs > 1 or history_projection):
            self.proj = nn.Linear(dim, n_embs * dim, bias=False)
            # Identity (tiled over the P embeddings) at init: starts as plain pooling.
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(dim).repeat(n_embs, 1))

    def combine(self, users: torch.Tensor, hist: torch.Tensor | None) -> torch.Tensor:
        """users: (...,) ids, hist: (..., D) history state -> (..., P, D)."""
        out = None
        if hist is not None:
            out = self.proj(hist) if self.proj is not None else hist
        if self.id_emb is not None:
            known = users >= 0
            ids = self.id_emb(users.clamp(min=0))
            ids = ids * known[..., None].to(ids.dtype)
            out = ids if out is None else out + ids
        assert out is not None
        return out.reshape(*users.shape, self.n_embs, self.dim)

    def forward(self, batch: UserBatch) -> torch.Tensor:
        hist = self.history(batch) if self.history is not None else None
        return self.combine(batch.users, hist)
