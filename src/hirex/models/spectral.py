"""Graph low-pass filters in a pooled-history dot model: a spectral init, and a spectral branch.

With R~ = D_u^-1/2 R D_i^-1/2 and its top singular vectors V (items x dim) and values s, the
filter r_u D_i^-1/2 V diag(s^2 + alpha) V^T D_i^1/2 (the low-pass part of GF-CF, Shen et al.
CIKM 2021, with the linear part's s^2 kept in the top dim directions) is exactly a pooled-history
dot model with history embeddings D_i^-1/2 V g and item embeddings D_i^1/2 V g, g =
sqrt(s^2 + alpha).  Training then starts from a strong ranking instead of noise.

The spectral branch keeps the learned model as it is and adds GF-CF's ideal low-pass filter
r_u D_i^-1/2 V V^T D_i^1/2 beside it as extra, fixed embedding dimensions, so the final score is
learned + filter and the model stays a dot product that an index can search.  With
``spectral_linear_weight`` it also holds GF-CF's linear filter r_u R~^T R~ = r_u V S^2 V^T in the
same top directions (history and item embeddings V S), a second block of dimensions.  V comes
from a randomized SVD (Halko et al. 2011, ``torch.svd_lowrank``), seconds instead of minutes at
rank 1024.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds
from torch import nn

from hirex.config import ConfigError
from hirex.data.interactions import Interactions
from hirex.models.towers import PooledHistory, pool_history
from hirex.models.user_batch import UserBatch

if TYPE_CHECKING:
    from hirex.models.retrieval_model import RetrievalModel

log = logging.getLogger(__name__)


def check_spectral(model: RetrievalModel) -> None:
    cfg = model.cfg
    problems = []
    if not isinstance(model.user_tower.history, PooledHistory):
        problems.append("model.user_encoder = 'pooling'")
    if cfg.scorer != "dot" or cfg.cosine:
        problems.append("model.scorer = 'dot' with model.cosine = false")
    if cfg.history_projection or cfg.item_text:
        problems.append("model.history_projection = false and model.item_text = false")
    if problems:
        raise ConfigError("model.init = 'spectral' needs " + ", ".join(problems))


@torch.no_grad()
def spectral_init(model: RetrievalModel, train: Interactions, seed: int = 0) -> None:
    """Overwrite the history and item embeddings of ``model`` with the spectral filter."""
    check_spectral(model)
    cfg = model.cfg
    r = train.to_csr().astype(np.float64)
    if cfg.dim >= min(r.shape):
        raise ConfigError(
            f"model.dim = {cfg.dim} singular vectors need more than {cfg.dim} users and items"
        )
    du = np.asarray(r.sum(1)).ravel()
    di = np.asarray(r.sum(0)).ravel()
    du_is = np.where(du > 0, du, 1.0) ** -0.5 * (du > 0)
    di_is = np.where(di > 0, di, 1.0) ** -0.5 * (di > 0)
    di_s = np.sqrt(di)
    norm = sp.diags(du_is) @ r @ sp.diags(di_is)
    log.info("spectral init: top %d singular vectors of a %dx%d matrix", cfg.dim, *r.shape)
    rng = np.random.default_rng(seed)
    _, s, vt = svds(norm, k=cfg.dim, random_state=seed)
    gain = np.sqrt(s**2 + cfg.spectral_alpha)
    v = vt.T * gain[None, :]
    hist = v * di_is[:, None]
    items = v * di_s[:, None]
    # Scale both sides so that a typical user's best score is ``spectral_scale``.
    sample = np.unique(rng.integers(0, train.n_users, 1024))
    sample = sample[train.lengths()[sample] > 0]
    ru = r[sample]
    exponent = model.user_tower.history.exponent
    u = (ru @ hist) / np.maximum(np.asarray(ru.sum(1)), 1.0) ** exponent
    top = np.abs(u @ items.T).max(axis=1).mean()
    c = np.sqrt(cfg.spectral_scale / max(top, 1e-12))
    dtype = model.item_tower.id_emb.weight.dtype
    model.user_tower.history.emb.weight.copy_(torch.from_numpy(hist * c).to(dtype))
    model.item_tower.id_emb.weight.copy_(torch.from_numpy(items * c).to(dtype))
    if model.user_tower.id_emb is not None:
        model.user_tower.id_emb.weight.zero_()


class SpectralBranch(nn.Module):
    """Fixed graph filters as a pooled-history dot branch: (B, W) users, (N, W) items.

    Buffers (saved with the model): ``hist`` (N, W) = D_i^-1/2 V, ``items`` (N, W) = c D_i^1/2 V
    for the ideal low-pass filter (W = K); with ``linear``, also V S and c' V S for GF-CF's
    linear filter in the same K directions (W = 2K).  ``fitted``: an unfitted branch is left out
    of every score, so training does not pay for W extra dimensions of zeros, and its buffers
    are empty (0, W), so checkpoints written during training do not carry N x W zeros.
    """

    def __init__(self, n_items: int, rank: int, exponent: float, linear: bool = False) -> None:
        super().__init__()
        self.exponent = exponent
        self.n_items = n_items
        self.width = rank * (2 if linear else 1)
        self.register_buffer("hist", torch.zeros(0, self.width))
        self.register_buffer("items", torch.zeros(0, self.width))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def fit(self, hist: torch.Tensor, items: torch.Tensor) -> None:
        """Set the filters, hist and items (N, W) each, and switch the branch on."""
        want = (self.n_items, self.width)
        if tuple(hist.shape) != want or tuple(items.shape) != want:
            raise ValueError(
                f"spectral branch: filters of shape {list(hist.shape)} and {list(items.shape)} "
                f"for a branch of {want[0]} items x width {want[1]}"
            )
        like = self.hist
        self.hist = hist.to(device=like.device, dtype=like.dtype)
        self.items = items.to(device=like.device, dtype=like.dtype)
        self.fitted.fill_(True)

    def _load_from_state_dict(
        self, state_dict: dict[str, torch.Tensor], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # A fitted branch's buffers are (N, W), an unfitted one's (0, W); files written before
        # the unfitted ones were empty hold (N, W) zeros.  Take the stored shape when it is one of
        # these; any other shape is left for load_state_dict to report.
        for name in ("hist", "items"):
            value = state_dict.get(prefix + name)
            current = getattr(self, name)
            if (
                value is not None
                and value.dim() == 2
                and value.shape[1] == self.width
                and value.shape[0] in (0, self.n_items)
            ):
                setattr(self, name, current.new_zeros(value.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def active(self) -> bool:
        return bool(self.fitted)

    def users(self, batch: UserBatch) -> torch.Tensor:
        """-> (B, K): the sum of the history's rows of ``hist`` / |history| ** exponent."""
        return pool_history(batch, self.hist, self.exponent)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items: (N,) -> (N, K)"""
        return self.items[items]


def low_pass_basis(
    train: Interactions, rank: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(D_i^-1/2 V, D_i^1/2 V, V S), all (items, rank) float32, V and S the top ``rank`` right
    singular vectors and values of D_u^-1/2 R D_i^-1/2 by randomized SVD (4 power iterations,
    128 extra columns)."""
    r = train.to_csr().astype(np.float32)
    if not 0 < rank < min(r.shape):
        raise ConfigError(
            f"model.spectral_rank = {rank} must lie between 1 and min(users, items) - 1 = "
            f"{min(r.shape) - 1}"
        )
    du = np.asarray(r.sum(1)).ravel()
    di = np.asarray(r.sum(0)).ravel()
    du_is = np.where(du > 0, du, 1.0) ** -0.5 * (du > 0)
    di_is = np.where(di > 0, di, 1.0) ** -0.5 * (di > 0)
    norm = (sp.diags(du_is) @ r @ sp.diags(di_is)).tocoo()
    a = torch.sparse_coo_tensor(
        np.vstack([norm.row, norm.col]),
        norm.data.astype(np.float32),
        norm.shape,
        check_invariants=True,
    ).coalesce()
    log.info("spectral branch: top %d singular vectors of a %dx%d matrix", rank, *r.shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, sv, v = torch.svd_lowrank(a, q=min(rank + 128, min(r.shape)), niter=4)
    v, sv = v[:, :rank].numpy(), sv[:rank].numpy()
    return (
        (v * di_is[:, None]).astype(np.float32),
        (v * np.sqrt(di)[:, None]).astype(np.float32),
        (v * sv[None, :]).astype(np.float32),
    )


@torch.no_grad()
def attach_spectral_branch(model: RetrievalModel, train: Interactions, seed: int = 0) -> None:
    """Fit ``model.spectral`` on ``train`` and switch it on; its scale is set so that the mean
    best branch score of a sample of users is ``model.spectral_weight`` logits."""
    branch = model.spectral
    if branch is None:
        raise ValueError("the model has no spectral branch; set model.spectral_rank > 0")
    cfg = model.cfg
    linear = cfg.spectral_linear_weight > 0
    rank = branch.hist.shape[1] // (2 if linear else 1)
    ideal_hist, ideal_items, vs = low_pass_basis(train, rank, seed)
    rng = np.random.default_rng(seed)
    sample = np.unique(rng.integers(0, train.n_users, 1024))
    sample = sample[train.lengths()[sample] > 0]
    ru = train.to_csr()[sample].astype(np.float32)
    pool = np.maximum(np.asarray(ru.sum(1)), 1.0) ** branch.exponent

    def scaled(hist: np.ndarray, items: np.ndarray, weight: float) -> np.ndarray:
        """items scaled so that the sample's mean best score is ``weight`` logits."""
        top = np.abs(((ru @ hist) / pool) @ items.T).max(axis=1).mean()
        return items * (weight / max(float(top), 1e-12))

    hist, items = ideal_hist, scaled(ideal_hist, ideal_items, cfg.spectral_weight)
    if linear:  # r V S (V S)^T = r V diag(s^2) V^T, GF-CF's linear filter in these directions
        hist = np.hstack([hist, vs])
        items = np.hstack([items, scaled(vs, vs, cfg.spectral_linear_weight)])
    branch.fit(torch.from_numpy(hist), torch.from_numpy(items))
