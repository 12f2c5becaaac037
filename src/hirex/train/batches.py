"""Training examples: seeded, resumable batches for set data and for sequences.

Every batch depends only on (seed, epoch, step), so a run resumed from a checkpoint at step s
sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hirex.data.interactions import Interactions
from hirex.models.user_batch import UserBatch


def step_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, step])


@dataclass(frozen=True)
class PairBatch:
    """Set data: one (user, positive item) pair per row; the history excludes the positive."""

    users: UserBatch
    positives: torch.Tensor  # (B,) int64
    weights: torch.Tensor | None = None
    """(B,) float32 weight of each row's loss (None: every row the same)."""


@dataclass(frozen=True)
class SequenceBatch:
    """Sequences: predict the next item at every position of each user's recent history."""

    users: torch.Tensor  # (B,) int64
    inputs: torch.Tensor  # (B, T) int64, left-padded with n_items
    targets: torch.Tensor  # (B, T) int64, n_items where there is no target


class PairBatches:
    """(user, item) pairs of the training interactions in a seeded order per epoch.

    pairs: the (user, item) examples when they are not ``train`` itself (e.g. data mined for
    test-time training); users are always encoded from their ``train`` histories.
    The pairs' weights (``pairs.weights``), if any, weigh each pair's loss; the training
    interactions' own weights are not used.
    """

    def __init__(
        self,
        train: Interactions,
        batch_size: int,
        seed: int,
        history_dropout: float,
        pairs: Interactions | None = None,
    ):
        self.train, self.batch_size, self.seed = train, batch_size, seed
        self.history_dropout = history_dropout
        weights = None if pairs is None else pairs.weights
        pairs = train if pairs is None else pairs
        self.pair_users = pairs.users()
        self.pair_items = pairs.items
        self.n = len(self.pair_items)
        if weights is not None and (not np.isfinite(weights).all() or weights.min() < 0):
            raise ValueError("pair weights must be finite and >= 0")
        self.weights = weights

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def batch(self, epoch: int, step: int) -> PairBatch:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        idx = order[step * self.batch_size : (step + 1) * self.batch_size]
        users, pos = self.pair_users[idx], self.pair_items[idx]
        rows, flat = self.train.gather(users)
        # The positive is not part of its own input: serving never sees the target either.
        keep = flat != pos[rows]
        if self.history_dropout > 0:
            keep &= step_rng(self.seed, epoch, step).random(len(flat)) >= self.history_dropout
        rows, flat = rows[keep], flat[keep]
        indptr = np.zeros(len(users) + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=len(users)), out=indptr[1:])
        batch = UserBatch(torch.from_numpy(users), torch.from_numpy(indptr), torch.from_numpy(flat))
        weights = None if self.weights is None else torch.from_numpy(self.weights[idx])
        return PairBatch(batch, torch.from_numpy(pos), weights)


@dataclass(frozen=True)
class UserTargetsBatch:
    """Set data, one row per user: a random part of the user's items is the input history,
    the rest are targets (a denoising objective; the targets are never in the input)."""

    users: UserBatch
    target_rows: torch.Tensor  # (T,) int64 row of each target in ``users``
    target_items: torch.Tensor  # (T,) int64


class UserTargetBatches:
    """Users with at least two items, in a seeded order per epoch; each batch splits every
    user's items into input and targets (each item a target with ``target_fraction``)."""

    def __init__(self, train: Interactions, batch_size: int, seed: int, target_fraction: float):
        self.train, self.batch_size, self.seed = train, batch_size, seed
        self.target_fraction = target_fraction
        self.users = np.flatnonzero(train.lengths() >= 2)

    def __len__(self) -> int:
        return -(-len(self.users) // self.batch_size)

    def batch(self, epoch: int, step: int) -> UserTargetsBatch:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.users))
        users = self.users[order[step * self.batch_size : (step + 1) * self.batch_size]]
        rows, items = self.train.gather(users)
        rng = step_rng(self.seed, epoch, step)
        target = rng.random(len(items)) < self.target_fraction
        # Every user keeps at least one input item and gets at least one target: of each
        # user's items in a random order, the first is forced to input and the last to target.
        order = np.lexsort((rng.random(len(items)), rows))
        sorted_rows = rows[order]
        target[order[np.r_[True, sorted_rows[1:] != sorted_rows[:-1]]]] = False
        target[order[np.r_[sorted_rows[1:] != sorted_rows[:-1], True]]] = True
        inputs = ~target
        indptr = np.zeros(len(users) + 1, np.int64)
        np.cumsum(np.bincount(rows[inputs], minlength=len(users)), out=indptr[1:])
        batch = UserBatch(
            torch.from_numpy(users), torch.from_numpy(indptr), torch.from_numpy(items[inputs])
        )
        return UserTargetsBatch(
            batch, torch.from_numpy(rows[target]), torch.from_numpy(items[target])
        )


class SequenceBatches:
    """Users with at least two training items, in a seeded order per epoch."""

    def __init__(self, train: Interactions, batch_size: int, seed: int, max_len: int):
        self.train, self.batch_size, self.seed, self.max_len = train, batch_size, seed, max_len
        self.users = np.flatnonzero(train.lengths() >= 2)

    def __len__(self) -> int:
        return -(-len(self.users) // self.batch_size)

    def batch(self, epoch: int, step: int) -> SequenceBatch:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.users))
        users = self.users[order[step * self.batch_size : (step + 1) * self.batch_size]]
        pad = self.train.n_items
        ends = self.train.indptr[users + 1]
        starts = np.maximum(self.train.indptr[users], ends - (self.max_len + 1))
        lengths = ends - starts  # >= 2
        t = int(lengths.max()) - 1
        inputs = np.full((len(users), t), pad, np.int64)
        targets = np.full((len(users), t), pad, np.int64)
        for b, (s, e) in enumerate(
            zip(starts, ends, strict=True)
        ):  # B <= batch_size rows, short slices
            seq = self.train.items[s:e]
            inputs[b, t - len(seq) + 1 :] = seq[:-1]
            targets[b, t - len(seq) + 1 :] = seq[1:]
        return SequenceBatch(
            torch.from_numpy(users), torch.from_numpy(inputs), torch.from_numpy(targets)
        )

    def target_counts(self) -> np.ndarray:
        """(n_items,) how often each item is a training target (for the in-batch log-Q)."""
        lengths = self.train.lengths()
        first = self.train.indptr[:-1]
        is_first = np.zeros(self.train.nnz, bool)
        is_first[first[lengths > 0]] = True
        return np.bincount(self.train.items[~is_first], minlength=self.train.n_items)
