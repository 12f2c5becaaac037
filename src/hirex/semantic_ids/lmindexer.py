"""LMIndexer: semantic IDs learned end to end from item text, self-supervised.

Jin et al., "Language Models As Semantic Indexers", ICML 2024 (arXiv 2310.07815).  The pieces,
as this module builds them over a (frozen) text encoder's item embeddings x and the text's
tokens:

- **Semantic encoder.**  Position t's hidden state is ``h_t = f_t([g(x); sum_{s<t} C_s[c_s]])``:
  a shared trunk g over the text embedding, conditioned on the embeddings of the prefix codes.
  Its code is the argmax of ``-||h_t - C_t[k]||^2`` over the position's codebook C_t, trained
  with a straight-through estimator (the one-hot forward, the softmax's gradient backward).
  C_t is initialised by k-means on h_t of every item when position t starts.
- **Reconstructor.**  A one-layer transformer decoder rebuilds the masked item text from the
  code embeddings ``[C_1[c_1], ..., C_t[c_t]]`` (its only memory; the text encoder is not
  visible to it).  The mask ratio grows with t (``mask_ratios``), so later codes must carry
  more of the text.
- **Contrastive loss.**  InfoNCE between two dropout views of each item's h_t, against the
  other items of the batch; at t > 1 only items that share the prefix c_<t count as negatives
  (hard negatives), and batches are drawn grouped by prefix so that there are some.
- **Commitment.**  The usual VQ commitment for position t, and a cross-entropy that keeps the
  earlier positions' codes of each item (frozen at the end of their stage) stable while the
  shared trunk keeps training.
- **Progressive training**: one position at a time, earlier codebooks frozen.

Codebook usage (perplexity, dead codes) and the collision rate are logged after every epoch and
kept in ``history``.  Dead codes are moved onto random items' states between epochs (against
codebook collapse).  Collisions left at the end are resolved by the disambiguation code
(``ids.disambiguate``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from hirex.semantic_ids.ids import code_usage, collision_rate, prefix_keys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMIndexerConfig:
    dim: int = 128
    epochs_per_level: int = 15
    batch_size: int = 256
    lr: float = 2e-3
    mask_ratios: tuple[float, ...] = (0.3, 0.5, 0.7)
    """Reconstructor mask ratio per position (the last one repeats for deeper positions)."""
    temperature: float = 0.1
    """Of the straight-through softmax over -distances and of the contrastive loss."""
    contrastive_weight: float = 0.5
    commitment_weight: float = 0.25
    view_dropout: float = 0.1
    seed: int = 0


class LMIndexer(nn.Module):
    """Semantic encoder, codebooks and reconstructor; ``encode`` gives codes for new items."""

    name = "lmindexer"

    def __init__(self, in_dim: int, sizes: list[int], vocab_size: int, dim: int = 128,
                 max_tokens: int = 32) -> None:  # fmt: skip
        super().__init__()
        self.sizes, self.dim, self.vocab_size = list(sizes), dim, vocab_size
        self.proj = nn.Linear(in_dim, dim)
        self.trunk = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.steps = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, dim)) for _ in sizes
        )
        # Start as residual quantization of the text embedding's principal components: the
        # learned corrections (trunk, steps) start at zero (see ``init_from``).
        for mlp in (self.trunk, *self.steps):
            nn.init.zeros_(mlp[-1].weight)
            nn.init.zeros_(mlp[-1].bias)
        self.codebooks = nn.ParameterList(nn.Parameter(torch.zeros(k, dim)) for k in sizes)
        # Reconstructor: token ids 1..vocab_size, 0 padding, vocab_size + 1 the mask token.
        self.tok_emb = nn.Embedding(vocab_size + 2, dim, padding_idx=0)
        self.pos_emb = nn.Parameter(torch.randn(max_tokens, dim) * 0.02)
        self.code_pos = nn.Parameter(torch.randn(len(sizes), dim) * 0.02)
        self.recon = nn.TransformerDecoderLayer(dim, 4, 2 * dim, dropout=0.1, batch_first=True)
        self.recon_out = nn.Linear(dim, vocab_size + 1)

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        """The projection starts as PCA of the items' text embeddings (centred)."""
        mean = x.mean(0)
        _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
        k = min(self.dim, v.shape[0])
        self.proj.weight.zero_()
        self.proj.weight[:k] = v[:k]
        self.proj.bias.copy_(-(self.proj.weight @ mean))

    def hidden(self, x: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """x: (B, in_dim), prefix: (B, t) codes -> h_t (B, dim): the text's residual after the
        prefix's codewords, plus a learned, prefix-conditioned correction."""
        t = prefix.shape[1]
        z = self.proj(x)
        z = z + self.trunk(z)
        p = torch.zeros_like(z)
        for s in range(t):
            p = p + self.codebooks[s][prefix[:, s]].detach()
        return z - p + self.steps[t](torch.cat([z, p], dim=1))

    def logits(self, h: torch.Tensor, t: int) -> torch.Tensor:
        """-||h_t - C_t[k]||^2 for position t's codewords: (B, K_t)."""
        return -torch.cdist(h, self.codebooks[t]).pow(2)

    @torch.no_grad()
    def encode(self, emb: np.ndarray, depth: int | None = None) -> np.ndarray:
        """(N, in_dim) -> (N, depth) codes, greedy position by position."""
        self.eval()
        x = torch.from_numpy(np.asarray(emb, np.float32))
        codes = torch.zeros(len(x), 0, dtype=torch.int64)
        for t in range(depth if depth is not None else len(self.sizes)):
            c = self.logits(self.hidden(x, codes), t).argmax(1)
            codes = torch.cat([codes, c[:, None]], 1)
        return codes.numpy()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"lmindexer.{k}": v.detach().clone() for k, v in self.state_dict().items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], sizes: list[int]) -> LMIndexer:
        state = {
            k[len("lmindexer.") :]: v for k, v in tensors.items() if k.startswith("lmindexer.")
        }
        dim, in_dim = state["proj.weight"].shape
        vocab = state["tok_emb.weight"].shape[0] - 2
        model = cls(in_dim, sizes, vocab, dim, state["pos_emb"].shape[0])
        model.load_state_dict(state)
        return model.eval()

    # ---- the losses of stage t ---------------------------------------------------------------
    def stage_loss(
        self,
        x: torch.Tensor,
        tokens: torch.Tensor,
        prev: torch.Tensor,
        t: int,
        cfg: LMIndexerConfig,
        gen: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """x (B, in_dim), tokens (B, T) compact ids, prev (B, t) frozen earlier codes."""
        view1 = F.dropout(x, cfg.view_dropout, training=True)
        view2 = F.dropout(x, cfg.view_dropout, training=True)
        h = self.hidden(view1, prev)
        logits = self.logits(h, t)
        code = logits.argmax(1)
        soft = torch.softmax(logits / cfg.temperature, dim=1)
        hard = F.one_hot(code, soft.shape[1]).to(soft.dtype)
        book = self.codebooks[t]
        e_t = (hard - soft.detach() + soft) @ book  # straight-through
        chosen = book[code]
        vq = F.mse_loss(chosen, h.detach()) + cfg.commitment_weight * F.mse_loss(h, chosen.detach())
        # earlier positions keep their codes while the trunk trains
        keep = x.new_zeros(())
        for s in range(t):
            old = self.logits(self.hidden(x, prev[:, :s]), s) / cfg.temperature
            keep = keep + F.cross_entropy(old, prev[:, s])

        # reconstruct the masked text from the code embeddings alone
        books = [self.codebooks[s].detach() for s in range(t)]
        memory = [books[s][prev[:, s]] for s in range(t)] + [e_t]
        memory = torch.stack(memory, 1) + self.code_pos[: t + 1]
        real = tokens > 0
        ratio = cfg.mask_ratios[min(t, len(cfg.mask_ratios) - 1)]
        masked = (torch.rand(tokens.shape, generator=gen) < ratio) & real
        first = real.float().argmax(1)  # at least one masked token per item
        masked[torch.arange(len(tokens)), first] |= real[torch.arange(len(tokens)), first]
        inp = torch.where(masked, torch.full_like(tokens, self.vocab_size + 1), tokens)
        q = self.tok_emb(inp) + self.pos_emb[: tokens.shape[1]]
        out = self.recon(q, memory, tgt_key_padding_mask=~real)
        recon = F.cross_entropy(self.recon_out(out[masked]), tokens[masked])

        # contrastive: two views of the same item against (prefix-sharing) other items
        a = F.normalize(h, dim=1)
        b = F.normalize(self.hidden(view2, prev), dim=1)
        sim = a @ b.T / cfg.temperature
        if t > 0:
            key = prefix_keys_torch(prev, self.sizes, t)
            same = key[:, None] == key[None, :]
            sim = sim.masked_fill(~same, float("-inf"))
        contrast = F.cross_entropy(sim, torch.arange(len(sim)))
        total = recon + cfg.contrastive_weight * contrast + vq + keep
        return {"loss": total, "recon": recon, "contrast": contrast, "vq": vq, "keep": keep}


def prefix_keys_torch(codes: torch.Tensor, sizes: list[int], depth: int) -> torch.Tensor:
    key = torch.zeros(len(codes), dtype=torch.int64)
    for s in range(depth):
        key = key * sizes[s] + codes[:, s]
    return key


def compact_tokens(tokens: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber the token ids that occur to 1..V (0 stays padding); returns (ids, V)."""
    uniq = np.unique(tokens[tokens > 0])
    out = np.where(tokens > 0, np.searchsorted(uniq, tokens) + 1, 0)
    return out.astype(np.int64), len(uniq)


def fit_lmindexer(
    emb: np.ndarray,
    tokens: np.ndarray,
    sizes: list[int],
    cfg: LMIndexerConfig = LMIndexerConfig(),
    *,
    progress: bool = False,
) -> tuple[LMIndexer, np.ndarray, list[dict]]:
    """Learn the codes progressively.  emb: (N, D) text embeddings, tokens: (N, T) token ids.

    Returns the model, the (N, L) codes and the per-epoch history (losses, perplexity, dead
    codes, collision rate of the prefix so far)."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.from_numpy(np.ascontiguousarray(emb, np.float32))
    tok_np, vocab = compact_tokens(tokens)
    tok = torch.from_numpy(tok_np)
    n = len(x)
    if n < max(sizes):
        raise ValueError(
            f"{n} items cannot fill a codebook of {max(sizes)} codes; use smaller sid.levels"
        )
    model = LMIndexer(x.shape[1], sizes, vocab, cfg.dim, tokens.shape[1])
    model.init_from(x)
    codes = torch.zeros(n, 0, dtype=torch.int64)
    history: list[dict] = []
    for t, size in enumerate(sizes):
        _init_codebook(model, x, codes, t, cfg.seed)
        for s in range(t):
            model.codebooks[s].requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        bar = tqdm(range(cfg.epochs_per_level), desc=f"lmindexer c{t + 1}", disable=not progress)
        for epoch in bar:
            model.train()
            sums: dict[str, float] = {}
            for batch in _batches(codes, t, sizes, cfg.batch_size, gen):
                losses = model.stage_loss(x[batch], tok[batch], codes[batch], t, cfg, gen)
                opt.zero_grad(set_to_none=True)
                losses["loss"].backward()
                opt.step()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(batch)
            if not math.isfinite(sums["loss"]):
                raise ValueError("LMIndexer training diverged (loss not finite); lower sid.lr")
            current = _codes_at(model, x, codes, t)
            dead = (
                _reset_dead(model, x, codes, current, t, gen)
                if epoch < cfg.epochs_per_level - 1
                else 0
            )
            so_far = np.concatenate([codes.numpy(), current[:, None]], 1)
            usage = code_usage(so_far[:, t : t + 1], [size])[0]
            row = {
                "position": t + 1,
                "epoch": epoch + 1,
                **{k: round(v / n, 4) for k, v in sums.items()},
                "perplexity": usage["perplexity"],
                "dead_codes": usage["dead_codes"],
                "reset_codes": dead,
                "collision_rate": round(collision_rate(so_far), 4),
            }
            history.append(row)
            bar.set_postfix(recon=row["recon"], ppl=row["perplexity"], coll=row["collision_rate"])
            log.debug("lmindexer %s", row)
        final = torch.from_numpy(_codes_at(model, x, codes, t))
        codes = torch.cat([codes, final[:, None]], 1)
        log.info(
            "lmindexer position %d: perplexity %.1f of %d, %d dead codes, collision rate %.4f",
            t + 1, history[-1]["perplexity"], size, history[-1]["dead_codes"],
            history[-1]["collision_rate"],
        )  # fmt: skip
    for cb in model.codebooks:
        cb.requires_grad_(True)
    return model.eval(), codes.numpy(), history


@torch.no_grad()
def _codes_at(model: LMIndexer, x: torch.Tensor, prev: torch.Tensor, t: int) -> np.ndarray:
    model.eval()
    return model.logits(model.hidden(x, prev), t).argmax(1).numpy()


@torch.no_grad()
def _init_codebook(model: LMIndexer, x: torch.Tensor, prev: torch.Tensor, t: int, seed: int):
    model.eval()
    h = np.ascontiguousarray(model.hidden(x, prev).numpy(), np.float32)
    km = faiss.Kmeans(h.shape[1], model.sizes[t], niter=20, seed=seed + t)
    km.cp.min_points_per_centroid = 1
    km.train(h)
    model.codebooks[t].data.copy_(torch.from_numpy(km.centroids))


@torch.no_grad()
def _reset_dead(model, x, prev, current, t, gen) -> int:  # noqa: ANN001
    counts = np.bincount(current, minlength=model.sizes[t])
    dead = np.flatnonzero(counts == 0)
    if len(dead):
        model.eval()
        h = model.hidden(x, prev)
        # re-seed on items of the most crowded codes, where splitting helps collisions most
        crowded = torch.from_numpy(counts[current] > np.median(counts[counts > 0]))
        pool = torch.nonzero(crowded)[:, 0] if crowded.any() else torch.arange(len(x))
        pick = pool[torch.randint(0, len(pool), (len(dead),), generator=gen)]
        noise = 1e-2 * torch.randn(len(dead), h.shape[1], generator=gen)
        model.codebooks[t].data[torch.from_numpy(dead)] = h[pick] + noise * h.std()
    return int(len(dead))


def _batches(codes: torch.Tensor, t: int, sizes: list[int], batch_size: int, gen: torch.Generator):
    """Shuffled batches; from position 2 on, grouped by prefix so that a batch holds items that
    share c_<t (the hard negatives of the contrastive loss)."""
    n = len(codes)
    perm = torch.randperm(n, generator=gen)
    if t > 0:
        key = prefix_keys(codes.numpy(), sizes, t)[perm.numpy()]
        perm = perm[torch.from_numpy(np.argsort(key, kind="stable"))]
    chunks = list(torch.split(perm, batch_size))
    for i in torch.randperm(len(chunks), generator=gen).tolist():
        if len(chunks[i]) > 1:
            yield chunks[i]
