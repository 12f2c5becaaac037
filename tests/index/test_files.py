"""Index files: round trip, and every kind of damage gives a clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hirex.config import ModelConfig
from hirex.index import files
from hirex.index.codebooks import ResidualCodebooks, load_codebooks, save_codebooks
from hirex.index.exhaustive import item_embeddings
from hirex.index.files import load_index, save_index
from hirex.index.hierarchy import HierarchicalIndex
from hirex.index.search import beam_search


@pytest.fixture()
def built(tiny_set_data):
    from hirex.models.retrieval_model import RetrievalModel

    ds, _ = tiny_set_data
    torch.manual_seed(0)
    model = RetrievalModel(ModelConfig(dim=8, scorer="mol", init_std=0.1), ds.n_users, ds.n_items)
    items = item_embeddings(model)
    cb = ResidualCodebooks([5, 4], items.shape[1], items.shape[2])
    cb.fit_kmeans(items)
    index = HierarchicalIndex(cb, items)
    index.remove_items(np.arange(10))
    return ds, model.eval(), index


def test_round_trip_gives_the_same_search(built, tmp_path):
    ds, model, index = built
    save_index(tmp_path / "ix", index, model, info={"method": "posthoc"})
    model2, index2 = load_index(tmp_path / "ix")
    assert np.array_equal(index2.active, index.active)
    assert torch.equal(index2.codes, index.codes)
    for a, b in zip(index.node_keys, index2.node_keys, strict=True):
        assert np.array_equal(a, b)
    users = np.arange(40)
    a = beam_search(model, index, users, ds.train, 10, 2, exclude=ds.train)
    b = beam_search(model2, index2, users, ds.train, 10, 2, exclude=ds.train)
    assert torch.equal(a.topk.ids, b.topk.ids)
    assert files.read_manifest(tmp_path / "ix")["info"] == {"method": "posthoc"}
    # Saving again replaces the folder; nothing temporary is left beside it.
    save_index(tmp_path / "ix", index, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]


@pytest.mark.parametrize("node_embedding", HierarchicalIndex.NODE_EMBEDDINGS)
def test_node_embedding_travels_with_the_index(built, tmp_path, node_embedding):
    ds, model, index = built
    index = index.with_node_embedding(node_embedding)
    assert index.node_embedding == node_embedding
    save_index(tmp_path / "ix", index, model)
    _, loaded = load_index(tmp_path / "ix")
    assert loaded.node_embedding == node_embedding
    for a, b in zip(index.levels, loaded.levels, strict=True):
        assert torch.equal(a.emb, b.emb)
    # A manifest from before the choice existed (no entry) means codeword sums.
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    del manifest["node_embedding"]
    (tmp_path / "ix" / "manifest.json").write_text(json.dumps(manifest))
    assert load_index(tmp_path / "ix")[1].node_embedding == "codewords"
    manifest["node_embedding"] = "medoids"
    (tmp_path / "ix" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="node_embedding 'medoids' is not one of"):
        load_index(tmp_path / "ix")


def test_codebooks_round_trip(built, tmp_path):
    _, _, index = built
    save_codebooks(index.codebooks, tmp_path / "cb.safetensors")
    cb = load_codebooks(tmp_path / "cb.safetensors")
    for a, b in zip(cb.codewords, index.codebooks.codewords, strict=True):
        assert torch.equal(a, b)


def damage(path, how):
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "corrupted":
        data = bytearray(path.read_bytes())
        data[-5] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", [files.TENSORS_FILE, files.MODEL_FILE])
@pytest.mark.parametrize("how", ["truncated", "corrupted"])
def test_damaged_files_are_refused(built, tmp_path, name, how):
    ds, model, index = built
    save_index(tmp_path / "ix", index, model)
    damage(tmp_path / "ix" / name, how)
    with pytest.raises(ValueError, match="truncated|checksum"):
        load_index(tmp_path / "ix")


def test_tampered_manifest_wrong_version_and_missing_parts(built, tmp_path):
    ds, model, index = built
    ix = tmp_path / "ix"
    save_index(ix, index, model)
    manifest = json.loads((ix / "manifest.json").read_text())

    bad = dict(manifest, version=99)
    (ix / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="version 99.*Rebuild"):
        load_index(ix)

    bad = json.loads(json.dumps(manifest))
    bad["tensors"]["codes"]["shape"] = [1, 2]
    (ix / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="tensor codes does not match"):
        load_index(ix)

    bad = json.loads(json.dumps(manifest))
    bad["levels"] = [7, 4]
    (ix / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="codebooks do not match"):
        load_index(ix)

    (ix / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_index(ix)

    (ix / "manifest.json").unlink()
    with pytest.raises(ValueError, match="no manifest.json"):
        load_index(ix)
    with pytest.raises(FileNotFoundError, match="not an index folder"):
        load_index(tmp_path / "nowhere")


def test_refuses_to_overwrite_a_folder_that_is_not_an_index(built, tmp_path):
    ds, model, index = built
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a hirex index"):
        save_index(tmp_path / "mine", index, model)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_crash_while_writing_leaves_the_old_index_intact(built, tmp_path, monkeypatch):
    ds, model, index = built
    save_index(tmp_path / "ix", index, model)
    before = (tmp_path / "ix" / files.TENSORS_FILE).read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    import hirex.manifest

    monkeypatch.setattr(hirex.manifest, "atomic_write_json", boom)
    index.remove_items(np.arange(10, 50))
    with pytest.raises(OSError, match="disk full"):
        save_index(tmp_path / "ix", index, model)
    monkeypatch.undo()
    assert (tmp_path / "ix" / files.TENSORS_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]
    _, loaded = load_index(tmp_path / "ix")
    assert loaded.n_active == index.n_items - 10
