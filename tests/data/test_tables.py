"""load_table: CSV / TSV / Parquet, id maps, time order, duplicates, test files, bad input."""

from __future__ import annotations

import gzip
import logging

import numpy as np
import pandas as pd
import pytest

from hirex.data.interactions import DataError, IdMap
from hirex.data.tables import load_table

ROWS = [  # user, item, time, weight
    ("ann", "x", 3, 1.0),
    ("ann", "y", 1, 1.0),
    ("bob", "x", 2, 1.0),
    ("bob", "z", 5, 2.0),
    ("bob", "z", 6, 1.0),
    ("cy", "y", 1, 1.0),
    ("bob", "w", 4, 1.0),
]


def _frame() -> pd.DataFrame:
    return pd.DataFrame(ROWS, columns=["user", "item", "ts", "w"])


def _lists(data) -> list[list[int]]:
    return [data.user_items(u).tolist() for u in range(data.n_users)]


def _raw(ds, data) -> dict:
    """{original user: [original items]} of one split."""
    return {
        ds.user_ids.to_raw([u])[0]: ds.item_ids.to_raw(data.user_items(u))
        for u in range(data.n_users)
        if len(data.user_items(u))
    }


def test_set_table_ids_in_first_appearance_and_duplicates_collapsed(tmp_path, caplog):
    path = tmp_path / "log.csv"
    _frame().to_csv(path, index=False)
    with caplog.at_level(logging.INFO, logger="hirex.data.tables"):
        ds = load_table(path, weight_col="w", valid_per_user=0, seed=0)
    assert ds.name == "log" and ds.kind == "set"
    assert ds.user_ids.raw.tolist() == ["ann", "bob", "cy"]
    assert ds.item_ids.raw.tolist() == ["x", "y", "z", "w"]
    assert "collapsed 1 duplicate (user, item) rows" in caplog.text
    history = ds.history("test").concat(ds.test)
    assert sorted(map(sorted, _lists(history))) == [[0, 1], [0, 2, 3], [1]]
    # The duplicate (bob, z) rows are one entry with the weights summed: 2 + 1.
    z = ds.item_ids.to_dense(["z"])[0]
    weights = np.concatenate([ds.train.weights, ds.test.weights])
    items = np.concatenate([ds.train.items, ds.test.items])
    assert weights[items == z].tolist() == [3.0]
    # 20% of 2 or 3 items rounds to 0 or 1, clipped to at least 1; cy (one item) keeps it.
    assert ds.test.lengths().tolist() == [1, 1, 0]


def test_sequence_table_sorted_by_time_with_repeats_kept(tmp_path, caplog):
    path = tmp_path / "log.tsv"
    _frame().to_csv(path, index=False, sep="\t")
    with caplog.at_level(logging.INFO, logger="hirex.data.tables"):
        ds = load_table(path, time_col="ts")
    assert ds.kind == "sequence"
    assert _raw(ds, ds.train) == {"ann": ["y"], "bob": ["x", "w"], "cy": ["y"]}
    assert _raw(ds, ds.valid) == {"bob": ["z"]}
    assert _raw(ds, ds.test) == {"ann": ["x"], "bob": ["z"]}  # repeat of z kept
    assert ds.train.timestamps.tolist() == [1.0, 2.0, 4.0, 1.0]
    assert "kept 1 repeated (user, item) rows" in caplog.text
    assert "1 users have a single row" in caplog.text


def test_sequence_without_time_uses_file_order_and_valid_zero(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item\n1,10\n1,11\n1,12\n2,10\n2,13\n")
    ds = load_table(path, kind="sequence", valid_per_user=0)
    assert ds.user_ids.raw.tolist() == [1, 2] and ds.item_ids.raw.dtype.kind == "i"
    assert _raw(ds, ds.train) == {1: [10, 11], 2: [10]}
    assert _raw(ds, ds.test) == {1: [12], 2: [13]}
    assert ds.valid.nnz == 0


def test_iso_dates_and_time_ties_keep_file_order(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(
        "item,user,when\na,u,2024-01-02\nb,u,2024-01-01T12:00:00\nc,u,2024-01-02\nd,u,2023-12-31\n"
    )
    ds = load_table(path, time_col="when")
    assert _raw(ds, ds.train) == {"u": ["d", "b"]}
    assert _raw(ds, ds.valid) == {"u": ["a"]} and _raw(ds, ds.test) == {"u": ["c"]}
    assert ds.train.timestamps[0] == pd.Timestamp("2023-12-31", tz="UTC").timestamp()


def test_parquet_gz_and_sniffed_delimiters_read_the_same(tmp_path):
    frame = _frame()
    frame.to_parquet(tmp_path / "log.parquet")
    frame.to_csv(tmp_path / "semi.csv", sep=";", index=False)
    with gzip.open(tmp_path / "log.tsv.gz", "wt") as f:
        frame.to_csv(f, sep="\t", index=False)
    results = [
        load_table(tmp_path / name, time_col="ts", weight_col="w")
        for name in ["log.parquet", "semi.csv", "log.tsv.gz"]
    ]
    assert [r.name for r in results] == ["log", "semi", "log"]
    for ds in results[1:]:
        for split in ("train", "valid", "test"):
            assert np.array_equal(getattr(ds, split).items, getattr(results[0], split).items)
        assert ds.user_ids.raw.tolist() == results[0].user_ids.raw.tolist()


def test_random_holdout_is_seeded(tmp_path):
    path = tmp_path / "big.csv"
    rng = np.random.default_rng(0)
    pd.DataFrame({"user": rng.integers(0, 50, 2000), "item": rng.integers(0, 300, 2000)}).to_csv(
        path, index=False
    )
    a, b = load_table(path, seed=4), load_table(path, seed=4)
    c = load_table(path, seed=5)
    assert np.array_equal(a.test.items, b.test.items) and np.array_equal(
        a.valid.items, b.valid.items
    )
    assert not np.array_equal(a.test.items, c.test.items)
    share = a.test.nnz / (a.train.nnz + a.valid.nnz + a.test.nnz)
    assert 0.17 < share < 0.23


def test_test_file_and_round_trip_of_ids(tmp_path):
    _frame().to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "test.csv").write_text("user,item\nbob,y\ncy,x\n")
    ds = load_table(tmp_path / "train.csv", test_path=tmp_path / "test.csv")
    assert _raw(ds, ds.test) == {"bob": ["y"], "cy": ["x"]}
    assert ds.history("test").nnz == 6  # the whole train table, duplicates collapsed
    ds.user_ids.save(tmp_path / "users.json")
    ds.item_ids.save(tmp_path / "items.json")
    users, items = IdMap.load(tmp_path / "users.json"), IdMap.load(tmp_path / "items.json")
    assert users.to_raw(ds.test.active_users()) == ["bob", "cy"]
    assert items.to_raw(ds.test.items) == ["y", "x"]


def test_test_file_sequence_valid_is_last_train_item(tmp_path):
    _frame().to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "test.csv").write_text("user,item,ts\nbob,y,9\n")
    ds = load_table(tmp_path / "train.csv", time_col="ts", test_path=tmp_path / "test.csv")
    assert _raw(ds, ds.valid) == {"ann": ["x"], "bob": ["z"]}
    assert _raw(ds, ds.test) == {"bob": ["y"]}


def test_test_file_with_unknown_ids_names_them(tmp_path):
    _frame().to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "test.csv").write_text("user,item\nbob,y\ndan,x\nann,q\ndan,q\n")
    with pytest.raises(DataError) as err:
        load_table(tmp_path / "train.csv", test_path=tmp_path / "test.csv")
    message = str(err.value)
    assert "test.csv:3: the test table uses ids that are not in the train table" in message
    assert "train.csv" in message and "['dan']" in message and "['q']" in message


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("", {}, r"t\.csv: file is empty"),
        ("user,item\n", {}, r"t\.csv: the table has a header but no rows"),
        (
            "uid,iid\n1,2\n",
            {},
            r"t\.csv: missing column\(s\) \['user', 'item'\]; "
            r"the columns found are \['uid', 'iid'\]",
        ),
        ("user,item\n1,2\n", {"time_col": "ts"}, r"missing column\(s\) \['ts'\]"),
        ("user,item\nu1,a\n\nu2,\n", {}, r"t\.csv:4: empty 'item' value \(1 such rows\)"),
        ("user,item,w\nu,a,1\nu,b,heavy\n", {"weight_col": "w"}, r"t\.csv:3: 'heavy' in column"),
        (
            "user,item,ts\nu,a,2024-01-01\nu,b,yesterday\n",
            {"time_col": "ts"},
            r"t\.csv:3: cannot read 'yesterday' in column 'ts' as a timestamp",
        ),
        (  # numeric timestamps with one bad value: that row, that value
            "user,item,ts\nu,a,1\nu,b,notatime\nu,c,3\n",
            {"time_col": "ts"},
            r"t\.csv:3: 'notatime' in column 'ts' is not a timestamp \(1 such rows\)",
        ),
        (
            'user,item\n1,"2\n3,4\n',
            {},
            r"t\.csv: cannot read as a delimited text table: .*EOF inside string",
        ),
    ],
)
def test_bad_input_names_file_line_and_problem(tmp_path, text, kwargs, expected):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=expected):
        load_table(path, **kwargs)


def test_bad_paths_and_options(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        load_table(tmp_path / "nope.csv")
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"t\.xlsx: unknown table format '\.xlsx'; use one of"):
        load_table(tmp_path / "t.xlsx")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: cannot read as Parquet"):
        load_table(tmp_path / "bad.parquet")
    (tmp_path / "t.csv").write_text("user,item\n1,2\n")
    with pytest.raises(ValueError, match="unknown kind 'graph'"):
        load_table(tmp_path / "t.csv", kind="graph")
    with pytest.raises(ValueError, match="valid_per_user=2: sequence data"):
        load_table(tmp_path / "t.csv", kind="sequence", valid_per_user=2)
