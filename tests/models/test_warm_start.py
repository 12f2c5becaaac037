"""Warm start (train.init_from): a dot model grows into a MoL model that starts at its scores."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hirex.config import ConfigError, ModelConfig, RunConfig, apply_overrides
from hirex.eval.protocols import evaluate
from hirex.models import warm_start
from hirex.models.retrieval_model import RetrievalModel
from hirex.models.user_batch import UserBatch
from hirex.models.warm_start import warm_start_state
from hirex.train.trainer import train_model

DOT = ModelConfig(dim=16, use_user_id=False, history_projection=True)
MOL = dataclasses.replace(DOT, scorer="mol", mol_user_embs=2, mol_item_embs=3)


def _trained_dot(ds, path) -> RetrievalModel:
    torch.manual_seed(0)
    model = RetrievalModel(DOT, ds.n_users, ds.n_items)
    with torch.no_grad():  # not the init: a projection that is not the identity
        model.user_tower.proj.weight.add_(0.1 * torch.randn_like(model.user_tower.proj.weight))
    model.save(path)
    return model


def _scores(model: RetrievalModel, ds, users: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.score(
            model.encode_users(UserBatch.from_interactions(ds.train, users)), model.encode_items()
        ).numpy()


def test_a_mixture_grown_from_a_dot_model_starts_at_its_scores(
    tiny_set_data, tmp_path, monkeypatch
):
    ds, _ = tiny_set_data
    dot = _trained_dot(ds, tmp_path / "dot.safetensors")
    mol = RetrievalModel(MOL, ds.n_users, ds.n_items)
    users = np.arange(50)
    want = _scores(dot, ds, users)
    # Without the noise, every component is the dot model's: the mixture is its score exactly.
    monkeypatch.setattr(warm_start, "NOISE", 0.0)
    mol.load_state_dict(warm_start_state(tmp_path / "dot.safetensors", mol))
    assert np.allclose(_scores(mol, ds, users), want, atol=1e-4)
    # With it, the first copy is the source exactly and the others are 1% away.
    monkeypatch.undo()
    state = warm_start_state(tmp_path / "dot.safetensors", mol, seed=1)
    items = state["item_tower.id_emb.weight"].view(ds.n_items, 3, 16)
    source = dot.item_tower.id_emb.weight.detach()
    assert torch.equal(items[:, 0], source)
    rel = ((items[:, 1] - source).norm() / source.norm()).item()
    assert 0.005 < rel < 0.02
    assert not torch.equal(items[:, 1], items[:, 2])
    mol.load_state_dict(state)
    got = _scores(mol, ds, users)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_the_same_architecture_is_copied_as_it_is(tiny_set_data, tmp_path):
    ds, _ = tiny_set_data
    torch.manual_seed(2)
    a = RetrievalModel(MOL, ds.n_users, ds.n_items)
    a.save(tmp_path / "a.safetensors")
    b = RetrievalModel(MOL, ds.n_users, ds.n_items)
    state = warm_start_state(tmp_path / "a.safetensors", b)
    for name, value in a.state_dict().items():
        assert torch.equal(state[name], value), name


def test_models_that_do_not_fit_are_refused(tiny_set_data, tmp_path):
    ds, _ = tiny_set_data
    _trained_dot(ds, tmp_path / "dot.safetensors")
    with pytest.raises(ConfigError, match=r"train.init_from: .*300 items.*301"):
        warm_start_state(tmp_path / "dot.safetensors", RetrievalModel(MOL, ds.n_users, 301))
    wide = RetrievalModel(dataclasses.replace(MOL, dim=24), ds.n_users, ds.n_items)
    with pytest.raises(ConfigError, match=r"'item_tower.id_emb.weight' has shape \[300, 16\]"):
        warm_start_state(tmp_path / "dot.safetensors", wide)
    ids = RetrievalModel(dataclasses.replace(MOL, use_user_id=True), ds.n_users, ds.n_items)
    warm_start_state(tmp_path / "dot.safetensors", ids)  # extra tensors keep their init
    no_ids = dataclasses.replace(DOT, use_user_id=True)
    RetrievalModel(no_ids, ds.n_users, ds.n_items).save(tmp_path / "ids.safetensors")
    with pytest.raises(ConfigError, match="'user_tower.id_emb.weight' this model lacks"):
        warm_start_state(tmp_path / "ids.safetensors", RetrievalModel(MOL, ds.n_users, ds.n_items))
    with pytest.raises(ConfigError, match="train.init_from: .*missing"):
        warm_start_state(tmp_path / "missing.safetensors", wide)
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="train.init_from: .*junk.safetensors"):
        warm_start_state(tmp_path / "junk.safetensors", wide)
    with pytest.raises(ConfigError, match="choose one"):
        apply_overrides(RunConfig(), ["train.init_from='x'", "model.init='spectral'"])


def test_training_from_a_dot_run_starts_at_its_quality(tiny_set_data, tmp_path):
    """A run with init_from starts from the dot model: after an epoch at a tiny learning rate it
    is as good on validation as the dot model, far better than the same run from random."""
    ds, _ = tiny_set_data
    fast = [
        "train.batch_size=256",
        "train.num_threads=1",
        "model.dim=16",
        "model.use_user_id=false",
        "model.history_projection=true",
        "train.num_negatives=64",
        "train.lr=0.01",
    ]
    dot = train_model(
        apply_overrides(RunConfig(), [*fast, "train.epochs=4"]),
        ds,
        tmp_path / "dot",
        progress=False,
    )
    dot_valid = evaluate(dot.model, ds, "valid").metrics["recall@20"]
    grown = [
        *fast,
        "train.epochs=1",
        "train.lr=1e-7",
        "model.scorer='mol'",
        f"train.init_from='{tmp_path / 'dot' / 'model.safetensors'}'",
    ]
    mol = train_model(apply_overrides(RunConfig(), grown), ds, tmp_path / "mol", progress=False)
    cold = train_model(
        apply_overrides(RunConfig(), [g for g in grown if "init_from" not in g]),
        ds,
        progress=False,
    )
    mol_valid = mol.best_valid["recall@20"]
    assert mol_valid == pytest.approx(dot_valid, abs=0.01)
    assert cold.best_valid["recall@20"] < dot_valid - 0.05


SASREC = ModelConfig(
    dim=16,
    user_encoder="transformer",
    use_user_id=False,
    max_history=10,
    n_layers=1,
    n_heads=1,
    dropout=0.0,
    share_item_embedding=True,
)


def test_a_tied_transformer_grows_into_a_mixture_that_reads_the_same_histories(
    tiny_sequence_data, tmp_path, monkeypatch
):
    """SASRec ties its input embeddings to the item embeddings; the mixture cannot, so its input
    table starts as the source's item embeddings (not at random) and the scores match."""
    ds, _ = tiny_sequence_data
    torch.manual_seed(3)
    dot = RetrievalModel(SASREC, ds.n_users, ds.n_items).eval()
    dot.save(tmp_path / "sasrec.safetensors")
    mol_cfg = dataclasses.replace(
        SASREC, scorer="mol", mol_user_embs=2, mol_item_embs=2, share_item_embedding=False
    )
    mol = RetrievalModel(mol_cfg, ds.n_users, ds.n_items)
    monkeypatch.setattr(warm_start, "NOISE", 0.0)
    state = warm_start_state(tmp_path / "sasrec.safetensors", mol)
    source = dot.item_tower.id_emb.weight.detach()
    assert torch.equal(state["user_tower.history.emb.weight"], source)
    mol.load_state_dict(state)
    mol.eval()
    users = np.arange(40)
    assert np.allclose(_scores(mol, ds, users), _scores(dot, ds, users), atol=1e-4)
    # A tied source into a tied model of the same shape is a plain copy.
    twin = RetrievalModel(SASREC, ds.n_users, ds.n_items)
    for name, value in warm_start_state(tmp_path / "sasrec.safetensors", twin).items():
        assert torch.equal(value, dot.state_dict()[name]), name
