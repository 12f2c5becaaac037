"""make_synthetic: the known structure is there, an oracle from the truth wins, memory is linear."""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest

from hirex.data.synthetic import SyntheticConfig, make_synthetic


@pytest.fixture(scope="module")
def demo():
    return make_synthetic(SyntheticConfig())


def _recall_at(scores: np.ndarray, history, targets, users: np.ndarray, k: int) -> float:
    """Mean recall@k over ``users`` with history items masked."""
    scores = scores.copy()
    scores[history.to_csr()[users].toarray() > 0] = -np.inf
    top = np.argsort(-scores, axis=1)[:, :k]
    hits = np.take_along_axis(targets.to_csr()[users].toarray() > 0, top, axis=1).sum(axis=1)
    return float((hits / targets.lengths()[users]).mean())


def test_default_config_shapes_and_splits(demo):
    ds, truth = demo
    cfg = SyntheticConfig()
    assert (ds.n_users, ds.n_items, ds.kind) == (cfg.n_users, cfg.n_items, "set")
    # A user whose draws collapse to a single distinct item keeps it in train, without target.
    assert (ds.test.lengths() <= 1).all() and (ds.test.lengths() == 1).mean() > 0.99
    assert (ds.valid.lengths() <= 1).all() and (ds.train.lengths() >= 1).all()
    both = ds.history("test").to_csr().multiply(ds.test.to_csr())
    assert both.nnz == 0  # set data: targets are new items for the user
    assert ds.train.nnz == ds.train.collapse_duplicates().nnz
    mean = (ds.train.nnz + ds.valid.nnz + ds.test.nnz) / ds.n_users
    assert 0.6 * cfg.interactions_per_user < mean <= cfg.interactions_per_user


def test_truth_is_hierarchical(demo):
    _, truth = demo
    cfg = SyntheticConfig()
    assert np.array_equal(truth.item_topic, truth.item_subtopic // cfg.n_subtopics)
    assert np.bincount(truth.item_subtopic).min() >= 1
    assert truth.user_interests.shape == (cfg.n_users, cfg.interests_per_user)
    ordered = np.sort(truth.user_interests, axis=1)
    assert (ordered[:, 1:] != ordered[:, :-1]).all()  # distinct interests per user
    assert np.allclose(truth.user_interest_weights.sum(axis=1), 1, atol=1e-5)
    in_home = truth.user_interests // cfg.n_subtopics == truth.user_topic[:, None]
    assert 0.75 < in_home.mean() < 0.95  # topic_focus 0.8 (+ chance hits, - redraws)


def test_test_items_lie_in_interest_subtopics(demo):
    ds, truth = demo
    users = ds.test.users()
    inside = (truth.user_interests[users] == truth.item_subtopic[ds.test.items][:, None]).any(1)
    assert inside.mean() > 0.85  # 1 - noise_share, plus noise that lands inside


def test_popularity_is_heavy_tailed(demo):
    ds, _ = demo
    counts = np.sort(ds.train.item_counts())[::-1]
    top_tenth = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_tenth > 0.4  # uniform popularity would give about 0.1
    flat = make_synthetic(dataclasses.replace(SyntheticConfig(), popularity_exponent=0.0))[0]
    flat_counts = np.sort(flat.train.item_counts())[::-1]
    assert flat_counts[: len(flat_counts) // 10].sum() / flat_counts.sum() < top_tenth - 0.15


def test_oracle_from_truth_beats_random_and_popularity(demo):
    ds, truth = demo
    users = ds.test.active_users()[:400]
    history = ds.history("test")
    oracle = _recall_at(truth.item_probability(users), history, ds.test, users, 10)
    rng = np.random.default_rng(0)
    random = _recall_at(rng.random((len(users), ds.n_items)), history, ds.test, users, 10)
    popular = np.tile(ds.train.item_counts().astype(float), (len(users), 1))
    popularity = _recall_at(popular, history, ds.test, users, 10)
    assert oracle > 20 * random and oracle > 4 * popularity
    assert oracle < 0.9  # not trivially easy


def test_item_probability_matches_the_sampler():
    """The truth's exact distribution is what the sampler draws (long i.i.d. sequences)."""
    cfg = SyntheticConfig(
        n_users=2,
        n_items=60,
        n_topics=2,
        n_subtopics=3,
        interactions_per_user=40_000,
        kind="sequence",
        stickiness=0.0,
    )
    ds, truth = make_synthetic(cfg)
    p = truth.item_probability(np.array([0, 1]))
    assert np.allclose(p.sum(axis=1), 1.0)
    for user in range(2):
        freq = np.bincount(ds.train.user_items(user), minlength=cfg.n_items)
        assert np.abs(freq / freq.sum() - p[user]).sum() < 0.05  # total variation


def test_sequence_kind_is_sticky_and_splits_at_the_end():
    cfg = SyntheticConfig(kind="sequence", stickiness=0.8, noise_share=0.0)
    ds, truth = make_synthetic(cfg)
    assert ds.kind == "sequence"
    assert (ds.test.lengths() == 1).all() and (ds.valid.lengths() == 1).all()
    seq = ds.train
    same_user = seq.users()[1:] == seq.users()[:-1]
    sub = truth.item_subtopic[seq.items]
    same = (sub[1:] == sub[:-1])[same_user].mean()
    shuffled = make_synthetic(dataclasses.replace(cfg, stickiness=0.0))[0].train
    sub0 = truth.item_subtopic[shuffled.items]
    same0 = (sub0[1:] == sub0[:-1])[shuffled.users()[1:] == shuffled.users()[:-1]].mean()
    assert same > same0 + 0.3


def test_seeded_and_deterministic():
    a, ta = make_synthetic(SyntheticConfig(n_users=300, seed=3))
    b, tb = make_synthetic(SyntheticConfig(n_users=300, seed=3))
    c, _ = make_synthetic(SyntheticConfig(n_users=300, seed=4))
    assert np.array_equal(a.train.items, b.train.items)
    assert np.array_equal(a.test.items, b.test.items)
    assert np.array_equal(ta.user_interests, tb.user_interests)
    assert not np.array_equal(a.train.items[:100], c.train.items[:100])


def test_config_validation_and_strict_loader():
    with pytest.raises(ValueError, match="n_items must be >= n_topics \\* n_subtopics = 50"):
        SyntheticConfig(n_items=10)
    with pytest.raises(ValueError, match="kind must be 'set' or 'sequence'"):
        SyntheticConfig(kind="graph")
    with pytest.raises(ValueError, match=r"unknown synthetic option\(s\) \['n_user'\]; choose"):
        SyntheticConfig.from_dict({"n_user": 5})
    assert SyntheticConfig.from_dict({"n_users": 5}).n_users == 5


def test_interests_cover_all_subtopics_when_asked():
    cfg = SyntheticConfig(n_users=20, n_items=40, n_topics=2, n_subtopics=3, interests_per_user=6)
    _, truth = make_synthetic(cfg)
    assert (np.sort(truth.user_interests, axis=1) == np.arange(6)).all()


def test_memory_is_linear_in_items():
    """1M items with few users: the traced numpy peak stays near 60 bytes per item."""
    cfg = SyntheticConfig(n_users=200, n_items=1_000_000, n_topics=50, n_subtopics=20)
    tracemalloc.start()
    try:
        ds, truth = make_synthetic(cfg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ds.n_items == 1_000_000 and truth.item_topic.shape == (1_000_000,)
    assert peak < 80 * cfg.n_items, f"peak {peak / 2**20:.0f} MiB"
