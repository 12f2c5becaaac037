"""Semantic IDs: learners on known clusters, disambiguation, trie, constrained beam search
against exhaustive enumeration, files, new items from text, and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hirex.config import SidConfig
from hirex.data.interactions import Interactions
from hirex.semantic_ids import (
    GenerativeRetriever,
    GeneratorShape,
    PrefixTrie,
    SemanticIdGenerator,
    SemanticIds,
    catalogue_fingerprint,
    constrained_beam_search,
    exhaustive_generate,
    fit_ids,
    load_generator,
    load_ids,
    save_generator,
    save_ids,
)
from hirex.semantic_ids.beam_search import history_codes
from hirex.semantic_ids.ids import collision_rate, disambiguate

from .conftest import PER_CLUSTER


def clusters(ds) -> np.ndarray:
    return np.array([int(r[4:]) // PER_CLUSTER for r in ds.item_ids.raw])


def purity(codes: np.ndarray, labels: np.ndarray) -> float:
    """Share of items whose first code's majority cluster is their own."""
    hits = 0
    for c in np.unique(codes):
        members = labels[codes == c]
        hits += np.bincount(members).max()
    return hits / len(labels)


def fingerprint(ds) -> str:
    return catalogue_fingerprint(ds.item_ids.raw)


@pytest.fixture(scope="module")
def lm_ids(catalogue):
    cfg = SidConfig(method="lmindexer", encoder="tfidf", levels=(6, 4), epochs=6)
    return fit_ids(catalogue.item_text, fingerprint(catalogue), cfg)


@pytest.mark.parametrize("method", ["rq_kmeans", "hierarchical_kmeans", "rqvae"])
def test_two_stage_ids_put_clusters_under_shared_prefixes(catalogue, method):
    cfg = SidConfig(method=method, encoder="tfidf", levels=(6, 4), epochs=10)
    ids = fit_ids(catalogue.item_text, fingerprint(catalogue), cfg)
    assert purity(ids.codes[:, 0], clusters(catalogue)) >= 0.9


def test_lmindexer_puts_clusters_under_shared_prefixes(catalogue, lm_ids):
    labels = clusters(catalogue)
    assert purity(lm_ids.codes[:, 0], labels) >= 0.9
    # and random IDs do not (the test can fail)
    rnd = fit_ids(catalogue.item_text, fingerprint(catalogue),
                  SidConfig(method="random", encoder="tfidf", levels=(6, 4)))  # fmt: skip
    assert purity(rnd.codes[:, 0], labels) < 0.6
    history = lm_ids.info["history"]
    assert [row["position"] for row in history] == [1] * 6 + [2] * 6
    assert {"perplexity", "dead_codes", "collision_rate", "recon", "contrast"} <= set(history[0])
    stats = lm_ids.stats()
    assert stats["levels"] == 2 and stats["codebook_sizes"] == [6, 4]
    assert len(stats["usage"]) == 2 and 1 <= stats["usage"][0]["perplexity"] <= 6


def test_disambiguation_makes_ids_unique_and_counts_collisions():
    codes = np.array([[0, 1], [0, 1], [2, 0], [0, 1], [2, 1]])
    full, size = disambiguate(codes, headroom=2)
    assert full[:, 2].tolist() == [0, 1, 0, 2, 0]
    assert size == 3 + 2
    assert collision_rate(codes) == pytest.approx(3 / 5)
    ids = SemanticIds(full, (3, 2, size), "random", "x")
    new = ids.add(np.array([[0, 1], [1, 1]]))
    assert new.tolist() == [5, 6] and ids.codes[5].tolist() == [0, 1, 3]
    ids.add(np.array([[0, 1]]))
    with pytest.raises(ValueError, match="disambiguation code can tell apart"):
        ids.add(np.array([[0, 1]]))
    assert ids.n_items == 8  # the refused add changed nothing
    with pytest.raises(ValueError, match="share one ID"):
        SemanticIds(np.array([[0, 0], [0, 0]]), (2, 2), "random", "x")


def test_trie_allows_exactly_the_valid_continuations():
    rng = np.random.default_rng(0)
    full, size = disambiguate(rng.integers(0, 4, (40, 2)))
    ids = SemanticIds(full, (4, 4, size), "random", "x")
    ids.remove(np.array([3, 7]))
    trie = PrefixTrie(ids)
    active = ids.codes[ids.active]
    for depth in range(3):
        prefixes = {tuple(r[:depth]) for r in active}
        for p in prefixes:
            key = 0
            for t, c in enumerate(p):
                key = key * ids.sizes[t] + c
            allowed = trie.allowed(torch.tensor([key]), depth)[0].numpy()
            want = {r[depth] for r in active if tuple(r[:depth]) == p}
            assert set(np.flatnonzero(allowed).tolist()) == want
    keys = torch.from_numpy(ids.keys())
    items = trie.items_of(keys).numpy()
    assert (items[ids.active] == np.flatnonzero(ids.active)).all()
    assert (items[~ids.active] == -1).all()


def _tiny_generator(ids: SemanticIds, seed: int = 0) -> SemanticIdGenerator:
    torch.manual_seed(seed)
    model = SemanticIdGenerator(GeneratorShape(ids.sizes, dim=32, layers=1, heads=2, ff=64))
    for p in model.parameters():  # an untrained but far from uniform model
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.5)
    return model.eval()


def test_constrained_beam_search_equals_exhaustive_enumeration(lm_ids, catalogue):
    ids = lm_ids
    model = _tiny_generator(ids)
    trie = PrefixTrie(ids)
    history = catalogue.history("test")
    users = np.arange(12)
    hist = history_codes(ids, history, users, 20)
    excl = history.gather(users)
    wide = constrained_beam_search(model, trie, hist, 10, ids.n_items, excl, ids.n_items)
    ref = exhaustive_generate(model, ids, hist, 10, excl)
    assert torch.equal(wide.ids, ref.ids)
    torch.testing.assert_close(wide.scores, ref.scores, atol=1e-4, rtol=1e-4)
    # a narrow beam emits only valid, unmasked items, in score order, in the fixed shape
    narrow = constrained_beam_search(model, trie, hist, 10, 3, excl, ids.n_items)
    assert narrow.ids.shape == (12, 10) and (narrow.ids >= 0).all()
    assert (narrow.scores[:, :-1] >= narrow.scores[:, 1:]).all()
    seen = {(r, i) for r, i in zip(*excl, strict=True)}
    assert not any((r, int(i)) in seen for r in range(12) for i in narrow.ids[r])
    assert (narrow.scores <= ref.scores[:, :1] + 1e-4).all()


def test_fewer_valid_items_than_k_pads_with_minus_one():
    full, size = disambiguate(np.array([[0, 0], [1, 1], [1, 0]]))
    ids = SemanticIds(full, (2, 2, size), "random", "x")
    model = _tiny_generator(ids)
    hist = torch.full((1, 1, 3), -1, dtype=torch.int64)
    top = constrained_beam_search(model, PrefixTrie(ids), hist, 5, 8, None, 3)
    assert sorted(top.ids[0, :3].tolist()) == [0, 1, 2]
    assert top.ids[0, 3:].tolist() == [-1, -1] and torch.isinf(top.scores[0, 3:]).all()


def test_ids_round_trip_and_refuse_corrupt_or_foreign_files(lm_ids, catalogue, tmp_path):
    path = save_ids(tmp_path / "ids", lm_ids)
    back = load_ids(path, fingerprint(catalogue))
    assert np.array_equal(back.codes, lm_ids.codes) and back.sizes == lm_ids.sizes
    texts = ["matte red lipstick travel", "argan hair shampoo"]
    assert np.array_equal(back.assigner.codes(texts), lm_ids.assigner.codes(texts))
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "hirex-semantic-ids" and manifest["version"] == 1
    with pytest.raises(ValueError, match="another catalogue"):
        load_ids(path, "0" * 64)
    blob = bytearray((path / "ids.safetensors").read_bytes())
    blob[-5] ^= 0xFF
    (path / "ids.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="does not match its checksum"):
        load_ids(path)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a hirex semantic-ID folder"):
        save_ids(tmp_path / "plain", lm_ids)
    assert (tmp_path / "plain" / "notes.txt").read_text() == "mine"


def test_generator_round_trip_and_refuses_other_ids(lm_ids, catalogue, tmp_path):
    model = _tiny_generator(lm_ids)
    save_generator(tmp_path / "gen", model, lm_ids, {})
    back = load_generator(tmp_path / "gen", lm_ids)
    for (k, a), b in zip(model.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    other = fit_ids(catalogue.item_text, fingerprint(catalogue),
                    SidConfig(method="random", encoder="tfidf", levels=(6, 4), seed=5))  # fmt: skip
    with pytest.raises(ValueError, match="trained on other semantic IDs"):
        load_generator(tmp_path / "gen", other)


def test_new_item_from_text_is_retrievable_without_retraining(catalogue):
    cfg = SidConfig(method="rq_kmeans", encoder="tfidf", levels=(6, 4))
    ids = fit_ids(catalogue.item_text, fingerprint(catalogue), cfg)
    model = _tiny_generator(ids)
    retriever = GenerativeRetriever(model, ids, beam=ids.n_items + 5)
    n = ids.n_items
    new = retriever.add_items(["matte red lipstick lip deluxe"])
    assert new.tolist() == [n] and retriever.trie.n_items == n + 1
    # the new item sits under the lipstick cluster's first code
    lip = [i for i, t in enumerate(catalogue.item_text) if "lipstick" in t]
    assert ids.codes[n, 0] == np.bincount(ids.codes[lip, 0]).argmax()
    top = retriever.topk_for_histories([[lip[0]]], k=n + 1)
    assert n in top.ids[0].tolist()
    retriever.remove_items(np.array([n]))
    assert n not in retriever.topk_for_histories([[lip[0]]], k=n + 1).ids[0].tolist()
    with pytest.raises(ValueError, match="unknown items"):
        retriever.topk_for_histories([[0, n + 7]], k=5)
    with pytest.raises(ValueError, match="have no text"):
        retriever.add_items(["   "])


def test_items_without_text_are_refused_or_placeheld(catalogue):
    texts = list(catalogue.item_text)
    texts[3] = ""
    with pytest.raises(ValueError, match=r"1 of \d+ items have no text \(dense ids \[3\]\)"):
        fit_ids(texts, fingerprint(catalogue), SidConfig(method="rq_kmeans", encoder="tfidf",
                                                         levels=(6, 4)))  # fmt: skip
    ids = fit_ids(
        texts,
        fingerprint(catalogue),
        SidConfig(method="rq_kmeans", encoder="tfidf", levels=(6, 4), missing_text="placeholder"),
    )
    assert ids.info["items_without_text"] == 1


def test_hill_paths_ids_are_the_index_paths_and_refuse_text(catalogue):
    from hirex.semantic_ids.assign import assign_from_text

    class FakeIndex:
        n_items = catalogue.n_items
        sizes = [4, 3]
        codes = torch.from_numpy(np.stack([np.arange(catalogue.n_items) % 4,
                                           np.arange(catalogue.n_items) % 3], 1))  # fmt: skip

    ids = fit_ids(catalogue.item_text, fingerprint(catalogue), SidConfig(method="hill_paths"),
                  index=FakeIndex())  # fmt: skip
    assert np.array_equal(ids.codes[:, :2], FakeIndex.codes.numpy())
    with pytest.raises(ValueError, match="HILL paths come from a retrieval model"):
        assign_from_text(ids, ["some text"])
    with pytest.raises(ValueError, match="set sid.run"):
        fit_ids(catalogue.item_text, fingerprint(catalogue), SidConfig(method="hill_paths"))


def test_history_codes_are_left_padded_newest_last(lm_ids):
    history = Interactions.from_lists([[1, 2, 3], [], [4]], lm_ids.n_items)
    h = history_codes(lm_ids, history, np.array([0, 1, 2]), max_history=2)
    assert h.shape == (3, 2, lm_ids.length)
    assert torch.equal(h[0], torch.from_numpy(lm_ids.codes[[2, 3]]))
    assert (h[1] == -1).all()
    assert (h[2, 0] == -1).all() and torch.equal(h[2, 1], torch.from_numpy(lm_ids.codes[4]))


def test_new_items_get_their_share_of_the_slots(lm_ids, catalogue):
    from hirex.semantic_ids.beam_search import NewItems

    ids = lm_ids
    model = _tiny_generator(ids, seed=3)
    trie = PrefixTrie(ids)
    history = catalogue.history("test")
    users = np.arange(8)
    hist = history_codes(ids, history, users, 20)
    excl = history.gather(users)
    plain = constrained_beam_search(model, trie, hist, 10, 10, excl, ids.n_items)
    # make the items under the users' best first code "new": they must take 3 of 10 slots
    first = ids.codes[plain.ids[:, 0].numpy(), 0]
    new = np.isin(ids.codes[:, 0], first)
    slots = NewItems.of(ids, new, depth=1, share=0.3)
    top = constrained_beam_search(model, trie, hist, 10, 10, excl, ids.n_items, slots)
    assert top.ids.shape == (8, 10) and (top.scores[:, :-1] >= top.scores[:, 1:]).all()
    seen = {(r, i) for r, i in zip(*excl, strict=True)}
    for r in range(8):
        row = top.ids[r].tolist()
        assert len(set(row)) == 10 and not any((r, i) in seen for i in row)
        assert sum(bool(new[i]) for i in row) >= 3
    # new items under no beam's prefix change nothing
    far = NewItems.of(ids, ~np.isin(ids.codes[:, 0], ids.codes[:, 0]), depth=1, share=0.3)
    assert far is None
    none_match = np.zeros(ids.n_items, bool)
    none_match[0] = True
    lone = NewItems.of(ids, none_match, depth=ids.length - 1, share=0.3)
    narrow = constrained_beam_search(model, trie, hist, 10, 1, excl, ids.n_items)
    with_lone = constrained_beam_search(model, trie, hist, 10, 1, excl, ids.n_items, lone)
    unmatched = [r for r in range(8) if 0 not in with_lone.ids[r].tolist()]
    assert unmatched
    for r in unmatched:
        assert with_lone.ids[r].tolist() == narrow.ids[r].tolist()
