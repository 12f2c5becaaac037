"""Vectorised ranking metrics: hand-computed values, the plain-loop reference, batching."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hirex.data.interactions import Interactions
from hirex.eval.metrics import MetricAccumulator, metric_keys, ranking_metrics
from hirex.eval.metrics_reference import ranking_metrics_reference

LOG2_3 = math.log2(3)  # 1 / log2(rank + 2) at rank 1 is 1 / log2(3) = 0.6309...


# ---- hand-computed --------------------------------------------------------------------------
def _hand_case() -> tuple[np.ndarray, np.ndarray, Interactions]:
    targets = Interactions.from_lists([[1, 4, 7], [5], [], [8]], n_items=10)
    ranked = np.array(
        [
            [4, 2, 1],  # user 0: hits at ranks 0 and 2
            [3, 5, 5],  # user 1: hit at rank 1; the repeated 5 at rank 2 is not a hit
            [0, 1, 2],  # user 2: no target -> skipped
            [9, -1, -1],  # user 3: no hit, padded
        ],
        dtype=np.int64,
    )
    return ranked, np.arange(4, dtype=np.int64), targets


def test_hand_computed_k3_and_k1() -> None:
    ranked, users, targets = _hand_case()
    report = ranking_metrics(ranked, users, targets, ks=[3, 1], per_user=True)
    assert report.n_users == 3  # users 0, 1, 3

    # K=3, per user (recall, precision, hit, mrr, ndcg):
    #   user 0: 2 hits / 3 targets = 2/3; 2/3; 1; 1/(0+1) = 1;
    #           DCG = 1/log2(2) + 1/log2(4) = 1.5, IDCG over min(3, 3) = 3 ranks
    #           = 1 + 1/log2(3) + 0.5, ndcg = 1.5 / (1.5 + 1/log2(3)) = 0.70391...
    #   user 1: 1/1 = 1; 1/3; 1; 1/(1+1) = 1/2; DCG = 1/log2(3), IDCG over 1 rank = 1
    #   user 3: all 0
    # Means over 3 users: recall (2/3 + 1 + 0) / 3 = 5/9, precision (2/3 + 1/3 + 0) / 3 = 1/3,
    #   hit 2/3, mrr (1 + 1/2 + 0) / 3 = 1/2, ndcg (0.70391 + 0.63093 + 0) / 3.
    ndcg_u0 = 1.5 / (1.5 + 1 / LOG2_3)
    expected_k3 = {
        "recall@3": 5 / 9,
        "precision@3": 1 / 3,
        "hit@3": 2 / 3,
        "mrr@3": 1 / 2,
        "ndcg@3": (ndcg_u0 + 1 / LOG2_3) / 3,
    }
    # K=1: only user 0 hits (item 4 at rank 0): recall 1/3 (LightGCN divides by |T| = 3, not
    #   by min(|T|, K) = 1), precision 1/1, hit 1, mrr 1, ndcg 1 / IDCG over min(3, 1) = 1 rank.
    #   Means: recall (1/3) / 3 = 1/9, the others 1/3.
    expected_k1 = {"recall@1": 1 / 9, "precision@1": 1 / 3, "hit@1": 1 / 3, "mrr@1": 1 / 3}
    expected_k1["ndcg@1"] = 1 / 3
    for key, value in {**expected_k3, **expected_k1}.items():
        assert report.values[key] == pytest.approx(value, rel=1e-12), key

    assert list(report.values) == metric_keys([3, 1])
    assert report.per_user is not None
    np.testing.assert_allclose(report.per_user["ndcg@3"], [ndcg_u0, 1 / LOG2_3, np.nan, 0.0])
    np.testing.assert_allclose(report.per_user["recall@3"], [2 / 3, 1.0, np.nan, 0.0])


def test_reference_matches_hand_case() -> None:
    ranked, users, targets = _hand_case()
    fast = ranking_metrics(ranked, users, targets, ks=[3, 1])
    ref = ranking_metrics_reference(ranked, users, targets, ks=[3, 1])
    assert ref.n_users == fast.n_users
    for key, value in fast.values.items():
        assert ref.values[key] == pytest.approx(value, rel=1e-12), key


def test_duplicate_targets_count_once() -> None:
    # Targets [5, 5, 6] are the set {5, 6}: one hit out of 2 targets, recall 1/2 (not 1/3).
    targets = Interactions.from_lists([[5, 5, 6]], n_items=10)
    report = ranking_metrics(np.array([[5, 0]]), np.array([0]), targets, ks=[2])
    assert report.values["recall@2"] == pytest.approx(0.5)
    assert report.values["ndcg@2"] == pytest.approx(1.0 / (1.0 + 1.0 / LOG2_3))


# ---- users without targets ------------------------------------------------------------------
def test_users_without_targets_are_skipped() -> None:
    targets = Interactions.from_lists([[], [3], []], n_items=5)
    ranked = np.array([[3, 1], [3, 1], [0, 1]])
    report = ranking_metrics(ranked, np.array([0, 1, 2]), targets, ks=[2])
    assert report.n_users == 1
    assert report.values["hit@2"] == 1.0  # only user 1 counts; user 0's hit-looking 3 is ignored
    assert report.values["precision@2"] == 0.5


def test_no_user_with_targets_gives_nan() -> None:
    targets = Interactions.empty(n_users=2, n_items=4)
    report = ranking_metrics(np.array([[0, 1], [2, -1]]), np.array([0, 1]), targets, ks=2)
    assert report.n_users == 0
    assert all(math.isnan(v) for v in report.values.values())


# ---- validation -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ks", "match"),
    [
        ([2, 5], r"k=5 is larger than the ranking width 3"),
        ([], r"ks is empty"),
        ([0], r"positive int"),
        ([2.0], r"positive int"),
        ([True], r"positive int"),
    ],
)
def test_ks_validation(ks: list, match: str) -> None:
    targets = Interactions.from_lists([[1]], n_items=4)
    with pytest.raises(ValueError, match=match):
        ranking_metrics(np.array([[1, 2, 3]]), np.array([0]), targets, ks=ks)


@pytest.mark.parametrize(
    ("ranked", "users", "match"),
    [
        (np.array([1, 2]), np.array([0]), r"2-d integer"),
        (np.array([[1.0, 2.0]]), np.array([0]), r"2-d integer"),
        (np.array([[1, 2]]), np.array([0, 1]), r"one id per row"),
        (np.array([[1, 2]]), np.array([2]), r"user ids must lie in \[0, 2\)"),
        (np.array([[1, -2]]), np.array([0]), r"or be -1 for padding"),
        (np.array([[1, 4]]), np.array([0]), r"must lie in \[0, 4\)"),
    ],
)
def test_input_validation(ranked: np.ndarray, users: np.ndarray, match: str) -> None:
    targets = Interactions.from_lists([[1], [2]], n_items=4)
    with pytest.raises(ValueError, match=match):
        ranking_metrics(ranked, users, targets, ks=[1])


# ---- vectorised vs reference ----------------------------------------------------------------
@st.composite
def ranking_cases(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, Interactions, list[int]]:
    """Few items, so hits, repeated ids and repeated targets are common; -1 padding anywhere."""
    n_items = draw(st.integers(1, 12))
    n_users = draw(st.integers(1, 6))
    item = st.integers(0, n_items - 1)
    lists = draw(st.lists(st.lists(item, max_size=6), min_size=n_users, max_size=n_users))
    targets = Interactions.from_lists(lists, n_items=n_items)
    n_rows = draw(st.integers(0, 8))
    width = draw(st.integers(1, 8))
    users = draw(st.lists(st.integers(0, n_users - 1), min_size=n_rows, max_size=n_rows))
    cells = draw(
        st.lists(st.integers(-1, n_items - 1), min_size=n_rows * width, max_size=n_rows * width)
    )
    ks = draw(st.lists(st.integers(1, width), min_size=1, max_size=3, unique=True))
    ranked = np.array(cells, dtype=np.int64).reshape(n_rows, width)
    return ranked, np.array(users, dtype=np.int64), targets, ks


@settings(max_examples=150, deadline=None)
@given(ranking_cases())
def test_vectorised_matches_reference(case) -> None:
    ranked, users, targets, ks = case
    fast = ranking_metrics(ranked, users, targets, ks, per_user=True)
    ref = ranking_metrics_reference(ranked, users, targets, ks)
    assert fast.n_users == ref.n_users
    assert list(fast.values) == list(ref.values)
    np.testing.assert_allclose(
        list(fast.values.values()), list(ref.values.values()), rtol=1e-12, atol=1e-15
    )
    assert fast.per_user is not None and ref.per_user is not None
    for key in fast.values:
        np.testing.assert_allclose(fast.per_user[key], ref.per_user[key], rtol=1e-12, err_msg=key)


# ---- batching -------------------------------------------------------------------------------
def _check_accumulator_matches(ranked, users, targets, ks, cuts) -> None:
    whole = ranking_metrics(ranked, users, targets, ks, per_user=True)
    acc = MetricAccumulator(ks, per_user=True)
    bounds = [0, *sorted(cuts), len(users)]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        acc.add(ranked[lo:hi], users[lo:hi], targets)
    batched = acc.result()
    assert batched.n_users == whole.n_users
    np.testing.assert_allclose(
        list(batched.values.values()), list(whole.values.values()), rtol=1e-12
    )
    assert batched.per_user is not None and whole.per_user is not None
    for key in whole.values:
        np.testing.assert_array_equal(batched.per_user[key], whole.per_user[key])


def test_accumulator_equals_single_call() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 300, 50
    lengths = rng.integers(0, 6, n_users)
    targets = Interactions.from_lists(
        [rng.choice(n_items, size=n, replace=False) for n in lengths], n_items=n_items
    )
    ranked = rng.integers(-1, n_items, size=(n_users, 20))
    users = rng.permutation(n_users)
    _check_accumulator_matches(ranked, users, targets, [5, 20], cuts=[1, 64, 64, 200])


@settings(max_examples=50, deadline=None)
@given(ranking_cases(), st.lists(st.integers(0, 8), max_size=3))
def test_accumulator_equals_single_call_random_batches(case, cuts) -> None:
    ranked, users, targets, ks = case
    cuts = [min(c, len(users)) for c in cuts]
    _check_accumulator_matches(ranked, users, targets, ks, cuts)


def test_empty_accumulator() -> None:
    report = MetricAccumulator([10], per_user=True).result()
    assert report.n_users == 0 and math.isnan(report.values["recall@10"])
    assert report.per_user is not None and report.per_user["recall@10"].shape == (0,)


# ---- speed ----------------------------------------------------------------------------------
def test_speed_30k_users_k100() -> None:
    """30k users x K=100 takes well under a second; 5 s bound so a busy machine cannot flake."""
    rng = np.random.default_rng(1)
    n_users, n_items, width = 30_000, 50_000, 100
    lengths = rng.integers(0, 30, n_users)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    targets = Interactions(
        n_users, n_items, indptr, rng.integers(0, n_items, int(indptr[-1]), dtype=np.int64)
    )
    ranked = rng.integers(0, n_items, size=(n_users, width), dtype=np.int64)
    ranked[:100, :10] = targets.items[:1]  # some hits and repeats
    start = time.perf_counter()
    report = ranking_metrics(ranked, np.arange(n_users), targets, ks=[10, 20, 50, 100])
    elapsed = time.perf_counter() - start
    assert report.n_users == int((lengths > 0).sum())
    assert elapsed < 5.0, f"{elapsed:.2f} s"
