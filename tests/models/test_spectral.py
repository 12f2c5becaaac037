"""Spectral initialisation: the model starts as the low-pass graph filter it is built from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hirex.config import ConfigError, ModelConfig
from hirex.models.retrieval_model import RetrievalModel
from hirex.models.spectral import spectral_init
from hirex.models.user_batch import UserBatch


def test_initial_scores_rank_items_like_the_dense_filter(tiny_set_data):
    ds, _ = tiny_set_data
    dim, alpha = 12, 0.3
    cfg = ModelConfig(
        dim=dim,
        use_user_id=False,
        cosine=False,
        pooling_exponent=0.0,
        init="spectral",
        spectral_alpha=alpha,
    )
    model = RetrievalModel(cfg, ds.n_users, ds.n_items)
    spectral_init(model, ds.train)
    # Reference: dense SVD of D_u^-1/2 R D_i^-1/2, filter r D^-1/2 V diag(s^2 + alpha) V^T D^1/2.
    r = ds.train.to_csr().toarray().astype(np.float64)
    du, di = r.sum(1), r.sum(0)
    norm = r / np.sqrt(np.maximum(du, 1))[:, None] / np.sqrt(np.maximum(di, 1))[None, :]
    _, s, vt = np.linalg.svd(norm, full_matrices=False)
    v, s = vt[:dim].T, s[:dim]
    users = np.arange(40)
    di_is = np.where(di > 0, np.maximum(di, 1) ** -0.5, 0.0)
    want = (r[users] * di_is) @ v @ np.diag(s**2 + alpha) @ v.T * np.sqrt(di)
    with torch.no_grad():
        got = model.score(
            model.encode_users(UserBatch.from_interactions(ds.train, users)),
            model.encode_items(),
        ).numpy()
    # The same scores up to one positive scale (spectral_scale), so the same rankings.
    c = (got * want).sum() / (want * want).sum()
    assert c > 0
    assert np.allclose(got, c * want, atol=1e-3 * np.abs(got).max())
    top = np.abs(got).max(1).mean()
    assert top == pytest.approx(cfg.spectral_scale, rel=0.3)


def test_spectral_init_needs_a_pooled_dot_model(tiny_set_data):
    ds, _ = tiny_set_data
    for bad in (
        ModelConfig(dim=8, init="spectral", cosine=True),
        ModelConfig(dim=8, init="spectral", cosine=False, scorer="mol"),
        ModelConfig(dim=8, init="spectral", cosine=False, user_encoder="none"),
    ):
        with pytest.raises(ConfigError, match="model.init = 'spectral' needs"):
            spectral_init(RetrievalModel(bad, ds.n_users, ds.n_items), ds.train)
    big = ModelConfig(dim=5000, init="spectral", cosine=False)
    with pytest.raises(ConfigError, match="singular vectors"):
        spectral_init(RetrievalModel(big, ds.n_users, ds.n_items), ds.train)
