"""Chronological user sequences in the Amazon format of P5 / S3-Rec / TIGER.

One line per user: ``userASIN itemASIN itemASIN ...``, oldest item first.  Policies:

- Items are numbered in order of first appearance over the file (users in file order); users
  in file order.  For Amazon beauty this reproduces the S3-Rec integer ids (S3-Rec counts from
  1: its id is our dense id + 1).  Both maps are kept on the Dataset (``user_ids``,
  ``item_ids``).
- Repeats are kept: a user who consumes an item twice has it twice in the sequence (repeat
  consumption is meaningful for next-item prediction); their count is logged.
- The split is leave-one-out (``splits.leave_one_out``): last item test, second last valid.
  A user with 2 items gets a test target but no validation target; a user with a single item
  or none is a DataError naming the line, as is a user with two lines.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from hirex.data.interactions import DataError, Dataset, IdMap, Interactions, read_data_text
from hirex.data.item_text import load_item_text
from hirex.data.splits import leave_one_out

log = logging.getLogger(__name__)

FORMAT = "one line per user: `user item item ...`, items in chronological order"


def load_sequences(
    path: str | os.PathLike,
    *,
    item_text_path: str | os.PathLike | None = None,
    name: str | None = None,
) -> Dataset:
    """Load a sequence file as a "sequence" Dataset with a leave-one-out split.

    ``item_text_path`` (optional): an ``itemASIN keyword text`` file, see ``load_item_text``.
    ``name`` defaults to the folder name for a file called ``sequences.txt``, else the stem.
    """
    path = Path(path)
    text = read_data_text(path, FORMAT)
    rows = [(number, line.split()) for number, line in enumerate(text.split("\n"), start=1)]
    rows = [(number, tokens) for number, tokens in rows if tokens]

    users = [tokens[0] for _, tokens in rows]
    line_numbers = np.array([number for number, _ in rows], dtype=np.int64)
    lengths = np.fromiter((len(tokens) - 1 for _, tokens in rows), np.int64, len(rows))
    short = np.flatnonzero(lengths < 2)
    if len(short):
        i = short[0]
        problem = "has no items" if lengths[i] == 0 else "has a single item"
        raise DataError(
            f"{path}:{line_numbers[i]}: user {users[i]!r} {problem} ({len(short)} such lines); "
            "leave-one-out needs at least 2 items per user (the last is the test target, "
            "the rest its history): remove these users or add their items"
        )
    user_ids = _unique_users(path, users, line_numbers)
    item_ids, items = IdMap.from_first_appearance([t for _, tokens in rows for t in tokens[1:]])

    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    seqs = Interactions(len(rows), len(item_ids), indptr, items)
    repeats = seqs.nnz - seqs.collapse_duplicates().nnz
    if repeats:
        log.info(
            "%s: kept %d repeated (user, item) interactions (sequences keep repeats)", path, repeats
        )

    train, valid, test = leave_one_out(seqs, user_ids=user_ids)
    item_text = load_item_text(item_text_path, item_ids) if item_text_path is not None else None
    if name is None:
        name = path.parent.name if path.name == "sequences.txt" else path.stem
    dataset = Dataset(name, "sequence", train, valid, test, user_ids, item_ids, item_text)
    log.info("loaded %s", dataset.summary())
    return dataset


def _unique_users(path: Path, users: list[str], line_numbers: np.ndarray) -> IdMap:
    first_line: dict[str, int] = {}
    for user, number in zip(users, line_numbers.tolist(), strict=True):
        if user in first_line:
            raise DataError(
                f"{path}:{number}: user {user!r} already has a line (line {first_line[user]}); "
                "put the whole sequence of a user on one line"
            )
        first_line[user] = number
    return IdMap(np.asarray(users))
