"""Train / validation / test splits over per-user interaction lists.

Three protocols:

- ``carve_validation``: hold out a few random items of each user from a training set (for "set"
  data whose test split is given, e.g. the LightGCN files).
- ``leave_one_out``: chronological sequences; the last item is the test target, the second last
  the validation target, the rest is history (TIGER / P5 / S3-Rec protocol).
- ``holdout_split``: a test split for a table that comes without one: each user's last item
  when timestamps exist, otherwise a random fraction of each user's items.

Every split is seeded and deterministic, vectorised over all users, and keeps the order of the
items inside each user's list.  Each random protocol draws from its own stream of the seed, so
using the same seed for two of them does not correlate their choices.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hirex.data.interactions import DataError, Dataset, IdMap, Interactions

# Distinct streams per protocol: default_rng([stream, seed]).
_CARVE_STREAM = 0x5EED_CA12
_HOLDOUT_STREAM = 0x5EED_401D
_COLD_STREAM = 0x5EED_C01D


def carve_validation(
    train: Interactions, per_user: int = 1, min_items: int = 2, *, seed: int
) -> tuple[Interactions, Interactions]:
    """Hold out ``per_user`` random items of each user who has at least ``min_items`` items.

    Users with fewer than ``min_items`` items keep all of them in train and get no validation
    target.  ``min_items`` must exceed ``per_user`` so that no user loses their whole history.
    Returns ``(train, valid)``, both with the shape of ``train``; entries keep their order.
    """
    if per_user < 0:
        raise ValueError(f"per_user must be >= 0, got {per_user}")
    if per_user == 0:
        return train, Interactions.empty(train.n_users, train.n_items)
    if min_items <= per_user:
        raise ValueError(
            f"min_items ({min_items}) must be greater than per_user ({per_user}) "
            "so that every user keeps at least one training item"
        )
    lengths = train.lengths()
    k = np.where(lengths >= min_items, per_user, 0)
    held = _random_holdout_mask(train, k, np.random.default_rng([_CARVE_STREAM, seed]))
    return train.select_entries(~held), train.select_entries(held)


def leave_one_out(
    seqs: Interactions, *, user_ids: IdMap | None = None
) -> tuple[Interactions, Interactions, Interactions]:
    """Split chronological sequences: last item -> test, second last -> valid, rest -> train.

    Short sequences:
    - 3 or more items: one test target, one validation target, the rest is history.
    - 2 items: the first is history, the second the test target; no validation target
      (``history("test")`` is then the single train item).
    - 1 item: raises DataError naming the user: the item would be a test target with an empty
      history.  Drop such users first, or keep them as history only (``load_table`` does).
    - 0 items: the user takes part in no split.

    ``user_ids`` (optional) names users by their original ids in the error.
    Returns ``(train, valid, test)``, all with the shape of ``seqs``.
    """
    lengths = seqs.lengths()
    single = np.flatnonzero(lengths == 1)
    if len(single):
        names = user_ids.to_raw(single[:5]) if user_ids is not None else single[:5].tolist()
        raise DataError(
            f"user {names[0]!r} has a single item, which would be its test target with an "
            f"empty history ({len(single)} such users, e.g. {names}); leave-one-out needs at "
            "least 2 items per user (3 for a validation target): drop these users"
        )
    test = tail_mask(seqs, lengths >= 2, offset=0)
    valid = tail_mask(seqs, lengths >= 3, offset=1)
    return (
        seqs.select_entries(~(test | valid)),
        seqs.select_entries(valid),
        seqs.select_entries(test),
    )


def holdout_split(
    data: Interactions, *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[Interactions, Interactions]:
    """A test split for a table without one.  Returns ``(train, test)``.

    With timestamps (``data.timestamps`` not None, each user's items in time order, as
    ``Interactions.from_pairs`` builds them): each user's last item is the test target.
    Without: ``clip(round(n * test_fraction), 1, n - 1)`` random items of each user with n >= 2
    items.  In both cases users with a single item keep it in train and get no test target.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    lengths = data.lengths()
    if data.timestamps is not None:
        held = tail_mask(data, lengths >= 2, offset=0)
    else:
        k = np.clip(np.rint(lengths * test_fraction), 1, np.maximum(lengths - 1, 1))
        k = np.where(lengths >= 2, k, 0).astype(np.int64)
        held = _random_holdout_mask(data, k, np.random.default_rng([_HOLDOUT_STREAM, seed]))
    return data.select_entries(~held), data.select_entries(held)


def tail_mask(data: Interactions, users_mask: np.ndarray, offset: int = 0) -> np.ndarray:
    """(nnz,) bool mask of entry ``len - 1 - offset`` of every user where ``users_mask`` holds."""
    mask = np.zeros(data.nnz, dtype=bool)
    users = np.flatnonzero(users_mask & (data.lengths() > offset))
    mask[data.indptr[users + 1] - 1 - offset] = True
    return mask


def random_ranks(data: Interactions, rng: np.random.Generator) -> np.ndarray:
    """(nnz,) int64: each entry's position in a uniformly random order of its user's entries."""
    users = data.users()
    # Entries are grouped by user, so sorting by (user, random key) shuffles within users only;
    # an entry's rank within its user is its sorted position minus the user's start.  One
    # int64 key (user in the high bits) sorts several times faster than a two-key lexsort.
    keys = (users << 32) | rng.integers(0, 2**32, size=data.nnz, dtype=np.int64)
    order = np.argsort(keys)
    rank = np.empty(data.nnz, dtype=np.int64)
    rank[order] = np.arange(data.nnz, dtype=np.int64) - data.indptr[users]
    return rank


def _random_holdout_mask(data: Interactions, k: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(nnz,) bool mask selecting ``k[u]`` entries of each user u uniformly at random."""
    return random_ranks(data, rng) < k[data.users()]


def hold_out_items(dataset: Dataset, fraction: float, *, seed: int) -> Dataset:
    """Cold start: a random ``fraction`` of the items leaves training.

    Their interactions are removed from ``train`` and ``valid`` (so no model learns from them
    and no history shows them); ``test`` and the item text are kept, so a test target may be an
    item no model has seen interacted with.  ``cold_items`` records them;
    ``cold_start_targets`` keeps only the test targets that are such items.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the cold-start fraction must lie in (0, 1), got {fraction}")
    rng = np.random.default_rng([_COLD_STREAM, seed])
    n = dataset.n_items
    cold = np.sort(rng.choice(n, max(1, int(round(fraction * n))), replace=False))
    is_cold = np.zeros(n, bool)
    is_cold[cold] = True
    train = dataset.train.select_entries(~is_cold[dataset.train.items])
    valid = dataset.valid.select_entries(~is_cold[dataset.valid.items])
    return dataclasses.replace(dataset, train=train, valid=valid, cold_items=cold)


def cold_start_targets(dataset: Dataset) -> Dataset:
    """The dataset with only the test targets that are held-out items (see hold_out_items)."""
    if dataset.cold_items is None:
        raise ValueError("the dataset has no held-out items; set data.cold_start_fraction")
    is_cold = np.zeros(dataset.n_items, bool)
    is_cold[dataset.cold_items] = True
    test = dataset.test.select_entries(is_cold[dataset.test.items])
    return dataclasses.replace(dataset, test=test)
