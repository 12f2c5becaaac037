"""carve_validation, leave_one_out, holdout_split: known answers and invariants."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hirex.data.interactions import DataError, IdMap, Interactions
from hirex.data.splits import (
    carve_validation,
    holdout_split,
    leave_one_out,
    random_ranks,
    tail_mask,
)


def _lists(data: Interactions) -> list[list[int]]:
    return [data.user_items(u).tolist() for u in range(data.n_users)]


def _assert_partition(parts: list[Interactions], whole: Interactions) -> None:
    """Every user's items across the parts are exactly the user's items (as a multiset)."""
    for u in range(whole.n_users):
        joined = Counter(i for p in parts for i in p.user_items(u).tolist())
        assert joined == Counter(whole.user_items(u).tolist())


def test_carve_validation_known_shape():
    data = Interactions.from_lists([[0, 1, 2, 3], [4], [5, 6], []], n_items=7)
    train, valid = carve_validation(data, per_user=1, min_items=2, seed=0)
    assert valid.lengths().tolist() == [1, 0, 1, 0]
    assert train.lengths().tolist() == [3, 1, 1, 0]
    _assert_partition([train, valid], data)
    # Items keep their order inside each user.
    for u in range(data.n_users):
        kept = train.user_items(u).tolist()
        assert kept == [i for i in data.user_items(u).tolist() if i in kept]


def test_carve_validation_is_seeded_and_min_items_respected():
    data = Interactions.from_lists([list(range(10)) for _ in range(50)], n_items=10)
    a = carve_validation(data, per_user=3, min_items=5, seed=7)[1]
    b = carve_validation(data, per_user=3, min_items=5, seed=7)[1]
    c = carve_validation(data, per_user=3, min_items=5, seed=8)[1]
    assert np.array_equal(a.items, b.items)
    assert not np.array_equal(a.items, c.items)
    assert (a.lengths() == 3).all()
    short = Interactions.from_lists([[0, 1, 2, 3]], n_items=4)
    assert carve_validation(short, per_user=3, min_items=5, seed=0)[1].nnz == 0


def test_carve_validation_picks_uniformly():
    data = Interactions.from_lists([[0, 1, 2, 3]] * 4000, n_items=4)
    valid = carve_validation(data, per_user=1, min_items=2, seed=1)[1]
    share = np.bincount(valid.items, minlength=4) / 4000
    assert np.allclose(share, 0.25, atol=0.03)


def test_carve_validation_rejects_bad_arguments():
    data = Interactions.from_lists([[0, 1]], n_items=2)
    with pytest.raises(ValueError, match="min_items .* must be greater than per_user"):
        carve_validation(data, per_user=2, min_items=2, seed=0)
    assert carve_validation(data, per_user=0, seed=0)[1].nnz == 0


def test_leave_one_out_known_answer_and_short_sequences():
    seqs = Interactions.from_lists([[5, 6, 7, 8], [1, 2, 3], [4, 1], []], n_items=9)
    train, valid, test = leave_one_out(seqs)
    assert _lists(train) == [[5, 6], [1], [4], []]
    assert _lists(valid) == [[7], [2], [], []]
    assert _lists(test) == [[8], [3], [1], []]
    history = train.concat(valid)
    assert _lists(history) == [[5, 6, 7], [1, 2], [4], []]


def test_leave_one_out_keeps_repeats():
    seqs = Interactions.from_lists([[1, 1, 2, 1]], n_items=3)
    train, valid, test = leave_one_out(seqs)
    assert _lists(train) == [[1, 1]] and _lists(valid) == [[2]] and _lists(test) == [[1]]


def test_leave_one_out_single_item_user_is_named():
    seqs = Interactions.from_lists([[0, 1, 2], [3], [1, 2]], n_items=4)
    with pytest.raises(DataError, match=r"user 1 has a single item.*empty history"):
        leave_one_out(seqs)
    names = IdMap(np.array(["ann", "bob", "cy"]))
    with pytest.raises(DataError, match=r"user 'bob' has a single item"):
        leave_one_out(seqs, user_ids=names)


def test_holdout_split_random_fraction():
    data = Interactions.from_lists([list(range(10)), [0, 1], [3], list(range(5))], n_items=10)
    train, test = holdout_split(data, test_fraction=0.2, seed=3)
    # clip(round(n * 0.2), 1, n - 1): 10 -> 2, 2 -> 1, 1 -> 0 (single items stay), 5 -> 1.
    assert test.lengths().tolist() == [2, 1, 0, 1]
    _assert_partition([train, test], data)
    with pytest.raises(ValueError, match="test_fraction"):
        holdout_split(data, test_fraction=1.0)


def test_holdout_split_chronological_when_timestamps():
    users = np.array([0, 0, 0, 1, 1, 2])
    items = np.array([1, 2, 3, 4, 5, 6])
    times = np.array([30.0, 10.0, 20.0, 5.0, 1.0, 9.0])
    data = Interactions.from_pairs(users, items, 3, 7, timestamps=times)
    train, test = holdout_split(data, seed=0)
    assert _lists(test) == [[1], [4], []]
    assert _lists(train) == [[2, 3], [5], [6]]


def test_tail_mask_offsets():
    data = Interactions.from_lists([[1, 2, 3], [4]], n_items=5)
    assert tail_mask(data, np.array([True, True])).tolist() == [0, 0, 1, 1]
    assert tail_mask(data, np.array([True, True]), offset=1).tolist() == [0, 1, 0, 0]


def test_random_ranks_are_permutations_within_users():
    data = Interactions.from_lists([[0] * 5, [], [1] * 3], n_items=2)
    rank = random_ranks(data, np.random.default_rng(0))
    assert sorted(rank[:5].tolist()) == [0, 1, 2, 3, 4]
    assert sorted(rank[5:].tolist()) == [0, 1, 2]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 9), max_size=12), min_size=1, max_size=8),
    st.integers(0, 3),
    st.integers(0, 2**16),
)
def test_splits_partition_every_user(lists, per_user, seed):
    data = Interactions.from_lists(lists, n_items=10)
    train, valid = carve_validation(data, per_user, per_user + 1, seed=seed)
    _assert_partition([train, valid], data)
    assert (train.lengths()[data.lengths() > 0] >= 1).all()
    rest, test = holdout_split(data, test_fraction=0.3, seed=seed)
    _assert_partition([rest, test], data)
    assert (rest.lengths()[data.lengths() > 0] >= 1).all()
    long = Interactions.from_lists([x for x in lists if len(x) != 1], n_items=10)
    parts = leave_one_out(long)
    _assert_partition(list(parts), long)
