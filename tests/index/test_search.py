"""Beam search against exhaustive scoring, the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hirex.config import ModelConfig
from hirex.index.codebooks import ResidualCodebooks
from hirex.index.exhaustive import exhaustive_topk, item_embeddings
from hirex.index.hierarchy import HierarchicalIndex
from hirex.index.search import beam_search, parse_beam
from hirex.models.retrieval_model import RetrievalModel


def model_and_index(data, scorer, levels=(6, 4, 3), seed=0):
    ds, _ = data
    torch.manual_seed(seed)
    cfg = ModelConfig(dim=16, scorer=scorer, init_std=0.1, mol_item_embs=2, mol_user_embs=3)
    model = RetrievalModel(cfg, ds.n_users, ds.n_items).eval()
    items = item_embeddings(model)
    cb = ResidualCodebooks(levels, items.shape[1], items.shape[2])
    cb.fit_kmeans(items, seed=seed)
    # Non-identity user maps: the level scorers differ from the item scorer.
    with torch.no_grad():
        for w in cb.user_maps:
            w.add_(0.3 * torch.randn_like(w))
    return ds, model, HierarchicalIndex(cb, items)


@pytest.mark.parametrize("scorer", ["dot", "mol"])
def test_score_pairs_equals_the_full_score_matrix(tiny_set_data, scorer):
    ds, model, index = model_and_index(tiny_set_data, scorer)
    from hirex.models.user_batch import UserBatch

    u = model.encode_users(UserBatch.from_interactions(ds.train, np.arange(5)))
    rows = torch.randint(0, 5, (40,))
    ids = torch.randint(0, ds.n_items, (40,))
    full = model.score(u, index.item_emb)
    plain = model.score_pairs(u[rows], index.item_emb[ids])
    u_side, i_side = model.user_side(u), model.item_side(index.item_emb)
    shared = model.score_pairs(
        u[rows],
        index.item_emb[ids],
        None if u_side is None else u_side[rows],
        None if i_side is None else i_side[ids],
    )
    assert torch.allclose(plain, full[rows, ids], atol=1e-5)
    assert torch.allclose(shared, full[rows, ids], atol=1e-5)


@pytest.mark.parametrize("scorer", ["dot", "mol"])
@pytest.mark.parametrize("seed", [0, 1])
def test_beam_keeping_every_node_is_exactly_exhaustive(tiny_set_data, scorer, seed):
    ds, model, index = model_and_index(tiny_set_data, scorer, seed=seed)
    users = np.arange(ds.n_users)
    hist = ds.history("test")
    got = beam_search(model, index, users, hist, 20, 10**6, exclude=hist, user_batch=97)
    want = exhaustive_topk(model, users, hist, 20, exclude=hist, items=index.item_emb)
    assert torch.equal(got.topk.ids, want.ids)
    assert torch.allclose(got.topk.scores, want.scores, atol=1e-5)
    # With every node kept, every eligible item was scored and every node visited.
    n_nodes = sum(len(lv.keys) for lv in index.levels)
    assert np.all(got.nodes_scored == n_nodes)
    assert np.array_equal(got.items_scored, ds.n_items - hist.lengths()[users])


@pytest.mark.parametrize("scorer", ["dot", "mol"])
def test_results_never_hold_excluded_or_removed_items(tiny_set_data, scorer):
    ds, model, index = model_and_index(tiny_set_data, scorer)
    rng = np.random.default_rng(0)
    removed = rng.choice(ds.n_items, 100, replace=False)
    index.remove_items(removed)
    users = np.arange(ds.n_users)
    hist = ds.history("test")
    for beam in [1, 3, (2, 4, 8), 10**6]:
        got = beam_search(model, index, users, hist, 30, beam, exclude=hist)
        ids = got.topk.ids.numpy()
        assert not np.isin(ids, removed).any()
        for row, u in enumerate(users):
            assert not np.isin(ids[row], hist.user_items(u)).any()
            real = ids[row][ids[row] >= 0]
            assert len(set(real.tolist())) == len(real)
        # Padding sits at the end and comes with -inf scores.
        assert torch.all(torch.isinf(got.topk.scores) == (got.topk.ids < 0))
    # Exactness still holds over the remaining items.
    got = beam_search(model, index, users, hist, 30, 10**6, exclude=hist)
    keep = np.setdiff1d(np.arange(ds.n_items), removed)
    extra = [removed] * len(users)
    want = exhaustive_topk(
        model, users, hist, 30, exclude=hist, exclude_ids=extra, items=index.item_emb
    )
    assert torch.equal(got.topk.ids, want.ids)
    assert len(keep) == index.n_active


def test_narrow_beam_scores_fewer_items_and_costs_add_up(tiny_set_data):
    ds, model, index = model_and_index(tiny_set_data, "dot")
    users = np.arange(50)
    narrow = beam_search(model, index, users, ds.train, 10, 1)
    wide = beam_search(model, index, users, ds.train, 10, (3, 3, 3))
    assert narrow.items_scored.max() < wide.items_scored.max() <= ds.n_items
    # Beam 1: one level-1 node's children, one level-2 node's children, one leaf's members.
    leaf_max = index.levels[-1].count.max()
    assert narrow.items_scored.max() <= leaf_max
    assert np.all(narrow.nodes_scored <= 6 + 4 + 3)


def test_new_item_is_found_through_the_index(tiny_set_data):
    """An item added without retraining comes back for a user it fits best."""
    ds, model, index = model_and_index(tiny_set_data, "dot")
    from hirex.models.user_batch import UserBatch

    u = model.encode_users(UserBatch.from_interactions(ds.train, np.array([0])))
    new = index.add_items(u[:, :, :].detach() * 100)  # scores far above any existing item
    got = beam_search(model, index, np.array([0]), ds.train, 5, 2)
    assert got.topk.ids[0, 0].item() == new[0]


def test_parse_beam_and_bad_arguments(tiny_set_data):
    assert parse_beam(4, 3) == (4, 4, 4)
    assert parse_beam("2,3,4", 3) == (2, 3, 4)
    assert parse_beam([5], 2) == (5, 5)
    for bad in ["2,x", "1,2", 0, (1, 2, 3, 4)]:
        with pytest.raises(ValueError, match="beam"):
            parse_beam(bad, 3)
    ds, model, index = model_and_index(tiny_set_data, "dot")
    with pytest.raises(ValueError, match="k must be positive"):
        beam_search(model, index, np.arange(3), ds.train, 0, 2)


def test_cached_gate_work_follows_weight_updates(tiny_set_data):
    """Training the model in place after a search must not leave stale per-item gate terms."""
    ds, model, index = model_and_index(tiny_set_data, "mol")
    users = np.arange(30)
    beam_search(model, index, users, ds.train, 10, 10**6)
    with torch.no_grad():
        for p in model.scorer.item_gate.parameters():
            p.add_(0.5)
    got = beam_search(model, index, users, ds.train, 10, 10**6)
    want = exhaustive_topk(model, users, ds.train, 10, items=index.item_emb)
    assert torch.allclose(got.topk.scores, want.scores, atol=1e-5)


@pytest.mark.parametrize("scorer", ["dot", "mol"])
def test_per_row_exclusions_for_ad_hoc_users_match_exhaustive(tiny_set_data, scorer):
    """Ad-hoc users (a UserBatch without ids) get their exclusions per row; a beam over every
    node returns what exhaustive scoring with the same per-row exclusions returns."""
    from hirex.models.user_batch import UserBatch

    ds, model, index = model_and_index(tiny_set_data, scorer)
    hist = ds.history("test")
    users = np.arange(0, 60, 3)
    rows = [hist.items[hist.indptr[u] : hist.indptr[u + 1]] for u in users]
    batch = UserBatch.from_histories([r.tolist() for r in rows])
    extra = [np.concatenate([r, [int(u) % ds.n_items]]) for r, u in zip(rows, users, strict=True)]
    got = beam_search(model, index, batch, None, 15, 10**6, exclude_ids=extra, user_batch=7)
    want = exhaustive_topk(model, batch, None, 15, exclude_ids=extra, items=index.item_emb)
    assert torch.equal(got.topk.ids, want.ids)
    for ids, banned in zip(got.topk.ids.numpy(), extra, strict=True):
        assert not set(ids[ids >= 0].tolist()) & set(banned.tolist())
    # Users by id with exclude=history == the same users as a ready batch with per-row excludes.
    ready = UserBatch(torch.from_numpy(users), batch.hist_indptr, batch.hist_items)
    same = beam_search(model, index, ready, None, 15, 4, exclude_ids=rows)
    by_id = beam_search(model, index, users, hist, 15, 4, exclude=hist)
    assert torch.equal(same.topk.ids, by_id.topk.ids)
    with pytest.raises(ValueError, match="one array per user"):
        beam_search(model, index, batch, None, 5, 4, exclude_ids=extra[:3])


def test_cached_item_gate_rows_follow_added_and_updated_items(tiny_set_data):
    """The scorer's per-item gate work is kept row by row: after add_items (new ids and updated
    ones) it equals a fresh computation, and search through the index still equals exhaustive."""
    ds, model, index = model_and_index(tiny_set_data, "mol")
    hist = ds.history("test")
    users = np.arange(40)
    beam_search(model, index, users, hist, 10, 4)  # fills the cache
    torch.manual_seed(3)
    new = 0.2 * torch.randn(5, *index.item_emb.shape[1:])
    index.add_items(new[:3], np.array([3, 7, ds.n_items + 2]))  # two updates, one new slot
    index.add_items(new[3:])
    from hirex.index.search import _scorer_key

    def recompute(_):  # noqa: ANN001, ANN202
        raise AssertionError("the rows were recomputed instead of kept up to date")

    held = index.cached_rows("item_side", _scorer_key(model), recompute)
    assert held.shape[0] == index.n_items == ds.n_items + 5  # two gap slots stay inactive
    act = torch.from_numpy(index.active)
    assert torch.allclose(held[act], model.item_side(index.item_emb)[act], atol=1e-6)
    full = beam_search(model, index, users, hist, 10, 10**6, exclude=hist)
    want = exhaustive_topk(model, users, hist, 10, exclude=hist, items=index.item_emb)
    assert torch.equal(full.topk.ids, want.ids)


def _same_search(a, b):
    assert torch.equal(a.topk.ids, b.topk.ids)
    assert torch.allclose(a.topk.scores, b.topk.scores, atol=1e-5)
    assert np.array_equal(a.nodes_scored, b.nodes_scored)
    assert np.array_equal(a.items_scored, b.items_scored)


@pytest.mark.parametrize("seed, levels", [(0, (6, 4, 3)), (1, (6, 4, 3)), (0, (9,))])
def test_faiss_scan_equals_the_torch_scan(tiny_set_data, seed, levels):
    """The dot-product fast path (faiss inverted lists over the index) keeps the same nodes,
    returns the same items with the model's scores and counts the same cost, at narrow and
    wide beams, with exclusions, removed items, an emptied leaf and more k than candidates."""
    ds, model, index = model_and_index(tiny_set_data, "dot", levels=levels, seed=seed)
    users = np.arange(ds.n_users)
    hist = ds.history("test")
    rng = np.random.default_rng(seed)
    leaf = index.levels[-1]
    ptr, members = index.members
    emptied = int(np.argmax(leaf.count))
    index.remove_items(
        np.concatenate(
            [members[ptr[emptied] : ptr[emptied + 1]], rng.choice(ds.n_items, 30, replace=False)]
        )
    )
    extra = [rng.choice(ds.n_items, int(rng.integers(0, 5))) for _ in users]
    per_level = [((2, 3, 5), 10), ((6, 1, 2), 40)] if len(levels) == 3 else []
    for beam, k in [(1, 5), (2, 20), *per_level, (10**6, 20)]:
        kw = dict(exclude=hist, exclude_ids=extra, user_batch=97)
        fast = beam_search(model, index, users, hist, k, beam, scan="faiss", **kw)
        ref = beam_search(model, index, users, hist, k, beam, scan="torch", **kw)
        _same_search(fast, ref)
    # After a change the lists are rebuilt: the added item is found by both scans.
    from hirex.models.user_batch import UserBatch

    u = model.encode_users(UserBatch.from_interactions(ds.train, np.array([0])))
    new = index.add_items(u.detach() * 100)
    fast = beam_search(model, index, np.array([0]), ds.train, 5, 2, scan="faiss")
    _same_search(fast, beam_search(model, index, np.array([0]), ds.train, 5, 2, scan="torch"))
    assert fast.topk.ids[0, 0].item() == new[0]


def test_faiss_scan_returns_the_model_scores_of_a_cosine_model(tiny_set_data):
    ds, _, index = model_and_index(tiny_set_data, "dot")
    torch.manual_seed(0)
    cfg = ModelConfig(dim=16, scorer="dot", cosine=True, temperature=0.05)
    model = RetrievalModel(cfg, ds.n_users, ds.n_items).eval()
    items = item_embeddings(model)
    cb = ResidualCodebooks([6, 4], 1, 16)
    cb.fit_kmeans(items, seed=0)
    index = HierarchicalIndex(cb, items)
    users = np.arange(40)
    fast = beam_search(model, index, users, ds.train, 10, 3, scan="faiss")
    _same_search(fast, beam_search(model, index, users, ds.train, 10, 3, scan="torch"))
    assert fast.topk.scores.max() > 2.0  # inner products of unit vectors divided by 0.05


def test_scan_choice_is_checked(tiny_set_data):
    ds, model, index = model_and_index(tiny_set_data, "mol")
    with pytest.raises(ValueError, match="scan='faiss' scores dot-product models"):
        beam_search(model, index, np.arange(3), ds.train, 5, 2, scan="faiss")
    with pytest.raises(ValueError, match="scan must be"):
        beam_search(model, index, np.arange(3), ds.train, 5, 2, scan="numba")


def _lists(lists):
    """Every inverted list of a DotLists as {(ivf, list): sorted (id, code bytes)}."""
    import faiss

    out = {}
    for which, ivf in enumerate(lists.ivfs):
        inv = ivf.invlists
        for j in range(ivf.nlist):
            n = inv.list_size(j)
            ids = faiss.rev_swig_ptr(inv.get_ids(j), n).copy() if n else np.zeros(0, np.int64)
            codes = (
                faiss.rev_swig_ptr(inv.get_codes(j), n * inv.code_size).copy().reshape(n, -1)
                if n
                else np.zeros((0, inv.code_size), np.uint8)
            )
            order = np.argsort(ids)
            out[which, j] = (ids[order].tolist(), codes[order].tobytes())
    return out


def test_faiss_lists_are_patched_after_changes_and_equal_fresh_ones(tiny_set_data):
    """Adds, re-embeddings and removals that keep the node set patch the faiss lists in place
    (the same object, only the touched nodes' lists rewritten); after each, the lists equal
    lists built from scratch and the faiss scan equals the torch scan."""
    from hirex.index.inverted_lists import DotLists

    ds, model, index = model_and_index(tiny_set_data, "dot", levels=(4, 3))
    users = np.arange(60)
    rng = np.random.default_rng(0)
    lists = DotLists.of(index)
    patched = 0
    for step in range(12):
        if step % 3 == 2:
            index.remove_items(rng.choice(index.n_items, 3, replace=False))
        else:
            ids = rng.choice(index.n_items + 2, 2, replace=False)
            src = index.item_emb[torch.from_numpy(rng.integers(ds.n_items, size=2))]
            index.add_items(src + 0.01 * torch.randn(src.shape), ids)
        fast = beam_search(model, index, users, ds.train, 10, 2, scan="faiss")
        _same_search(fast, beam_search(model, index, users, ds.train, 10, 2, scan="torch"))
        now = DotLists.of(index)
        patched += now is lists
        lists = now
        fresh = DotLists(index)
        assert _lists(now) == _lists(fresh)
        assert np.array_equal(now.leaf_of, fresh.leaf_of)
        assert np.array_equal(now.top, fresh.top)
        assert np.array_equal(now.top_nonempty, fresh.top_nonempty)
        for a, b in zip(now.list_sizes, fresh.list_sizes, strict=True):
            assert np.array_equal(a, b)
    assert patched >= 8  # most changes were patches (a change creating a node rebuilds)
