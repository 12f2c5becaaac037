"""Learning the index with the model: HILL's joint losses and the EM alternative.

The trainer calls ``epoch_start`` at the first step of every epoch and adds ``loss`` to the
retrieval loss of every step.  Both are no-ops before ``index.start_epoch``.

joint (HILL): each candidate item's embedding is softly quantized level by level (cross-attention
over the level's codewords with an annealed sharpness); the retrieval loss is applied to (user,
pseudo-item at level l) with the same candidates and log-Q corrections as the item-level loss, so
user gradients shape the codewords; plus reconstruction, balance and alignment terms.

em: the E-step re-fits the codewords by residual k-means on the current item embeddings at the
start of every epoch; the M-step trains the model (and the per-level user maps) with the level
losses on hard-assigned pseudo-items.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hirex.config import IndexConfig
from hirex.index.codebooks import ResidualCodebooks
from hirex.index.exhaustive import item_embeddings
from hirex.models.retrieval_model import RetrievalModel
from hirex.train.losses import sampled_softmax_loss


class IndexLearner:
    def __init__(
        self, cfg: IndexConfig, model: RetrievalModel, steps_per_epoch: int, epochs: int, seed: int
    ) -> None:
        if cfg.method not in ("joint", "em"):
            raise ValueError(f"IndexLearner is for joint or em, not {cfg.method!r}")
        self.cfg, self.seed = cfg, seed
        q = model.cfg.mol_item_embs if model.cfg.scorer == "mol" else 1
        self.codebooks = ResidualCodebooks(cfg.levels, q, model.cfg.dim).to(model.device)
        if cfg.method == "em":
            for cw in self.codebooks.codewords:
                cw.requires_grad_(False)
        self.steps_per_epoch = steps_per_epoch
        self.total = max(1, (epochs - cfg.start_epoch) * steps_per_epoch)
        # Exponential average of each level's assignment mass (the balance regulariser's memory),
        # as buffers so that checkpoints carry it and a resumed run continues identically.
        self.state = torch.nn.Module()
        for level, k in enumerate(cfg.levels):
            self.state.register_buffer(
                f"mass{level}", torch.full((k,), 1.0 / k, device=model.device)
            )

    @property
    def mass(self) -> list[torch.Tensor]:
        return [getattr(self.state, f"mass{level}") for level in range(len(self.cfg.levels))]

    @mass.setter
    def mass(self, values: list[torch.Tensor]) -> None:
        for level, v in enumerate(values):
            setattr(self.state, f"mass{level}", v)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.codebooks.parameters() if p.requires_grad]

    def active(self, epoch: int) -> bool:
        return epoch >= self.cfg.start_epoch

    def epoch_start(self, model: RetrievalModel, epoch: int) -> None:
        """Initialise the codewords when the index starts; EM's E-step at every epoch."""
        if not self.active(epoch):
            return
        fresh = not any(bool(cw.detach().abs().sum()) for cw in self.codebooks.codewords)
        if fresh or self.cfg.method == "em":
            self.codebooks.fit_kmeans(
                item_embeddings(model), seed=self.seed + epoch, niter=self.cfg.kmeans_iters
            )
            model.train()

    def _t(self, epoch: int, step: int) -> tuple[float, float]:
        """(index loss weight, attention sharpness) at this step."""
        t = (epoch - self.cfg.start_epoch) * self.steps_per_epoch + step
        weight = min(1.0, (t + 1) / self.cfg.warmup_steps) if self.cfg.warmup_steps else 1.0
        frac = min(1.0, t / self.total)
        c = self.cfg
        return weight, c.alpha_min + (c.alpha_max - c.alpha_min) * frac**c.alpha_power

    def loss(
        self,
        model: RetrievalModel,
        epoch: int,
        step: int,
        u: torch.Tensor,
        rows: torch.Tensor | None,
        items: torch.Tensor,
        item_scores: torch.Tensor,
        candidates: torch.Tensor,
        pos_col: torch.Tensor,
        pos: torch.Tensor,
        log_q: torch.Tensor,
        weights: torch.Tensor | None,
    ) -> torch.Tensor:
        """u: (B, P, D) users, items: (M, Q, D) candidate embeddings, item_scores: (R, M) the
        item-level logits (already masked) -> the weighted index loss (a scalar)."""
        if not self.active(epoch):
            return item_scores.new_zeros(())
        c = self.cfg
        weight, alpha = self._t(epoch, step)
        m, q, d = items.shape
        flat = items.reshape(m, -1).float()
        if c.method == "joint":
            soft = self.codebooks.soft(items, alpha)
            pseudo, probs = soft.pseudo, soft.probs
        else:
            codes = self.codebooks.encode(items.detach())
            pseudo = [
                self.codebooks.decode(codes[:, : lv + 1]).reshape(m, -1)
                for lv in range(len(c.levels))
            ]
            probs = []
        masked = torch.isinf(item_scores)
        target = torch.softmax(item_scores.detach(), dim=1)
        level_losses, align = [], []
        for level, p in enumerate(pseudo):
            s = model.score(self.codebooks.map_user(u, level), p.view(m, q, d).to(u.dtype)).float()
            if rows is not None:
                s = s[rows]
            s = s.masked_fill(masked, float("-inf"))
            level_losses.append(sampled_softmax_loss(s, candidates, pos_col, pos, log_q, weights))
            logp = torch.log_softmax(s.masked_fill(masked, -1e9), dim=1)
            align.append(F.kl_div(logp, target, reduction="batchmean"))
        total = c.level_weight * torch.stack(level_losses).mean()
        total = total + c.align_weight * torch.stack(align).mean()
        if c.method == "joint":
            recon = ((pseudo[-1] - flat) ** 2).sum(1).mean()
            balance = []
            for level, a in enumerate(probs):
                mass = 0.9 * self.mass[level].detach() + 0.1 * a.mean(0)
                setattr(self.state, f"mass{level}", mass.detach())
                balance.append(c.levels[level] * (mass**2).sum() - 1.0)
            total = total + c.recon_weight * recon + c.balance_weight * torch.stack(balance).sum()
        return weight * total
