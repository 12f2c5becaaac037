"""The LightGCN / NGCF text format (Gowalla, Yelp2018, Amazon-Book splits of He et al. 2020).

A dataset is a folder with ``train.txt`` and ``test.txt``; each line is ``user item item ...`` in
0-based integer ids, one line per user.  Item order on a line carries no meaning: the data is a
"set" dataset.  Policies, all logged when they apply:

- Duplicates: a (user, item) pair repeated within a file counts once (the count is logged).
- Every line of ``train.txt`` needs at least one item (a DataError names the line).  A line of
  ``test.txt`` with only a user id is allowed: that user has no test target.
- A user may have only one line per file; a user with test items needs a line in ``train.txt``.
- Test items that never appear in ``train.txt`` (cold items) are allowed and logged as a
  warning: they are part of the catalogue (ids count towards ``n_items``) and stay targets.
  Gowalla has none.  Test items that also sit in the same user's train line are kept but
  logged as a warning too: they are masked when ranking, so no model can retrieve them.
- ``n_users`` and ``n_items`` are the largest id in either file plus one; ids must lie in
  [0, 2**31).
- The validation split is carved at random out of ``train.txt`` (``splits.carve_validation``);
  ``history("test")`` is then train + valid, i.e. all of ``train.txt``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hirex.data.interactions import DataError, Dataset, Interactions, read_data_text
from hirex.data.splits import carve_validation

log = logging.getLogger(__name__)

FORMAT = "one line per user: `user item item ...` in 0-based integer ids"
MAX_ID = 2**31 - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class _UserLines:
    """The parsed non-blank lines of one file."""

    path: Path
    users: np.ndarray  # (L,) int64 user id of each line
    line_numbers: np.ndarray  # (L,) int64 1-based line number of each line
    n_items: np.ndarray  # (L,) int64 number of items on each line
    items: np.ndarray  # (sum n_items,) int64, line after line

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        return np.repeat(self.users, self.n_items), self.items


def load_lightgcn(
    directory: str | os.PathLike,
    *,
    valid_per_user: int = 1,
    seed: int = 0,
    name: str | None = None,
) -> Dataset:
    """Load ``train.txt`` / ``test.txt`` from ``directory`` as a "set" Dataset.

    ``valid_per_user`` random items of each training user with more than that many items become
    the validation split (0: no validation split).  Ids are used as they are (no IdMap).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(
            f"{directory}: no such folder; pass the folder that holds train.txt and test.txt "
            f"({FORMAT})"
        )
    train_lines = _read_user_lines(directory / "train.txt", allow_no_items=False)
    test_lines = _read_user_lines(directory / "test.txt", allow_no_items=True)
    n_users = int(max(train_lines.users.max(), test_lines.users.max())) + 1
    n_items = int(max(_max_or(train_lines.items, -1), _max_or(test_lines.items, -1))) + 1

    _check_test_users(train_lines, test_lines)
    train = _collapse(Interactions.from_pairs(*train_lines.pairs(), n_users, n_items), "train.txt")
    test = _collapse(Interactions.from_pairs(*test_lines.pairs(), n_users, n_items), "test.txt")
    _warn_about_test_items(directory, train, test)

    train, valid = carve_validation(train, valid_per_user, valid_per_user + 1, seed=seed)
    dataset = Dataset(name or directory.name, "set", train, valid, test)
    log.info("loaded %s", dataset.summary())
    return dataset


def _read_user_lines(path: Path, *, allow_no_items: bool) -> _UserLines:
    text = read_data_text(path, FORMAT)
    lines = text.split("\n")
    counts = np.fromiter((len(line.split()) for line in lines), np.int64, len(lines))
    # Fast path: numpy parses every whitespace-separated integer of the file at once; any
    # token that is not an integer makes it raise, and the slow path finds the line.
    try:
        values = np.fromstring(text, dtype=np.int64, sep=" ")
    except ValueError:
        values = None
    if values is None or len(values) != counts.sum():
        _raise_bad_token(path, lines)

    nonblank = np.flatnonzero(counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[nonblank]
    counts = counts[nonblank]
    line_numbers = nonblank + 1
    _check_range(path, values, counts, line_numbers)

    users = values[starts]
    is_item = np.ones(len(values), dtype=bool)
    is_item[starts] = False
    data = _UserLines(path, users, line_numbers, counts - 1, values[is_item])

    empty = np.flatnonzero(data.n_items == 0)
    if len(empty) and not allow_no_items:
        i = empty[0]
        raise DataError(
            f"{path}:{line_numbers[i]}: user {users[i]} has no items ({len(empty)} such lines); "
            "every user in train.txt needs at least one item: remove the line or add the items"
        )
    if len(empty):
        log.info(
            "%s: %d users have a line without items; they get no test target", path, len(empty)
        )
    _check_unique_users(data)
    return data


def _raise_bad_token(path: Path, lines: list[str]) -> None:
    for number, line in enumerate(lines, start=1):
        for token in line.split():
            if not _INTEGER.fullmatch(token):
                raise DataError(
                    f"{path}:{number}: {token!r} is not an integer id; "
                    f"a LightGCN file holds {FORMAT}"
                )
    raise DataError(f"{path}: could not parse the file as integers; expected {FORMAT}")


def _check_range(path: Path, values: np.ndarray, counts: np.ndarray, line_numbers: np.ndarray):
    bad = np.flatnonzero((values < 0) | (values > MAX_ID))
    if not len(bad):
        return
    line = line_numbers[np.searchsorted(np.cumsum(counts), bad[0], side="right")]
    value = values[bad[0]]
    if value < 0:
        problem, fix = f"negative id {value}", "ids must be 0-based non-negative integers"
    else:
        problem = f"id {value} is out of range (ids must be below 2**31)"
        fix = "remap the ids to dense 0-based integers"
    raise DataError(f"{path}:{line}: {problem} ({len(bad)} such ids in the file); {fix}")


def _check_unique_users(data: _UserLines) -> None:
    order = np.argsort(data.users, kind="stable")
    same = np.flatnonzero(data.users[order][1:] == data.users[order][:-1])
    if len(same):
        first, second = order[same[0]], order[same[0] + 1]
        raise DataError(
            f"{data.path}:{data.line_numbers[second]}: user {data.users[second]} already has a "
            f"line (line {data.line_numbers[first]}); put all items of a user on one line"
        )


def _check_test_users(train: _UserLines, test: _UserLines) -> None:
    has_items = test.n_items > 0
    orphan = np.flatnonzero(has_items & ~np.isin(test.users, train.users))
    if len(orphan):
        i = orphan[0]
        raise DataError(
            f"{test.path}:{test.line_numbers[i]}: user {test.users[i]} has test items but no "
            f"line in train.txt, so it would be ranked from an empty history ({len(orphan)} such "
            "users); add the user's train items to train.txt or remove the line"
        )


def _collapse(data: Interactions, file_name: str) -> Interactions:
    unique = data.collapse_duplicates()
    if unique.nnz < data.nnz:
        log.info(
            "%s: collapsed %d duplicate (user, item) rows (set data counts each pair once)",
            file_name,
            data.nnz - unique.nnz,
        )
    return unique


def _warn_about_test_items(directory: Path, train: Interactions, test: Interactions) -> None:
    cold = test.item_counts() > 0
    cold &= train.item_counts() == 0
    if cold.any():
        n_rows = int(cold[test.items].sum())
        log.warning(
            "%s: %d test interactions are with %d items that never appear in train.txt "
            "(e.g. item %d); they stay as targets, but no collaborative model can learn them",
            directory / "test.txt",
            n_rows,
            int(cold.sum()),
            int(np.flatnonzero(cold)[0]),
        )
    overlap = train.to_csr().multiply(test.to_csr()).nnz
    if overlap:
        log.warning(
            "%s: %d test interactions repeat a train item of the same user; they are masked "
            "when ranking, so no model can retrieve them",
            directory / "test.txt",
            overlap,
        )


def _max_or(values: np.ndarray, default: int) -> int:
    return int(values.max()) if len(values) else default
