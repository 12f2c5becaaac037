"""Generative retrieval: an encoder-decoder transformer that writes the next item's semantic ID.

TIGER-style (Rajput et al., NeurIPS 2023; T5 layout with pre-norm layers): the encoder reads
the user's recent history as semantic-ID tokens, ``[CLS] c_1^1 .. c_P^1  c_1^2 .. c_P^2 ...``
(oldest first), each token embedded with its position inside the ID and the item's recency; the
decoder writes ``c_1 .. c_P`` of the next item, one head per position.  The log-probability of
an item is the sum of its tokens' log-probabilities; ``beam_search.py`` decodes it over the
prefix trie of valid IDs.

Token ids: 0 padding, 1 [CLS] / decoder start, then position t's codes at ``2 + offset[t]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PAD, START = 0, 1


@dataclass(frozen=True)
class GeneratorShape:
    """The architecture, stored with the weights."""

    sizes: tuple[int, ...]
    dim: int = 128
    layers: int = 2
    heads: int = 4
    ff: int = 512
    dropout: float = 0.1
    max_history: int = 20


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer (T5 layout) whose cross-attention takes keys and values computed
    once per user and shared by all of the user's beams."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.n1, self.n2, self.n3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.self_out = nn.Linear(d, d)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.cross_out = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff, d))
        self.drop = nn.Dropout(dropout)

    def split(self, x: torch.Tensor) -> torch.Tensor:  # (..., L, d) -> (..., heads, L, dh)
        return x.unflatten(-1, (self.heads, -1)).transpose(-3, -2)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(memory).chunk(2, -1)
        return self.split(k), self.split(v)

    def forward(self, y: torch.Tensor, kv, bias: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        """y: (U, W, L, d) beams; kv: keys/values (U, heads, S, dh); bias: (U, S) additive mask."""
        q, k, v = (self.split(z) for z in self.qkv(self.n1(y)).chunk(3, -1))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y + self.drop(self.self_out(a.transpose(-3, -2).flatten(-2)))
        q = self.split(self.q(self.n2(y)))  # (U, W, heads, L, dh)
        k, v = kv
        a = F.scaled_dot_product_attention(
            q, k[:, None], v[:, None], attn_mask=bias[:, None, None, None, :]
        )
        y = y + self.drop(self.cross_out(a.transpose(-3, -2).flatten(-2)))
        return y + self.drop(self.ff(self.n3(y)))


class SemanticIdGenerator(nn.Module):
    """Encoder: one vector per history item, the sum of its ID tokens' embeddings (a token is a
    (position, code) pair) plus a recency embedding, then pre-norm transformer layers.  Reading
    an item as one composed vector rather than P separate tokens makes the memory P times
    shorter, which is what makes training and beam search affordable on 2 CPU cores.
    Decoder: the next item's tokens, causal, cross-attending to the memory."""

    def __init__(self, shape: GeneratorShape) -> None:
        super().__init__()
        self.shape = shape
        sizes = list(shape.sizes)
        self.register_buffer(
            "offsets", torch.tensor(np.r_[0, np.cumsum(sizes)[:-1]] + 2, dtype=torch.int64),
            persistent=False,
        )  # fmt: skip
        vocab = 2 + sum(sizes)
        d = shape.dim
        self.tok = nn.Embedding(vocab, d, padding_idx=PAD)
        self.recency = nn.Embedding(shape.max_history + 1, d)
        self.dec_pos = nn.Embedding(len(sizes), d)
        layer = nn.TransformerEncoderLayer(
            d, shape.heads, shape.ff, shape.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, shape.layers, enable_nested_tensor=False)
        self.enc_norm = nn.LayerNorm(d)
        self.decoder = nn.ModuleList(
            DecoderLayer(d, shape.heads, shape.ff, shape.dropout) for _ in range(shape.layers)
        )
        self.out_norm = nn.LayerNorm(d)
        self.heads = nn.ModuleList(nn.Linear(d, k) for k in sizes)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)

    @property
    def length(self) -> int:
        return len(self.shape.sizes)

    def encode(self, history: torch.Tensor):  # noqa: ANN201
        """history: (B, H, P) codes of the last H items, -1 rows for padding (left-padded,
        newest last) -> the memory: per decoder layer its keys and values, and the (B, 1 + H)
        additive padding mask."""
        b, h, p = history.shape
        valid = history[:, :, 0] >= 0  # (B, H)
        tokens = torch.where(valid[..., None], history + self.offsets[:p], PAD)
        recency = torch.arange(h - 1, -1, -1, device=history.device).clamp(
            max=self.shape.max_history
        )  # 0 for the newest item
        x = self.tok(tokens).sum(2) + self.recency(recency)
        cls = self.tok(torch.full((b, 1), START, device=history.device))
        x = torch.cat([cls, x], 1)
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=history.device), ~valid], 1)
        memory = self.enc_norm(self.encoder(x, src_key_padding_mask=pad))
        bias = torch.zeros(pad.shape, dtype=memory.dtype, device=memory.device)
        bias = bias.masked_fill(pad, float("-inf"))
        return [layer.memory_kv(memory) for layer in self.decoder], bias

    def decode(self, memory, prefix: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        """prefix: (U, W, t) codes of W beams per user -> (U, W, t + 1, d) decoder states."""
        kvs, bias = memory
        u, w, t = prefix.shape
        start = torch.full((u, w, 1), START, device=prefix.device)
        y = self.tok(torch.cat([start, prefix + self.offsets[:t]], 2))
        y = y + self.dec_pos.weight[: t + 1]
        for layer, kv in zip(self.decoder, kvs, strict=True):
            y = layer(y, kv, bias)
        return self.out_norm(y)

    def step_logits(self, memory, prefix: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        """prefix: (U, W, t) codes already written -> (U, W, sizes[t]) logits of code t."""
        return self.heads[prefix.shape[2]](self.decode(memory, prefix)[:, :, -1])

    def forward(self, history: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
        """Teacher forcing.  target: (B, P) codes -> P logits tensors, (B, sizes[t]) each."""
        h = self.decode(self.encode(history), target[:, None, :-1])[:, 0]
        return [head(h[:, t]) for t, head in enumerate(self.heads)]

    @torch.no_grad()
    def item_log_probs(self, history: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Reference scorer: (B, H, P) histories x (M, P) complete IDs -> (B, M) log-probs."""
        memory = self.encode(history)
        b, m = history.shape[0], codes.shape[0]
        tgt = codes[None].expand(b, m, -1)
        h = self.decode(memory, tgt[:, :, :-1])
        total = torch.zeros(b, m, device=codes.device)
        for t, head in enumerate(self.heads):
            logp = torch.log_softmax(head(h[:, :, t]).float(), -1)
            total += logp.gather(2, tgt[:, :, t : t + 1])[..., 0]
        return total
