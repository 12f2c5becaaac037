"""Seeded synthetic interactions with a known hierarchical structure, for tests and demos.

The generative process (all of it recorded in ``SyntheticTruth``, the known answer):

1. Catalogue.  ``n_topics * n_subtopics`` subtopics; subtopic ``s`` belongs to topic
   ``s // n_subtopics``.  Every subtopic gets at least one item, the rest of the items are
   spread over subtopics with Dirichlet(1) shares, so subtopic sizes vary.  Item ids are a
   random permutation (ids carry no structure).  Inside a subtopic the item of popularity
   rank r (0-based) has weight ``(r + 1) ** -popularity_exponent`` (Zipf).
2. Users.  Each user has a home topic and ``interests_per_user`` distinct interest subtopics,
   each in the home topic with probability ``topic_focus`` (else in a random topic), with
   Dirichlet(1) weights.
3. Interactions.  A user makes ``m + Poisson(interactions_per_user - m)`` draws, where
   ``m = test_per_user + valid_per_user + 1``.  A draw picks an interest by weight and an
   item of that subtopic by popularity; with probability ``noise_share`` it is replaced by
   an item drawn by popularity from the whole catalogue.  In "sequence" data consecutive
   draws keep the previous draw's interest with probability ``stickiness`` (so the recent
   past predicts the next item); in "set" data draws are independent.
4. Targets.  "set": repeated draws of an item collapse to one, then ``test_per_user`` and
   ``valid_per_user`` random distinct items of each user are held out (a user keeps at least
   one train item).  "sequence": the last ``test_per_user`` draws are the test targets, the
   ``valid_per_user`` before them the validation targets; repeats are kept.

Memory is linear in ``n_items`` plus the number of interactions: the catalogue lives in a few
arrays of length ``n_items`` (about 60 bytes per item at the peak) and users are drawn in
chunks with one seeded numpy Generator per chunk, so results do not depend on the machine.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from hirex.data.interactions import Dataset, Interactions, Kind
from hirex.data.splits import random_ranks

log = logging.getLogger(__name__)

# Draws per chunk of users: bounds the temporary memory of step 3 (about 40 bytes per draw).
_DRAWS_PER_CHUNK = 2_000_000


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of ``make_synthetic``; the defaults build a demo dataset in well under 1 s."""

    n_users: int = 5_000
    n_items: int = 2_000
    n_topics: int = 10
    n_subtopics: int = 5  # per topic
    interests_per_user: int = 3
    interactions_per_user: float = 20.0  # mean, targets included
    popularity_exponent: float = 1.0
    noise_share: float = 0.1
    topic_focus: float = 0.8
    stickiness: float = 0.5  # "sequence" only
    test_per_user: int = 1
    valid_per_user: int = 1
    seed: int = 0
    kind: Kind = "set"

    def __post_init__(self) -> None:
        n_sub = self.n_topics * self.n_subtopics
        checks = [
            (self.n_users >= 1, "n_users must be >= 1"),
            (self.n_topics >= 1 and self.n_subtopics >= 1, "n_topics, n_subtopics must be >= 1"),
            (self.n_items >= n_sub, f"n_items must be >= n_topics * n_subtopics = {n_sub}"),
            (
                1 <= self.interests_per_user <= n_sub,
                f"interests_per_user must lie in [1, n_topics * n_subtopics = {n_sub}]",
            ),
            (
                self.test_per_user >= 0 and self.valid_per_user >= 0,
                "test_per_user and valid_per_user must be >= 0",
            ),
            (
                self.interactions_per_user >= self.test_per_user + self.valid_per_user + 1,
                "interactions_per_user must be >= test_per_user + valid_per_user + 1",
            ),
            (self.popularity_exponent >= 0, "popularity_exponent must be >= 0"),
            (0 <= self.noise_share <= 1, "noise_share must lie in [0, 1]"),
            (0 <= self.topic_focus <= 1, "topic_focus must lie in [0, 1]"),
            (0 <= self.stickiness < 1, "stickiness must lie in [0, 1)"),
            (self.kind in ("set", "sequence"), "kind must be 'set' or 'sequence'"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SyntheticConfig: {message}; got {self}")

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> SyntheticConfig:
        """Strict loader: unknown keys raise a ValueError naming the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"unknown synthetic option(s) {unknown}; choose from {valid}")
        return cls(**options)


@dataclass(frozen=True)
class SyntheticTruth:
    """The known answer behind a synthetic dataset.

    item_topic, item_subtopic: (n_items,) int32.  Subtopic ids are global:
    ``topic * n_subtopics + j``.  item_popularity: (n_items,) float64 unnormalised Zipf weight
    of the item inside its subtopic.  user_topic: (n_users,) int32 home topic.
    user_interests: (n_users, interests_per_user) int32 distinct subtopic ids.
    user_interest_weights: (n_users, interests_per_user) float32, rows sum to 1.
    """

    item_topic: np.ndarray
    item_subtopic: np.ndarray
    item_popularity: np.ndarray
    user_topic: np.ndarray
    user_interests: np.ndarray
    user_interest_weights: np.ndarray
    noise_share: float

    def item_probability(self, users: np.ndarray) -> np.ndarray:
        """(B, n_items) float64: the probability that one draw of each user is each item.

        The exact generative distribution ("set" data, or the long-run average of a
        sequence): the best possible scorer.  Dense: call it for a few users at a time.
        """
        users = np.asarray(users, dtype=np.int64)
        n_sub = int(self.item_subtopic.max()) + 1
        mass = np.bincount(self.item_subtopic, weights=self.item_popularity, minlength=n_sub)
        within = self.item_popularity / mass[self.item_subtopic]
        overall = self.item_popularity / self.item_popularity.sum()
        interest = np.zeros((len(users), n_sub))
        rows = np.repeat(np.arange(len(users)), self.user_interests.shape[1])
        interest[rows, self.user_interests[users].ravel()] = self.user_interest_weights[
            users
        ].ravel()
        return (1 - self.noise_share) * interest[:, self.item_subtopic] * within + (
            self.noise_share * overall
        )


@dataclass(frozen=True)
class _Catalogue:
    """Items sorted by subtopic (position p holds item ``item_at[p]``) with cumulative weights."""

    item_at: np.ndarray  # (n_items,) int64 item id at each sorted position
    start: np.ndarray  # (S,) int64 first position of each subtopic
    stop: np.ndarray  # (S,) int64 one past the last position of each subtopic
    cum: np.ndarray  # (n_items,) float64 cumulative popularity weight over positions

    def sample_within(self, subtopics: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per entry of ``subtopics``, by popularity inside that subtopic."""
        lo = np.where(self.start > 0, self.cum[self.start - 1], 0.0)[subtopics]
        hi = self.cum[self.stop - 1][subtopics]
        pos = self._position(lo + rng.random(len(subtopics)) * (hi - lo))
        return self.item_at[np.clip(pos, self.start[subtopics], self.stop[subtopics] - 1)]

    def sample_overall(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` items by popularity over the whole catalogue."""
        pos = self._position(rng.random(n) * self.cum[-1])
        return self.item_at[np.minimum(pos, len(self.cum) - 1)]

    def _position(self, targets: np.ndarray) -> np.ndarray:
        """Inverse CDF: the first position whose cumulative weight exceeds each target."""
        # Searching in sorted order walks ``cum`` forwards instead of jumping around it at
        # random: about 8x faster for a catalogue of 10M items (memory-bound).
        order = np.argsort(targets)
        pos = np.empty(len(targets), dtype=np.int64)
        pos[order] = np.searchsorted(self.cum, targets[order], "right")
        return pos


def make_synthetic(
    cfg: SyntheticConfig | None = None,
) -> tuple[Dataset, SyntheticTruth]:
    """Draw a synthetic Dataset and the truth behind it (see the module docstring)."""
    if cfg is None:
        cfg = SyntheticConfig()
    catalogue, truth_items = _make_catalogue(cfg)
    n_chunk = max(1, int(_DRAWS_PER_CHUNK // cfg.interactions_per_user))
    starts = range(0, cfg.n_users, n_chunk)
    chunks = [
        _draw_users(cfg, catalogue, lo, min(lo + n_chunk, cfg.n_users))
        for lo in tqdm(starts, desc="synthetic users", unit="chunk", disable=len(starts) < 5)
    ]
    del catalogue

    counts = np.concatenate([c[3] for c in chunks])
    indptr = np.zeros(cfg.n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    items = np.concatenate([c[4] for c in chunks])
    truth = SyntheticTruth(
        *truth_items,
        user_topic=np.concatenate([c[0] for c in chunks]),
        user_interests=np.concatenate([c[1] for c in chunks]),
        user_interest_weights=np.concatenate([c[2] for c in chunks]),
        noise_share=cfg.noise_share,
    )
    del chunks
    data = Interactions(cfg.n_users, cfg.n_items, indptr, items)
    train, valid, test = _hold_out(data, cfg)
    dataset = Dataset("synthetic", cfg.kind, train, valid, test)
    log.debug("made %s", dataset.summary())  # the commands print the summary
    return dataset, truth


def _make_catalogue(cfg: SyntheticConfig) -> tuple[_Catalogue, tuple[np.ndarray, ...]]:
    rng = np.random.default_rng([cfg.seed, 0])
    n_sub = cfg.n_topics * cfg.n_subtopics
    sizes = 1 + rng.multinomial(cfg.n_items - n_sub, rng.dirichlet(np.ones(n_sub)))
    stop = np.cumsum(sizes)
    start = stop - sizes
    # Sorted positions: subtopic by subtopic, most popular item first.
    subtopic_at = np.repeat(np.arange(n_sub, dtype=np.int32), sizes)
    rank = np.arange(cfg.n_items, dtype=np.float64)
    rank -= start[subtopic_at]
    rank += 1.0
    weight_at = np.power(rank, -cfg.popularity_exponent, out=rank)
    item_at = rng.permutation(cfg.n_items)

    item_subtopic = np.empty(cfg.n_items, dtype=np.int32)
    item_subtopic[item_at] = subtopic_at
    del subtopic_at
    item_popularity = np.empty(cfg.n_items, dtype=np.float64)
    item_popularity[item_at] = weight_at
    cum = np.cumsum(weight_at, out=weight_at)
    item_topic = item_subtopic // np.int32(cfg.n_subtopics)
    return _Catalogue(item_at, start, stop, cum), (item_topic, item_subtopic, item_popularity)


def _draw_users(cfg: SyntheticConfig, catalogue: _Catalogue, lo: int, hi: int):
    """Users ``lo:hi``: (home topic, interests, weights, draw counts, items in draw order)."""
    rng = np.random.default_rng([cfg.seed, 1, lo])
    n = hi - lo
    home = rng.integers(0, cfg.n_topics, n).astype(np.int32)
    interests = _draw_interests(cfg, home, rng)
    weights = rng.dirichlet(np.ones(cfg.interests_per_user), n)

    floor = cfg.test_per_user + cfg.valid_per_user + 1
    counts = floor + rng.poisson(cfg.interactions_per_user - floor, n)
    owner = np.repeat(np.arange(n), counts)

    # Pick an interest per draw by weight: the first slot whose cumulative weight exceeds u.
    cum_weights = np.cumsum(weights, axis=1)
    slot = (rng.random(len(owner))[:, None] >= cum_weights[owner]).sum(axis=1)
    np.minimum(slot, cfg.interests_per_user - 1, out=slot)
    if cfg.kind == "sequence":
        # Sticky interests: a draw keeps the interest of the last "switch" before it; every
        # user's first draw is a switch, so a running maximum of switch positions suffices.
        switch = rng.random(len(owner)) >= cfg.stickiness
        switch[np.cumsum(counts) - counts] = True
        last_switch = np.maximum.accumulate(np.where(switch, np.arange(len(owner)), 0))
        slot = slot[last_switch]

    items = catalogue.sample_within(interests[owner, slot], rng)
    noise = np.flatnonzero(rng.random(len(owner)) < cfg.noise_share)
    items[noise] = catalogue.sample_overall(len(noise), rng)
    return home, interests, weights.astype(np.float32), counts, items


def _draw_interests(cfg: SyntheticConfig, home: np.ndarray, rng: np.random.Generator):
    """(n, interests_per_user) int32 distinct subtopics, mostly in each user's home topic."""
    n, k = len(home), cfg.interests_per_user
    out = np.zeros((n, k), dtype=np.int32)
    redo = np.ones((n, k), dtype=bool)
    focus = cfg.topic_focus
    for attempt in range(1_000):
        rows = np.nonzero(redo)[0]
        topic = np.where(
            rng.random(len(rows)) < focus, home[rows], rng.integers(0, cfg.n_topics, len(rows))
        )
        out[redo] = topic * cfg.n_subtopics + rng.integers(0, cfg.n_subtopics, len(rows))
        # Redraw the later copies of a subtopic that a row already holds.
        order = np.argsort(out, axis=1, kind="stable")
        ranked = np.take_along_axis(out, order, axis=1)
        redo = np.zeros((n, k), dtype=bool)
        same = ranked[:, 1:] == ranked[:, :-1]
        np.put_along_axis(redo, order[:, 1:], same, axis=1)
        if not redo.any():
            return out
        if attempt == 20:
            focus = 0.0  # the home topic has too few subtopics left: draw anywhere
    raise AssertionError("could not draw distinct interests")  # unreachable: k <= subtopics


def _hold_out(data: Interactions, cfg: SyntheticConfig):
    """(train, valid, test): random distinct items ("set") or the last draws ("sequence")."""
    if cfg.kind == "set":
        unique = data.collapse_duplicates()
        rank = random_ranks(unique, np.random.default_rng([cfg.seed, 2]))
        data = unique
    else:
        rank = data.indptr[data.users() + 1] - 1 - np.arange(data.nnz)  # from the end
    lengths = data.lengths()
    n_test = np.minimum(cfg.test_per_user, lengths - 1)
    n_valid = np.clip(lengths - 1 - n_test, 0, cfg.valid_per_user)
    owner = data.users()
    test = rank < n_test[owner]
    valid = ~test & (rank < (n_test + n_valid)[owner])
    return (
        data.select_entries(~(test | valid)),
        data.select_entries(valid),
        data.select_entries(test),
    )
