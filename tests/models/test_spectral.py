"""Spectral init and spectral branch: the model holds the low-pass graph filter it is built from."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hirex.config import ConfigError, ModelConfig, RunConfig, apply_overrides
from hirex.models.retrieval_model import (
    MODEL_FORMAT,
    MODEL_VERSION,
    RetrievalModel,
    read_safetensors,
)
from hirex.models.spectral import attach_spectral_branch, spectral_init
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


def _scores(model: RetrievalModel, history, users: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.score(
            model.encode_users(UserBatch.from_interactions(history, users)), model.encode_items()
        ).numpy()


def _branch_model(ds, rank: int = 12, weight: float = 2.0) -> RetrievalModel:
    cfg = ModelConfig(
        dim=16, use_user_id=False, spectral_rank=rank, spectral_weight=weight, temperature=0.1
    )
    torch.manual_seed(0)
    return RetrievalModel(cfg, ds.n_users, ds.n_items)


def test_spectral_branch_adds_the_dense_low_pass_filter(tiny_set_data):
    ds, _ = tiny_set_data
    rank, weight = 12, 2.0
    model = _branch_model(ds, rank, weight)
    users = np.arange(60)
    learned = _scores(model, ds.train, users)
    assert model.embedding_dim == 16  # unfitted: left out of every score
    attach_spectral_branch(model, ds.train)
    assert model.embedding_dim == 16 + rank
    branch = _scores(model, ds.train, users) - learned
    # Reference: dense SVD of D_u^-1/2 R D_i^-1/2; filter r D^-1/2 V V^T D^1/2 / |r| ** 0.5.
    r = ds.train.to_csr().toarray().astype(np.float64)
    du, di = r.sum(1), r.sum(0)
    norm = r / np.sqrt(np.maximum(du, 1))[:, None] / np.sqrt(np.maximum(di, 1))[None, :]
    _, _, vt = np.linalg.svd(norm, full_matrices=False)
    v = vt[:rank].T
    di_is = np.where(di > 0, np.maximum(di, 1) ** -0.5, 0.0)
    want = (r[users] * di_is) @ v @ v.T * np.sqrt(di) / np.sqrt(r[users].sum(1))[:, None]
    c = (branch * want).sum() / (want * want).sum()
    assert c > 0
    assert np.allclose(branch, c * want, atol=2e-3 * np.abs(branch).max())
    # Scaled so that a typical user's best branch score is spectral_weight logits.
    assert np.abs(branch).max(1).mean() == pytest.approx(weight, rel=0.3)


def test_spectral_branch_survives_save_and_load(tiny_set_data, tmp_path):
    ds, _ = tiny_set_data
    model = _branch_model(ds)
    attach_spectral_branch(model, ds.train, seed=1)
    model.save(tmp_path / "model.safetensors")
    back = RetrievalModel.load(tmp_path / "model.safetensors")
    assert back.spectral is not None and back.spectral.active
    users = np.arange(30)
    assert np.allclose(_scores(back, ds.train, users), _scores(model, ds.train, users))


def test_an_unfitted_branch_is_saved_empty_and_older_files_still_load(tiny_set_data, tmp_path):
    ds, _ = tiny_set_data
    model = _branch_model(ds)
    path = tmp_path / "model.safetensors"
    model.save(path)
    tensors, _ = read_safetensors(path, MODEL_FORMAT, MODEL_VERSION)
    assert tensors["spectral.hist"].shape == (0, 12)  # no items x rank zeros during training
    assert tensors["spectral.items"].shape == (0, 12)
    back = RetrievalModel.load(path)
    assert not back.spectral.active and back.spectral.items.shape == (0, 12)
    # A file written before unfitted buffers were empty holds (items, rank) zeros.
    old = dict(model.state_dict())
    old["spectral.hist"] = torch.zeros(ds.n_items, 12)
    old["spectral.items"] = torch.zeros(ds.n_items, 12)
    again = _branch_model(ds)
    again.load_state_dict(old, strict=True)
    attach_spectral_branch(again, ds.train)  # and it can still be fitted
    assert again.spectral.items.shape == (ds.n_items, 12)
    # Filters of another item count are refused, by load and by fit.
    old["spectral.items"] = torch.zeros(ds.n_items + 1, 12)
    with pytest.raises(RuntimeError, match="size mismatch for spectral.items"):
        _branch_model(ds).load_state_dict(old, strict=True)
    with pytest.raises(ValueError, match="for a branch of"):
        again.spectral.fit(torch.zeros(3, 12), torch.zeros(3, 12))


def test_beam_search_over_all_nodes_equals_exhaustive_with_the_branch(tiny_set_data):
    from hirex.config import IndexConfig
    from hirex.index.build import build_index
    from hirex.index.exhaustive import exhaustive_topk
    from hirex.index.search import beam_search

    ds, _ = tiny_set_data
    model = _branch_model(ds)
    attach_spectral_branch(model, ds.train)
    index = build_index(model, IndexConfig(method="posthoc", levels=[4, 4]))
    users = np.arange(50)
    got = beam_search(model, index, users, ds.train, 10, 16, exclude=ds.train).topk
    want = exhaustive_topk(model, users, ds.train, 10, exclude=ds.train)
    assert np.array_equal(got.ids.numpy(), want.ids.numpy())


def test_a_mixture_with_the_branch_scores_mixture_plus_filter(tiny_set_data):
    """MoL + branch: the mixture of the learned P x Q logits plus the same filter a dot model's
    branch adds, in score, in score_pairs and through beam search over all nodes."""
    from hirex.config import IndexConfig
    from hirex.index.build import build_index
    from hirex.index.exhaustive import exhaustive_topk
    from hirex.index.search import beam_search

    ds, _ = tiny_set_data
    cfg = ModelConfig(dim=16, use_user_id=False, spectral_rank=12, spectral_weight=2.0)
    torch.manual_seed(0)
    mol = RetrievalModel(
        dataclasses.replace(cfg, scorer="mol", mol_user_embs=2, mol_item_embs=3),
        ds.n_users,
        ds.n_items,
    )
    dot = _branch_model(ds)
    users = np.arange(40)
    learned = _scores(mol, ds.train, users)
    attach_spectral_branch(mol, ds.train)
    attach_spectral_branch(dot, ds.train)
    filt = _scores(dot, ds.train, users) - _scores_without_branch(dot, ds.train, users)
    assert dot.embedding_dim == 16 + 12
    got = _scores(mol, ds.train, users)
    assert np.allclose(got - learned, filt, atol=1e-4 * np.abs(filt).max())
    # score_pairs: the same entries.
    with torch.no_grad():
        u = mol.encode_users(UserBatch.from_interactions(ds.train, users))
        items = torch.arange(ds.n_items)
        e = mol.encode_items(items)
        rows = torch.arange(len(users)).repeat_interleave(ds.n_items)
        cols = items.repeat(len(users))
        pairs = mol.score_pairs(
            u[rows], e[cols], mol.user_side(u)[rows], mol.item_side(e)[cols]
        ).view(len(users), -1)
    assert np.allclose(pairs.numpy(), got, atol=1e-4)
    index = build_index(mol, IndexConfig(method="posthoc", levels=[4, 4]))
    beam = beam_search(mol, index, users, ds.train, 10, 16, exclude=ds.train).topk
    want = exhaustive_topk(mol, users, ds.train, 10, exclude=ds.train)
    assert np.array_equal(beam.ids.numpy(), want.ids.numpy())


def _scores_without_branch(model: RetrievalModel, history, users: np.ndarray) -> np.ndarray:
    assert model.spectral is not None
    model.spectral.fitted.fill_(False)
    try:
        return _scores(model, history, users)
    finally:
        model.spectral.fitted.fill_(True)


def test_spectral_branch_bad_configs(tiny_set_data):
    ds, _ = tiny_set_data
    bad = ModelConfig(dim=8, spectral_rank=4, user_encoder="transformer")
    with pytest.raises(ConfigError, match="pooled-history model"):
        RetrievalModel(bad, ds.n_users, ds.n_items)
    with pytest.raises(ConfigError, match="spectral_rank = 5000 must lie between 1"):
        attach_spectral_branch(_branch_model(ds, rank=5000), ds.train)
    with pytest.raises(ValueError, match="no spectral branch"):
        attach_spectral_branch(RetrievalModel(ModelConfig(dim=8), ds.n_users, ds.n_items), ds.train)
    with pytest.raises(ConfigError, match="before the spectral branch .*node_embedding"):
        apply_overrides(
            RunConfig(),
            ["model.spectral_rank=8", "index.method='joint'", "index.node_embedding='codewords'"],
        )


def test_the_linear_part_is_gf_cf_linear_filter_in_the_top_directions(tiny_set_data):
    """spectral_linear_weight adds r V diag(s^2) V^T (GF-CF's r R~^T R~ kept to the top rank
    directions) as a second block; each block matches its dense filter and its own weight."""
    ds, _ = tiny_set_data
    rank = 12
    cfg = ModelConfig(
        dim=16,
        use_user_id=False,
        spectral_rank=rank,
        spectral_weight=2.0,
        spectral_linear_weight=5.0,
        temperature=0.1,
    )
    torch.manual_seed(0)
    model = RetrievalModel(cfg, ds.n_users, ds.n_items)
    attach_spectral_branch(model, ds.train)
    assert model.embedding_dim == 16 + 2 * rank
    users = np.arange(60)
    b = model.spectral
    with torch.no_grad():
        u = b.users(UserBatch.from_interactions(ds.train, users)).numpy()
    items = b.items.numpy()
    ideal, linear = u[:, :rank] @ items[:, :rank].T, u[:, rank:] @ items[:, rank:].T
    r = ds.train.to_csr().toarray().astype(np.float64)
    du, di = r.sum(1), r.sum(0)
    norm = r / np.sqrt(np.maximum(du, 1))[:, None] / np.sqrt(np.maximum(di, 1))[None, :]
    _, s, vt = np.linalg.svd(norm, full_matrices=False)
    v, s = vt[:rank].T, s[:rank]
    pool = np.sqrt(r[users].sum(1))[:, None]
    want_linear = r[users] @ v @ np.diag(s**2) @ v.T / pool
    di_is = np.where(di > 0, np.maximum(di, 1) ** -0.5, 0.0)
    want_ideal = (r[users] * di_is) @ v @ v.T * np.sqrt(di) / pool
    for got, want, weight in ((ideal, want_ideal, 2.0), (linear, want_linear, 5.0)):
        c = (got * want).sum() / (want * want).sum()
        assert c > 0
        assert np.allclose(got, c * want, atol=2e-3 * np.abs(got).max())
        assert np.abs(got).max(1).mean() == pytest.approx(weight, rel=0.3)
    with pytest.raises(ConfigError, match="spectral_linear_weight must be >= 0"):
        apply_overrides(RunConfig(), ["model.spectral_linear_weight=1.0"])


def test_a_joint_index_learned_before_the_branch_routes_on_the_learned_dimensions(
    tiny_set_data, tmp_path
):
    """index.method = 'joint' with a spectral branch: the codebooks are learned on the learned
    dimensions while the branch is off; the built index takes its paths from them, scores nodes
    at their full-width centroids (branch included), keeps the learned user maps on the learned
    block, and over all nodes equals exhaustive scoring; it survives the run folder."""
    from hirex.index.codebooks import load_codebooks
    from hirex.index.exhaustive import exhaustive_topk, item_embeddings
    from hirex.index.files import load_index
    from hirex.index.search import beam_search
    from hirex.runs import INDEX_DIR, train_run

    ds, _ = tiny_set_data
    cfg = apply_overrides(
        RunConfig(),
        [
            "model.dim=16",
            "model.use_user_id=false",
            "model.scorer='mol'",
            "model.spectral_rank=12",
            "model.spectral_weight=2.0",
            "train.epochs=2",
            "train.batch_size=256",
            "train.num_negatives=64",
            "train.num_threads=1",
            "index.method='joint'",
            "index.start_epoch=0",
            "index.levels=[4,4]",
            "index.beam=[16]",
        ],
    )
    result, report = train_run(cfg, ds, tmp_path / "run", restart=False, progress=False)
    model, index = load_index(tmp_path / "run" / INDEX_DIR)
    assert model.embedding_dim == 16 + 12
    assert (index.assign, index.assign_dims, index.node_embedding) == ("centroids", 16, "centroids")
    learned = load_codebooks(tmp_path / "run" / "codebooks.safetensors")
    items = item_embeddings(model)
    assert torch.equal(index.codes, learned.encode(items[..., :16]))
    for small, big in zip(learned.user_maps, index.codebooks.user_maps, strict=True):
        want = torch.eye(28)
        want[:16, :16] = small.detach()
        assert torch.allclose(big.detach(), want)
    assert any(not torch.allclose(m.detach(), torch.eye(16)) for m in learned.user_maps)
    users = np.arange(60)
    got = beam_search(model, index, users, ds.train, 10, 16, exclude=ds.train).topk
    want = exhaustive_topk(model, users, ds.train, 10, exclude=ds.train)
    assert np.array_equal(got.ids.numpy(), want.ids.numpy())
    assert report["index"]["method"] == "joint"
