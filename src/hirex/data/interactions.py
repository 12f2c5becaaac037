"""Per-user interaction lists in CSR form, dense-id maps, and the split dataset."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp

from hirex.atomic_files import atomic_write_text


class DataError(ValueError):
    """Bad input data; the message names the file, the line and the fix where known."""


@dataclass(frozen=True)
class Interactions:
    """Items of each user as one CSR structure.

    indptr: (n_users + 1,) int64; the items of user u are ``items[indptr[u]:indptr[u+1]]``.
    items: (nnz,) int64 dense item ids, in the user's order (chronological for sequences).
    weights: (nnz,) float32 or None.  timestamps: (nnz,) float64 or None.
    """

    n_users: int
    n_items: int
    indptr: np.ndarray
    items: np.ndarray
    weights: np.ndarray | None = None
    timestamps: np.ndarray | None = None

    def __post_init__(self) -> None:
        assert self.indptr.shape == (self.n_users + 1,), "indptr must have n_users + 1 entries"
        assert self.indptr[0] == 0 and self.indptr[-1] == len(self.items)
        if len(self.items):
            assert self.items.min() >= 0 and self.items.max() < self.n_items

    # ---- construction -------------------------------------------------------
    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int]], n_items: int) -> Interactions:
        lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
        indptr = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        items = (
            np.concatenate([np.asarray(x, dtype=np.int64) for x in lists])
            if indptr[-1]
            else np.zeros(0, dtype=np.int64)
        )
        return cls(len(lists), n_items, indptr, items)

    @classmethod
    def from_pairs(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        n_users: int,
        n_items: int,
        weights: np.ndarray | None = None,
        timestamps: np.ndarray | None = None,
    ) -> Interactions:
        """Group (user, item) pairs by user; stable, so input order (or time order) is kept."""
        users = np.asarray(users, dtype=np.int64)
        order = np.lexsort((timestamps,)) if timestamps is not None else None
        if order is not None:
            order = order[np.argsort(users[order], kind="stable")]
        else:
            order = np.argsort(users, kind="stable")
        counts = np.bincount(users, minlength=n_users)
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(
            n_users,
            n_items,
            indptr,
            np.asarray(items, dtype=np.int64)[order],
            None if weights is None else np.asarray(weights, dtype=np.float32)[order],
            None if timestamps is None else np.asarray(timestamps, dtype=np.float64)[order],
        )

    @classmethod
    def empty(cls, n_users: int, n_items: int) -> Interactions:
        return cls(n_users, n_items, np.zeros(n_users + 1, np.int64), np.zeros(0, np.int64))

    # ---- views --------------------------------------------------------------
    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def lengths(self) -> np.ndarray:
        """(n_users,) int64 number of items per user."""
        return np.diff(self.indptr)

    def user_items(self, user: int) -> np.ndarray:
        return self.items[self.indptr[user] : self.indptr[user + 1]]

    def gather(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The items of ``users`` flattened: (rows, items), each (n,) int64, where rows[j] is
        the position in ``users`` that items[j] belongs to.  Vectorised, no loop over users."""
        users = np.asarray(users, dtype=np.int64)
        starts = self.indptr[users]
        lengths = self.indptr[users + 1] - starts
        rows = np.repeat(np.arange(len(users), dtype=np.int64), lengths)
        within = np.arange(len(rows), dtype=np.int64) - np.repeat(
            np.cumsum(lengths) - lengths, lengths
        )
        return rows, self.items[np.repeat(starts, lengths) + within]

    def users(self) -> np.ndarray:
        """(nnz,) int64 user id of every entry."""
        return np.repeat(np.arange(self.n_users, dtype=np.int64), self.lengths())

    def active_users(self) -> np.ndarray:
        """Ids of users with at least one item."""
        return np.flatnonzero(self.lengths() > 0)

    def item_counts(self) -> np.ndarray:
        """(n_items,) int64 number of entries per item."""
        return np.bincount(self.items, minlength=self.n_items)

    def to_csr(self, binary: bool = True) -> sp.csr_matrix:
        """(n_users, n_items) sparse matrix; duplicates are summed, then clipped to 1 if binary."""
        data = (
            np.ones(self.nnz, np.float32)
            if binary or self.weights is None
            else self.weights.astype(np.float32)
        )
        m = sp.csr_matrix((data, self.items, self.indptr), shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        if binary:
            m.data[:] = 1.0
        return m

    def concat(self, other: Interactions) -> Interactions:
        """Per-user concatenation: self's items of a user, then other's (e.g. train + valid)."""
        if (self.n_users, self.n_items) != (other.n_users, other.n_items):
            raise ValueError("cannot concatenate interactions of different shapes")
        users = np.concatenate([self.users(), other.users()])
        items = np.concatenate([self.items, other.items])
        rank = np.concatenate([np.zeros(self.nnz, np.int8), np.ones(other.nnz, np.int8)])
        order = np.lexsort((np.arange(len(users)), rank, users))
        indptr = self.indptr + other.indptr

        def _cat(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
            return None if a is None or b is None else np.concatenate([a, b])[order]

        return Interactions(
            self.n_users,
            self.n_items,
            indptr,
            items[order],
            _cat(self.weights, other.weights),
            _cat(self.timestamps, other.timestamps),
        )

    def collapse_duplicates(self) -> Interactions:
        """One entry per (user, item): the first occurrence's position is kept, weights are
        summed and the earliest timestamp kept.  ``self.nnz - result.nnz`` is the number of
        rows collapsed.  This is the duplicate policy of "set" data; sequences keep repeats.
        """
        if self.nnz == 0:
            return self
        key = self.users() * np.int64(self.n_items) + self.items
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
        if len(starts) == self.nnz:
            return self
        first = order[starts]  # position of each (user, item)'s first occurrence
        back = np.argsort(first, kind="stable")  # group index in original entry order
        keep = np.zeros(self.nnz, dtype=bool)
        keep[first] = True
        weights = timestamps = None
        if self.weights is not None:
            weights = np.add.reduceat(self.weights[order].astype(np.float64), starts)[back]
            weights = weights.astype(np.float32)
        if self.timestamps is not None:
            timestamps = np.minimum.reduceat(self.timestamps[order], starts)[back]
        kept = self.select_entries(keep)
        return Interactions(
            self.n_users, self.n_items, kept.indptr, kept.items, weights, timestamps
        )

    def select_entries(self, keep: np.ndarray) -> Interactions:
        """Keep the entries where the (nnz,) bool mask is true, order preserved."""
        counts = np.bincount(self.users()[keep], minlength=self.n_users)
        indptr = np.zeros(self.n_users + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        return Interactions(
            self.n_users,
            self.n_items,
            indptr,
            self.items[keep],
            None if self.weights is None else self.weights[keep],
            None if self.timestamps is None else self.timestamps[keep],
        )


@dataclass(frozen=True)
class IdMap:
    """Dense id -> the user's original id.  ``raw[i]`` is the original id of dense id i."""

    raw: np.ndarray
    _lookup: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._lookup.update({v: i for i, v in enumerate(self.raw.tolist())})
        if len(self._lookup) != len(self.raw):
            raise DataError("IdMap has duplicate original ids")

    def __len__(self) -> int:
        return len(self.raw)

    @classmethod
    def from_first_appearance(cls, values: Sequence) -> tuple[IdMap, np.ndarray]:
        """Number distinct values in order of first appearance; returns the map and dense ids."""
        codes, uniques = _factorize(values)
        return cls(np.asarray(uniques)), codes

    def to_dense(self, raw_ids: Sequence) -> np.ndarray:
        """Original ids -> dense ids; unknown ids raise a KeyError naming them."""
        out = np.empty(len(raw_ids), dtype=np.int64)
        missing = []
        for i, r in enumerate(raw_ids):
            j = self._lookup.get(_coerce(r, self.raw))
            if j is None:
                missing.append(r)
                j = -1
            out[i] = j
        if missing:
            raise KeyError(f"unknown ids {missing[:10]!r} ({len(missing)} in all)")
        return out

    def find(self, raw_ids: Sequence) -> np.ndarray:
        """Original ids -> (n,) int64 dense ids, ``-1`` where an id is unknown (vectorised)."""
        import pandas as pd

        values = np.asarray(raw_ids)
        if self.raw.dtype.kind in "iu" and values.dtype.kind in "UOS":
            values = pd.to_numeric(pd.Series(values.astype(str)), errors="coerce").to_numpy()
        elif self.raw.dtype.kind in "UO" and values.dtype.kind not in "UO":
            values = values.astype(str)
        return pd.Index(self.raw).get_indexer(values).astype(np.int64)

    def to_raw(self, dense_ids: np.ndarray) -> list:
        return self.raw[np.asarray(dense_ids, dtype=np.int64)].tolist()

    def save(self, path: str | os.PathLike) -> None:
        payload = {"format": "hirex-idmap", "version": 1, "ids": self.raw.tolist()}
        atomic_write_text(path, json.dumps(payload))

    @classmethod
    def load(cls, path: str | os.PathLike) -> IdMap:
        payload = json.loads(Path(path).read_text())
        if payload.get("format") != "hirex-idmap" or payload.get("version") != 1:
            raise DataError(f"{path}: not a hirex id map of format version 1")
        return cls(np.asarray(payload["ids"]))


def _coerce(value, raw: np.ndarray):
    """Make a query id comparable with the stored ids (CLI ids arrive as strings)."""
    if raw.dtype.kind in "iu" and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    if raw.dtype.kind in "UO" and not isinstance(value, str):
        return str(value)
    return value.item() if isinstance(value, np.generic) else value


def _factorize(values: Sequence) -> tuple[np.ndarray, list]:
    import pandas as pd

    codes, uniques = pd.factorize(pd.Series(values), sort=False)
    return codes.astype(np.int64), list(uniques)


def read_data_text(path: str | os.PathLike, expected: str) -> str:
    """The text of a data file, or a DataError naming the file, the problem and the format.

    ``expected`` describes the format for the message, e.g. "one line per user: `user item ...`".
    A file with nothing but whitespace counts as empty.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found; expected a file with {expected}")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file; expected a file with {expected}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the file ({err.strerror})") from err
    try:
        text = data.decode("utf-8-sig")  # a leading byte-order mark is dropped
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte {data[err.start]:#x}); "
            f"save the file as UTF-8 with {expected}"
        ) from err
    if not text.strip():
        raise DataError(f"{path}: file is empty; expected {expected}")
    return text


Kind = Literal["set", "sequence"]


@dataclass(frozen=True)
class Dataset:
    """A split dataset in dense ids.

    ``train`` is what the model trains on; ``valid`` holds targets carved out of the training
    data for early stopping and model selection; ``test`` holds the final targets.  For a
    ``sequence`` dataset the items of a user are chronological and ``valid``/``test`` hold the
    next item(s) after ``train``.  ``history("test")`` is what a model may see when ranking
    for the test split: train followed by valid.
    """

    name: str
    kind: Kind
    train: Interactions
    valid: Interactions
    test: Interactions
    user_ids: IdMap | None = None
    item_ids: IdMap | None = None
    item_text: list[str] | None = None
    cold_items: np.ndarray | None = None
    """Dense ids of items held out of train and valid (``splits.hold_out_items``), or None."""

    @property
    def n_users(self) -> int:
        return self.train.n_users

    @property
    def n_items(self) -> int:
        return self.train.n_items

    def history(self, split: Literal["valid", "test"]) -> Interactions:
        """What the model may use (and what is masked) when ranking for ``split``."""
        if split == "valid":
            return self.train
        if split == "test":
            return self.train.concat(self.valid)
        raise ValueError(f"unknown split {split!r}; choose 'valid' or 'test'")

    def targets(self, split: Literal["valid", "test"]) -> Interactions:
        if split not in ("valid", "test"):
            raise ValueError(f"unknown split {split!r}; choose 'valid' or 'test'")
        return self.valid if split == "valid" else self.test

    def summary(self) -> str:
        return (
            f"{self.name}: {self.n_users:,} users, {self.n_items:,} items, "
            f"{self.train.nnz:,} train / {self.valid.nnz:,} valid / {self.test.nnz:,} test "
            f"interactions ({self.kind})"
        )
