"""Interaction tables in CSV / TSV (optionally .gz) or Parquet, with ids of any type.

A table has one row per interaction and names its columns in a header (user and item ids,
optionally a timestamp and a weight).  Policies:

- Ids (strings or integers, as pandas reads them) are numbered densely in order of first
  appearance in the train table; the maps are kept on the Dataset (``user_ids``,
  ``item_ids``) so results go back to the caller's ids.  A test table may only use ids of the
  train table.
- Kind: "sequence" when a time column is given (each user's rows sorted by time, ties in file
  order), else "set".  ``kind="sequence"`` without a time column takes the file order as time.
- Duplicates: in "set" data a repeated (user, item) row is collapsed to one (weights summed,
  earliest timestamp kept) and the count logged; in "sequence" data repeats are kept, since
  repeat consumption is meaningful.
- Split without a test table: "sequence" data is split leave-one-out (last item test, second
  last valid); a user with a single row keeps it as history and gets no target (logged).
  "set" data holds out ``test_fraction`` of each user's items at random (the last item when a
  time column is given, see ``splits.holdout_split``), then ``valid_per_user`` random items.
- Split with a test table: the whole train table is history; the validation targets are the
  last train item of each user ("sequence") or ``valid_per_user`` random items ("set").
- Timestamps: numbers (any unit), or dates in ISO 8601.  Weights: numbers.  Empty cells in
  any used column are errors naming the line.
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hirex.data.interactions import DataError, Dataset, IdMap, Interactions, Kind
from hirex.data.splits import carve_validation, holdout_split, leave_one_out, tail_mask

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

DELIMITED = {".csv": ",", ".tsv": "\t"}
PARQUET = (".parquet", ".pq")


def load_table(
    path: str | os.PathLike,
    *,
    user_col: str = "user",
    item_col: str = "item",
    time_col: str | None = None,
    weight_col: str | None = None,
    test_path: str | os.PathLike | None = None,
    test_fraction: float = 0.2,
    valid_per_user: int = 1,
    seed: int = 0,
    kind: Kind | None = None,
    name: str | None = None,
) -> Dataset:
    """Load an interaction table as a split Dataset (see the module docstring for policies).

    ``test_path``: a table with the same user and item columns holding the test split; without
    it the split is carved from ``path``.  ``name`` defaults to the file name without suffixes.
    """
    path = Path(path)
    if kind is None:
        kind = "sequence" if time_col is not None else "set"
    if kind not in ("set", "sequence"):
        raise ValueError(f"unknown kind {kind!r}; choose 'set' or 'sequence'")
    if kind == "sequence" and valid_per_user not in (0, 1):
        raise ValueError(
            f"valid_per_user={valid_per_user}: sequence data holds out one validation item "
            "per user (leave-one-out); pass 0 or 1"
        )

    table = _Table.read(path, user_col, item_col, time_col, weight_col, required_extra=True)
    user_ids, users = IdMap.from_first_appearance(table.users)
    item_ids, items = IdMap.from_first_appearance(table.items)
    data = _interactions(table, users, items, len(user_ids), len(item_ids), kind)

    if test_path is None:
        train, valid, test = _split(data, kind, test_fraction, valid_per_user, seed, path)
    else:
        test_table = _Table.read(
            Path(test_path), user_col, item_col, time_col, weight_col, required_extra=False
        )
        test_users, test_items = _known_ids(test_table, user_ids, item_ids, path)
        test = _interactions(test_table, test_users, test_items, data.n_users, data.n_items, kind)
        train, valid = _valid_from_train(data, kind, valid_per_user, seed)

    dataset = Dataset(name or _stem(path), kind, train, valid, test, user_ids, item_ids)
    log.info("loaded %s", dataset.summary())
    return dataset


@dataclass
class _Table:
    """The used columns of one table, validated; ``where(i)`` names row i in messages."""

    path: Path
    rows: np.ndarray  # (n,) 0-based data row of each kept row (blank lines dropped)
    is_parquet: bool
    users: pd.Series | None = None
    items: pd.Series | None = None
    times: np.ndarray | None = None  # (n,) float64
    weights: np.ndarray | None = None  # (n,) float32

    def where(self, i: int) -> str:
        row = int(self.rows[i])
        return f"{self.path}: row {row + 1}" if self.is_parquet else f"{self.path}:{row + 2}"

    @classmethod
    def read(
        cls,
        path: Path,
        user_col: str,
        item_col: str,
        time_col: str | None,
        weight_col: str | None,
        *,
        required_extra: bool,
    ) -> _Table:
        """Read and validate; ``required_extra``: time/weight columns must exist (else optional)."""
        frame, columns = _read_frame(path, [user_col, item_col, time_col, weight_col])
        required = [user_col, item_col]
        if required_extra:
            required += [c for c in (time_col, weight_col) if c is not None]
        missing = [c for c in required if c not in columns]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {missing}; the columns found are {columns}; "
                "name the right ones with user_col= / item_col= / time_col= / weight_col="
            )
        # Blank lines of a CSV arrive as all-empty rows: drop them, keep line numbers.
        frame = frame.dropna(how="all")
        if frame.empty:
            raise DataError(f"{path}: the table has a header but no rows")
        table = cls(path, frame.index.to_numpy(), path.name.lower().endswith(PARQUET))
        frame = frame.reset_index(drop=True)
        for col in frame.columns:
            empty = np.flatnonzero(frame[col].isna().to_numpy())
            if len(empty):
                raise DataError(
                    f"{table.where(empty[0])}: empty {col!r} value ({len(empty)} such rows); "
                    "fill it in or remove the row"
                )
        table.users, table.items = frame[user_col], frame[item_col]
        if time_col is not None and time_col in frame:
            table.times = table._timestamps(frame[time_col])
        if weight_col is not None and weight_col in frame:
            table.weights = table._numbers(frame[weight_col], "a number").astype(np.float32)
        return table

    def _numbers(self, column: pd.Series, what: str) -> np.ndarray:
        import pandas as pd

        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise DataError(
                f"{self.where(bad[0])}: {column.iloc[bad[0]]!r} in column {column.name!r} is not "
                f"{what} ({len(bad)} such rows)"
            )
        return values

    def _timestamps(self, column: pd.Series) -> np.ndarray:
        """(n,) float64: numbers as given, dates as seconds since 1970 (UTC)."""
        import pandas as pd

        if column.dtype.kind in "iufb":
            return self._numbers(column, "a timestamp")
        if column.dtype.kind != "M":
            if pd.to_numeric(column, errors="coerce").notna().any():
                # Numbers (some values are): the first that is not one is the bad row.
                return self._numbers(column, "a timestamp")
            dates = pd.to_datetime(column, errors="coerce", utc=True, format="ISO8601")
            bad = np.flatnonzero(dates.isna().to_numpy())
            if len(bad):
                raise DataError(
                    f"{self.where(bad[0])}: cannot read {column.iloc[bad[0]]!r} in column "
                    f"{column.name!r} as a timestamp ({len(bad)} such rows); use numbers or "
                    "ISO 8601 dates (2024-01-31 or 2024-01-31T12:00:00)"
                )
            column = dates
        elif column.dt.tz is None:
            column = column.dt.tz_localize("UTC")
        seconds = (column - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
        return seconds.to_numpy(dtype=np.float64)


def _read_frame(path: Path, wanted: list[str | None]):
    """The wanted columns that exist, and the list of all columns of the file."""
    import pandas as pd

    if not path.exists():
        raise DataError(f"{path}: file not found; pass the path of a CSV, TSV or Parquet table")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; pass the path of a CSV, TSV or Parquet table")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty; expected a header line naming the columns")
    lower = path.name.lower()
    wanted = [c for c in wanted if c is not None]
    try:
        if lower.endswith(PARQUET):
            import pyarrow.parquet as pq

            columns = list(pq.read_schema(path).names)
            frame = pd.read_parquet(path, columns=[c for c in wanted if c in columns])
            return frame, columns
        suffix = Path(lower.removesuffix(".gz")).suffix
        if suffix not in DELIMITED:
            raise DataError(
                f"{path}: unknown table format {suffix or '(no suffix)'!r}; "
                f"use one of {[*DELIMITED, *PARQUET]} (optionally .gz for CSV/TSV)"
            )
        sep = _sniff_delimiter(path, wanted, default=DELIMITED[suffix])
        columns = list(pd.read_csv(path, sep=sep, nrows=0).columns)
        frame = pd.read_csv(
            path,
            sep=sep,
            usecols=[c for c in wanted if c in columns],
            keep_default_na=False,
            na_values=[""],
            skip_blank_lines=False,
        )
        return frame, columns
    except DataError:
        raise
    except (ValueError, OSError, EOFError, pd.errors.ParserError) as err:
        kind = "Parquet" if lower.endswith(PARQUET) else "a delimited text table"
        raise DataError(f"{path}: cannot read as {kind}: {err}") from err


def _sniff_delimiter(path: Path, wanted: list[str], default: str) -> str:
    """The delimiter whose split of the header line names the wanted columns, else csv.Sniffer."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as f:
        sample = f.read(64 * 1024)
    header = sample.splitlines()[0] if sample else ""
    candidates = [default] + [d for d in (",", "\t", ";", "|", " ") if d != default]
    for sep in candidates:
        names = {name.strip().strip('"').strip("'") for name in header.split(sep)}
        if set(wanted[:2]) <= names:
            return sep
    try:
        return csv.Sniffer().sniff(sample, delimiters="".join(candidates)).delimiter
    except csv.Error:
        return default


def _interactions(
    table: _Table, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, kind: str
) -> Interactions:
    data = Interactions.from_pairs(users, items, n_users, n_items, table.weights, table.times)
    unique = data.collapse_duplicates()
    repeats = data.nnz - unique.nnz
    if kind == "set" and repeats:
        log.info(
            "%s: collapsed %d duplicate (user, item) rows (set data: weights summed)",
            table.path,
            repeats,
        )
        return unique
    if repeats:
        log.info(
            "%s: kept %d repeated (user, item) rows (sequences keep repeats)", table.path, repeats
        )
    return data


def _known_ids(test: _Table, user_ids: IdMap, item_ids: IdMap, train_path: Path):
    """Dense ids of the test table's rows; ids unknown to the train table are a DataError."""
    users, items = user_ids.find(test.users), item_ids.find(test.items)
    bad_users, bad_items = np.flatnonzero(users < 0), np.flatnonzero(items < 0)
    if len(bad_users) or len(bad_items):
        first = min([*bad_users[:1], *bad_items[:1]])
        unknown = []
        for what, column, bad in [
            ("users", test.users, bad_users),
            ("items", test.items, bad_items),
        ]:
            ids = list(dict.fromkeys(column.iloc[bad].tolist()))
            if ids:
                unknown.append(f"{len(ids)} {what} {ids[:5]}")
        raise DataError(
            f"{test.where(first)}: the test table uses ids that are not in the train table "
            f"{train_path}: {', '.join(unknown)}; a test table may only use users and items of "
            "the train table: remove those rows"
        )
    return users, items


def _split(
    data: Interactions, kind: str, test_fraction: float, valid_per_user: int, seed: int, path: Path
):
    if kind == "set":
        rest, test = holdout_split(data, test_fraction=test_fraction, seed=seed)
        train, valid = carve_validation(rest, valid_per_user, valid_per_user + 1, seed=seed)
        return train, valid, test
    # Sequences: users with a single row keep it as history; the others go leave-one-out.
    single = np.repeat(data.lengths() == 1, data.lengths())
    if single.any():
        log.info(
            "%s: %d users have a single row; it stays history, with no target",
            path,
            int(single.sum()),
        )
    train, valid, test = leave_one_out(data.select_entries(~single))
    train = train.concat(data.select_entries(single))
    if valid_per_user == 0:
        train, valid = train.concat(valid), Interactions.empty(data.n_users, data.n_items)
    return train, valid, test


def _valid_from_train(data: Interactions, kind: str, valid_per_user: int, seed: int):
    if kind == "set":
        return carve_validation(data, valid_per_user, valid_per_user + 1, seed=seed)
    if valid_per_user == 0:
        return data, Interactions.empty(data.n_users, data.n_items)
    last = tail_mask(data, data.lengths() >= 2)
    return data.select_entries(~last), data.select_entries(last)


def _stem(path: Path) -> str:
    name = path.name
    lower = name.lower().removesuffix(".gz")
    for suffix in (*PARQUET, *DELIMITED):
        if lower.endswith(suffix):
            return name[: len(lower) - len(suffix)]
    return path.stem
