"""Spectral initialisation: start a pooled-history dot model at a graph low-pass filter.

With R~ = D_u^-1/2 R D_i^-1/2 and its top singular vectors V (items x dim) and values s, the
filter r_u D_i^-1/2 V diag(s^2 + alpha) V^T D_i^1/2 (the low-pass part of GF-CF, Shen et al.
CIKM 2021, with the linear part's s^2 kept in the top dim directions) is exactly a pooled-history
dot model with history embeddings D_i^-1/2 V g and item embeddings D_i^1/2 V g, g =
sqrt(s^2 + alpha).  Training then starts from a strong ranking instead of noise.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds

from hirex.config import ConfigError
from hirex.data.interactions import Interactions
from hirex.models.retrieval_model import RetrievalModel
from hirex.models.towers import PooledHistory

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
