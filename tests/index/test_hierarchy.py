"""The index structure: paths, CSR arrays, representatives, online add/remove."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hirex.index.codebooks import ResidualCodebooks
from hirex.index.hierarchy import HierarchicalIndex


def clustered_items(n_clusters=4, per=25, dim=8, seed=0):
    """Items in well-separated clusters: level-1 nodes must recover the clusters."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, dim, generator=g) * 10
    labels = torch.arange(n_clusters).repeat_interleave(per)
    items = centres[labels] + 0.1 * torch.randn(len(labels), dim, generator=g)
    return items[:, None, :], labels


def test_kmeans_level_one_recovers_known_clusters():
    items, labels = clustered_items()
    cb = ResidualCodebooks([4, 3], 1, 8)
    cb.fit_kmeans(items, seed=0)
    index = HierarchicalIndex(cb, items)
    index.check()
    top = index.codes[:, 0].numpy()
    # Every known cluster maps to exactly one level-1 node, and vice versa.
    pairs = set(zip(labels.numpy().tolist(), top.tolist(), strict=True))
    assert len(pairs) == 4 and len({p[1] for p in pairs}) == 4


@pytest.mark.parametrize("node_embedding", HierarchicalIndex.NODE_EMBEDDINGS)
def test_csr_arrays_match_a_plain_loop(node_embedding):
    items, _ = clustered_items(n_clusters=6, per=20)
    cb = ResidualCodebooks([6, 4, 3], 1, 8)
    cb.fit_kmeans(items, seed=1)
    index = HierarchicalIndex(cb, items, node_embedding=node_embedding)
    codes = index.codes.numpy()
    # Reference: the children / members of each node computed with dicts.
    for level, lv in enumerate(index.levels):
        for node, key in enumerate(lv.keys):
            path = tuple(index._keys_to_codes(np.array([key]), level)[0])
            under = [i for i in range(index.n_items) if tuple(codes[i, : level + 1]) == path]
            assert lv.count[node] == len(under)
            flat = items.reshape(len(items), -1)
            if node_embedding == "codewords":
                emb = cb.decode(torch.tensor([path])).reshape(-1)
            else:
                emb = flat[under].mean(0)
            assert torch.allclose(lv.emb[node].reshape(-1), emb, atol=1e-5)
            d = ((flat[under] - emb) ** 2).sum(1)
            assert lv.representative[node] == under[int(d.argmin())]
            if level + 1 < len(index.levels):
                below = index.levels[level + 1]
                kids = below.keys[lv.child_ptr[node] : lv.child_ptr[node + 1]]
                assert all(k // index.sizes[level + 1] == key for k in kids)
                want = {tuple(codes[i, : level + 2]) for i in under}
                assert len(kids) == len(want)
            else:
                ptr, members = index.members
                assert sorted(members[ptr[node] : ptr[node + 1]].tolist()) == under


def test_pseudo_item_of_a_node_is_the_sum_of_its_codewords():
    items, _ = clustered_items()
    cb = ResidualCodebooks([4, 3], 1, 8)
    cb.fit_kmeans(items)
    index = HierarchicalIndex(cb, items, node_embedding="codewords")
    lv = index.levels[1]
    codes = index._keys_to_codes(lv.keys, 1)
    want = cb.codewords[0][codes[:, 0]] + cb.codewords[1][codes[:, 1]]
    assert torch.allclose(lv.emb.reshape(len(codes), -1), want)


def test_centroid_of_an_emptied_node_falls_back_to_its_codewords_and_comes_back():
    items, _ = clustered_items()
    cb = ResidualCodebooks([4, 3], 1, 8)
    cb.fit_kmeans(items)
    index = HierarchicalIndex(cb, items, node_embedding="centroids")
    leaf = index.levels[-1]
    ptr, members = index.members
    node = int(np.argmax(leaf.count))
    owned = np.sort(members[ptr[node] : ptr[node + 1]])
    path = torch.from_numpy(index._keys_to_codes(leaf.keys[node : node + 1], 1))
    assert torch.allclose(leaf.emb[node], items[owned].mean(0), atol=1e-5)
    index.remove_items(owned[1:])
    assert torch.allclose(index.levels[-1].emb[node], items[owned[0]], atol=1e-6)
    index.remove_items(owned[:1])
    assert torch.equal(index.levels[-1].emb[node], cb.decode(path)[0])
    index.add_items(items[owned[:2]], ids=owned[:2])
    assert torch.allclose(index.levels[-1].emb[node], items[owned[:2]].mean(0), atol=1e-6)
    index.check()


def test_unknown_node_embedding_is_a_clear_error():
    items, _ = clustered_items()
    cb = ResidualCodebooks([4, 3], 1, 8)
    cb.fit_kmeans(items)
    with pytest.raises(ValueError, match="node_embedding must be one of"):
        HierarchicalIndex(cb, items, node_embedding="medoids")


def test_remove_last_item_of_a_node_then_add_to_the_empty_node():
    items, _ = clustered_items()
    cb = ResidualCodebooks([4, 3], 1, 8)
    cb.fit_kmeans(items)
    index = HierarchicalIndex(cb, items)
    leaf = index.levels[-1]
    ptr, members = index.members
    node = int(np.argmin(np.where(leaf.count > 0, leaf.count, 10**9)))
    owned = members[ptr[node] : ptr[node + 1]].copy()
    key = leaf.keys[node]
    index.remove_items(owned)
    index.check()
    assert index.levels[-1].keys[node] == key  # the node stays, empty
    assert index.levels[-1].count[node] == 0 and index.levels[-1].representative[node] == -1
    assert not np.isin(owned, index.members[1]).any()
    # A new item equal to a removed one lands back on the empty node.
    new = index.add_items(items[owned[:1]] + 1e-4)
    index.check()
    assert index.levels[-1].count[node] == 1
    assert index.levels[-1].representative[node] == new[0]
    assert new[0] == items.shape[0]  # appended after the last id
    # Updating an existing id moves it; the structure stays consistent.
    index.add_items(items[:1] * 0 + items[-1:], ids=np.array([0]))
    index.check()
    assert torch.equal(index.codes[0], index.codes[len(items) - 1])


def test_bad_maintenance_inputs_are_clear_errors():
    items, _ = clustered_items()
    cb = ResidualCodebooks([4, 3], 1, 8)
    cb.fit_kmeans(items)
    index = HierarchicalIndex(cb, items)
    with pytest.raises(ValueError, match="embeddings must be"):
        index.add_items(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="repeat"):
        index.add_items(torch.zeros(2, 1, 8), ids=np.array([3, 3]))
    with pytest.raises(ValueError, match="lie in"):
        index.remove_items(np.array([10**6]))
    with pytest.raises(ValueError, match="fill an index level"):
        ResidualCodebooks([500], 1, 8).fit_kmeans(items)
    with pytest.raises(ValueError, match="levels"):
        ResidualCodebooks([1], 1, 8)


def test_stats_report_sizes_balance_and_empty_nodes():
    items, _ = clustered_items()
    cb = ResidualCodebooks([4, 3], 1, 8)
    cb.fit_kmeans(items)
    index = HierarchicalIndex(cb, items)
    index.remove_items(np.arange(25))  # empty one whole cluster
    stats = index.stats()
    assert stats["n_active"] == 75
    assert stats["levels"][0]["nodes"] == 4 and stats["levels"][0]["empty_nodes"] == 1
    assert stats["levels"][0]["items_per_node_mean"] == 25.0


def _derived(index: HierarchicalIndex) -> list[np.ndarray]:
    arrays = [*index.members]
    for lv in index.levels:
        arrays += [lv.keys, lv.count, lv.parent, lv.child_ptr, lv.representative]
    return arrays


@pytest.mark.parametrize("node_embedding", HierarchicalIndex.NODE_EMBEDDINGS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patched_arrays_after_small_changes_equal_a_full_rebuild(seed, node_embedding):
    """add_items / remove_items patch counts, members, representatives and (centroids) node
    embeddings in place when the node set does not change; the result equals rebuilding every
    array from the paths."""
    items, _ = clustered_items(n_clusters=6, per=30, seed=seed)
    cb = ResidualCodebooks([6, 4, 3], 1, 8)
    cb.fit_kmeans(items, seed=seed)
    index = HierarchicalIndex(cb, items, node_embedding=node_embedding)
    _ = index.levels  # derived arrays exist: later changes are patched, not rebuilt
    rng = np.random.default_rng(seed)
    patched = 0
    for step in range(40):
        n = index.n_items
        if step % 3 == 2:
            index.remove_items(rng.choice(n, size=int(rng.integers(1, 4)), replace=False))
        else:
            ids = rng.choice(n + 3, size=int(rng.integers(1, 4)), replace=False)
            src = items[rng.integers(len(items), size=len(ids))]
            index.add_items(src + 0.05 * torch.randn(src.shape), ids)
        patched += index._levels is not None
        fresh = HierarchicalIndex(
            cb,
            index.item_emb,
            index.codes,
            index.active,
            index.node_keys,
            node_embedding=node_embedding,
        )
        for a, b in zip(_derived(index), _derived(fresh), strict=True):
            assert np.array_equal(a, b)
        for a, b in zip(index.levels, fresh.levels, strict=True):
            assert torch.allclose(a.emb, b.emb, atol=1e-6)
        index.check()
    assert patched >= 30  # the patch path ran (a change creating a node rebuilds instead)


def test_appending_items_one_by_one_keeps_every_earlier_item():
    """Appends grow spare storage a quarter at a time; across several growths every item keeps its
    embedding, path and activity, and the arrays equal a fresh index over the same items."""
    items, _ = clustered_items(n_clusters=4, per=5)
    cb = ResidualCodebooks([4, 3], 1, 8)
    cb.fit_kmeans(items, seed=0)
    index = HierarchicalIndex(cb, items.clone())
    _ = index.levels
    added = items[torch.randint(len(items), (300,))] + 0.01 * torch.randn(300, 1, 8)
    for i in range(300):
        assert index.add_items(added[i : i + 1]).tolist() == [20 + i]
    index.remove_items(np.array([3, 150]))
    assert index.n_items == 320 and index.n_active == 318
    assert torch.equal(index.item_emb, torch.cat([items, added]))
    fresh = HierarchicalIndex(cb, torch.cat([items, added]), None, index.active, index.node_keys)
    assert torch.equal(fresh.codes, index.codes)
    for a, b in zip(_derived(index), _derived(fresh), strict=True):
        assert np.array_equal(a, b)


def test_patch_records_are_kept_only_while_a_cached_state_needs_them():
    """Without values in cached_state, live changes keep no per-change records (a service
    changing items for days must not grow them); with one, records go once it is current."""
    items, _ = clustered_items(n_clusters=4, per=25)
    cb = ResidualCodebooks([4, 3], 1, 8)
    cb.fit_kmeans(items, seed=0)
    index = HierarchicalIndex(cb, items.clone())
    _ = index.levels
    for i in range(20):
        index.add_items(items[i : i + 1] * 1.001, ids=np.array([i]))
    assert index._patched == {}
    seen = []
    index.cached_state("n", lambda: 0, lambda value, touched: seen.append(touched))
    for i in range(5):
        index.add_items(items[i : i + 1] * 1.002, ids=np.array([i]))
    assert len(index._patched) == 5
    index.cached_state("n", lambda: 0, lambda value, touched: seen.append(touched))
    assert len(seen) == 1 and index._patched == {}
