"""Hierarchical k-means paths and the centroid-descent assignment of new items."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from hirex.config import IndexConfig, ModelConfig
from hirex.index.build import build_index
from hirex.index.exhaustive import exhaustive_topk
from hirex.index.files import load_index, save_index
from hirex.index.hierarchical_kmeans import fit_hierarchical_kmeans
from hirex.index.hierarchy import HierarchicalIndex
from hirex.index.search import beam_search
from hirex.models.retrieval_model import RetrievalModel


def nested_items(seed=0):
    """4 far-apart clusters of 3 sub-clusters of 15 items each: (180, 1, 8), labels."""
    g = torch.Generator().manual_seed(seed)
    top = torch.randn(4, 8, generator=g) * 30
    sub = top[:, None, :] + torch.randn(4, 3, 8, generator=g) * 3
    labels = torch.arange(12).repeat_interleave(15)
    items = sub.reshape(12, 8)[labels] + 0.1 * torch.randn(180, 8, generator=g)
    return items[:, None, :], labels.numpy()


def test_levels_recover_the_known_clusters_and_subclusters():
    items, labels = nested_items()
    cb, codes = fit_hierarchical_kmeans(items, [4, 3], seed=0)
    index = HierarchicalIndex(cb, items, codes, assign="centroids")
    index.check()
    top, leaf = index.item_keys(0), index.item_keys(1)
    # Each cluster is one level-1 node, each sub-cluster one leaf, and no node mixes them.
    assert len(set(zip(labels // 3, top, strict=True))) == 4 == len(set(top))
    assert len(set(zip(labels, leaf, strict=True))) == 12 == len(set(leaf))
    # Nodes sit at their items' centroids.
    lv = index.levels[1]
    for node, key in enumerate(lv.keys):
        assert torch.allclose(lv.emb[node], items[leaf == key].mean(0), atol=1e-5)


def test_new_items_descend_to_the_nearest_centroids_and_patch_like_a_rebuild():
    items, labels = nested_items(seed=1)
    cb, codes = fit_hierarchical_kmeans(items, [4, 3], seed=1)
    index = HierarchicalIndex(cb, items, codes, assign="centroids")
    _ = index.levels
    rng = np.random.default_rng(0)
    src = rng.choice(len(items), 20, replace=False)
    new = index.add_items(items[src] + 0.05 * torch.randn(20, 1, 8))
    assert np.array_equal(index.item_keys(1, new), index.item_keys(1, src))
    assert index._levels is not None  # patched: descent never creates a node
    # Updates and removals, then the patched arrays equal a fresh index over the same paths.
    index.add_items(items[src[:5]] * 1.001, ids=new[:5])
    index.remove_items(src[5:10])
    fresh = HierarchicalIndex(
        cb, index.item_emb, index.codes, index.active, index.node_keys, assign="centroids"
    )
    for a, b in zip(index.levels, fresh.levels, strict=True):
        assert np.array_equal(a.count, b.count)
        assert np.array_equal(a.representative, b.representative)
        assert torch.allclose(a.emb, b.emb, atol=1e-6)
    index.check()
    # A node emptied entirely is skipped: its items' copies go to the nearest non-empty leaf.
    leaf = index.item_keys(1)
    gone = np.flatnonzero(index.active)[leaf == leaf[0]]
    index.remove_items(gone)
    back = index.add_items(items[gone[:1]])
    assert index.item_keys(1, back)[0] != leaf[0]
    index.check()


def test_search_through_a_hierarchical_index_keeping_every_node_is_exhaustive(tiny_set_data):
    ds, _ = tiny_set_data
    torch.manual_seed(0)
    model = RetrievalModel(
        ModelConfig(dim=16, scorer="mol", init_std=0.1), ds.n_users, ds.n_items
    ).eval()
    cfg = dataclasses.replace(IndexConfig(), method="posthoc", kmeans="hierarchical", levels=(6, 4))
    index = build_index(model, cfg)
    assert index.assign == "centroids"
    users = np.arange(ds.n_users)
    hist = ds.history("test")
    got = beam_search(model, index, users, hist, 20, 10**6, exclude=hist)
    want = exhaustive_topk(model, users, hist, 20, exclude=hist, items=index.item_emb)
    assert torch.equal(got.topk.ids, want.ids)


def test_assign_travels_with_the_index_file(tiny_set_data, tmp_path):
    ds, _ = tiny_set_data
    model = RetrievalModel(ModelConfig(dim=8, scorer="dot"), ds.n_users, ds.n_items).eval()
    cfg = dataclasses.replace(IndexConfig(), method="posthoc", kmeans="hierarchical", levels=(5, 4))
    index = build_index(model, cfg)
    save_index(tmp_path / "ix", index, model)
    _, loaded = load_index(tmp_path / "ix")
    assert loaded.assign == "centroids"
    probe = index.item_emb[:7] + 0.01
    assert torch.equal(loaded.paths_for(probe), index.paths_for(probe))


def test_bad_combinations_are_clear_errors(tiny_set_data):
    items, _ = nested_items()
    cb, codes = fit_hierarchical_kmeans(items, [4, 3])
    with pytest.raises(ValueError, match="needs node_embedding='centroids'"):
        HierarchicalIndex(cb, items, codes, node_embedding="codewords", assign="centroids")
    with pytest.raises(ValueError, match="and the items' codes"):
        HierarchicalIndex(cb, items, assign="centroids")
    with pytest.raises(ValueError, match="assign must be one of"):
        HierarchicalIndex(cb, items, codes, assign="nearest")
    with pytest.raises(ValueError, match="cannot fill an index level"):
        fit_hierarchical_kmeans(items[:3], [4, 3])
    ds, _ = tiny_set_data
    model = RetrievalModel(ModelConfig(dim=8, scorer="dot"), ds.n_users, ds.n_items).eval()
    for method in ("joint", "em"):
        cfg = dataclasses.replace(IndexConfig(), method=method, kmeans="hierarchical")
        with pytest.raises(ValueError, match="is a posthoc index"):
            build_index(model, cfg, codebooks=cb)
    cfg = dataclasses.replace(
        IndexConfig(), method="posthoc", kmeans="hierarchical", node_embedding="codewords"
    )
    with pytest.raises(ValueError, match="scores nodes at their centroids"):
        build_index(model, cfg)
    index = HierarchicalIndex(cb, items, codes, assign="centroids")
    index.remove_items(np.arange(len(items)))
    before = index.item_emb.clone()
    with pytest.raises(ValueError, match="no non-empty node"):
        index.add_items(items[:1] + 1.0, ids=np.array([0]))
    with pytest.raises(ValueError, match="no non-empty node"):
        index.add_items(items[:1])
    assert torch.equal(index.item_emb, before) and index.n_items == len(items)  # nothing changed


@pytest.mark.parametrize("scorer", ["dot", "mol"])
def test_kmeans_on_learned_partitions_without_the_spectral_branch(
    tiny_set_data, scorer, tmp_path, caplog
):
    from hirex.models.spectral import attach_spectral_branch

    ds, _ = tiny_set_data
    torch.manual_seed(0)
    mcfg = ModelConfig(
        dim=16, use_user_id=False, scorer=scorer, spectral_rank=12, spectral_weight=2.0
    )
    model = RetrievalModel(mcfg, ds.n_users, ds.n_items).eval()
    attach_spectral_branch(model, ds.train)
    cfg = dataclasses.replace(
        IndexConfig(), method="posthoc", kmeans="hierarchical", levels=(6, 4), kmeans_on="learned"
    )
    with caplog.at_level(logging.WARNING, logger="hirex.index.build"):
        index = build_index(model, cfg, seed=0)
    assert "routes badly" not in caplog.text
    items = index.item_emb
    assert items.shape[-1] == 16 + 12
    # The paths are hierarchical k-means of the learned dimensions alone ...
    _, want_codes = fit_hierarchical_kmeans(items[..., :16], (6, 4), seed=0)
    assert torch.equal(index.codes, want_codes)
    with caplog.at_level(logging.WARNING, logger="hirex.index.build"):
        everything = build_index(model, dataclasses.replace(cfg, kmeans_on="all"), seed=0)
    assert not torch.equal(everything.codes, want_codes)
    # Over all dimensions of a branch model the user is told what to set instead.
    assert "--kmeans hierarchical --kmeans-on learned" in caplog.text
    # ... while the nodes sit at the centroids of the full embeddings, branch included.
    top = index.item_keys(0)
    for node, key in enumerate(index.levels[0].keys):
        assert torch.allclose(index.levels[0].emb[node], items[top == key].mean(0), atol=1e-5)
    users = np.arange(ds.n_users)
    hist = ds.history("test")
    got = beam_search(model, index, users, hist, 20, 10**6, exclude=hist)
    want = exhaustive_topk(model, users, hist, 20, exclude=hist, items=items)
    assert torch.equal(got.topk.ids, want.ids)
    # New items descend by the learned dimensions too, to where their sources are, and the
    # rule travels with the index file.
    assert index.assign_dims == 16
    # Over all dimensions the same items can land elsewhere: the rule matters.
    full = HierarchicalIndex(index.codebooks, items, index.codes, assign="centroids")
    assert not torch.equal(full.paths_for(items), index.paths_for(items))
    new = index.add_items(items[:30] * 1.001)
    assert np.array_equal(index.item_keys(1, new), index.item_keys(1, np.arange(30)))
    index.check()
    save_index(tmp_path / "ix", index, model)
    _, loaded = load_index(tmp_path / "ix")
    assert loaded.assign_dims == 16
    probe = items[40:60] + 0.01
    assert torch.equal(loaded.paths_for(probe), index.paths_for(probe))


def test_kmeans_on_learned_needs_hierarchical_posthoc(tiny_set_data):
    from hirex.config import ConfigError, RunConfig, apply_overrides

    ds, _ = tiny_set_data
    model = RetrievalModel(ModelConfig(dim=8, scorer="dot"), ds.n_users, ds.n_items).eval()
    cfg = dataclasses.replace(IndexConfig(), method="posthoc", kmeans_on="learned")
    with pytest.raises(ValueError, match="set index.kmeans = 'hierarchical'"):
        build_index(model, cfg)
    with pytest.raises(ConfigError, match="kmeans_on = 'learned' is for index.method"):
        apply_overrides(RunConfig(), ["index.kmeans_on='learned'"])
    items, _ = nested_items()
    cb, codes = fit_hierarchical_kmeans(items, [4, 3])
    with pytest.raises(ValueError, match="assign_dims=9 needs assign='centroids' and 1 to 8"):
        HierarchicalIndex(cb, items, codes, assign="centroids", assign_dims=9)
    with pytest.raises(ValueError, match="assign_dims=4 needs assign='centroids'"):
        HierarchicalIndex(cb, items, codes, assign_dims=4)
