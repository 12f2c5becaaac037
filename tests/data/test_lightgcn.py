"""load_lightgcn: tiny files with known answers, every bad input, and the real Gowalla split."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hirex.data.interactions import DataError
from hirex.data.lightgcn import load_lightgcn


def _write(folder: Path, train: str, test: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text(train)
    (folder / "test.txt").write_text(test)
    return folder


def _pairs_reference(path: Path) -> set[tuple[int, int]]:
    """The plain reading of a LightGCN file: one (user, item) pair per token after the first."""
    pairs = set()
    for line in path.read_text().splitlines():
        tokens = [int(t) for t in line.split()]
        pairs.update((tokens[0], item) for item in tokens[1:])
    return pairs


def _pairs(data) -> set[tuple[int, int]]:
    return set(zip(data.users().tolist(), data.items.tolist(), strict=True))


def _keys(pairs: set[tuple[int, int]]) -> np.ndarray:
    return np.sort(np.array([u << 32 | i for u, i in pairs], dtype=np.int64))


def test_known_answer(tmp_path):
    folder = _write(tmp_path / "tiny", "0 1 2 3\n1 0\n\n3 4 4 2\n", "0 4\n1 2 3\n3 0\n")
    ds = load_lightgcn(folder, valid_per_user=1, seed=0)
    assert ds.name == "tiny" and ds.kind == "set"
    assert (ds.n_users, ds.n_items) == (4, 5)  # user 2 has no line; item 4 is the max id
    history = ds.history("test")
    assert _pairs(history) == {(0, 1), (0, 2), (0, 3), (1, 0), (3, 4), (3, 2)}  # 4 4 collapsed
    assert _pairs(ds.test) == {(0, 4), (1, 2), (1, 3), (3, 0)}
    # Users with 2+ train items give one random item to valid; user 1 (one item) keeps it.
    assert ds.valid.lengths().tolist() == [1, 0, 0, 1]
    assert not (_pairs(ds.valid) & _pairs(ds.train))


def test_no_validation_split(tmp_path):
    folder = _write(tmp_path / "d", "0 1 2\n1 2\n", "0 0\n1 1\n")
    ds = load_lightgcn(folder, valid_per_user=0)
    assert ds.valid.nnz == 0 and ds.train.nnz == 3


def test_seed_changes_only_the_validation_carve(tmp_path):
    folder = _write(tmp_path / "d", "0 1 2 3 4 5\n1 2 3 4 5 6\n", "0 0\n1 1\n")
    a, b = load_lightgcn(folder, seed=0), load_lightgcn(folder, seed=0)
    assert np.array_equal(a.valid.items, b.valid.items)
    others = {tuple(load_lightgcn(folder, seed=s).valid.items.tolist()) for s in range(10)}
    assert len(others) > 1


def test_duplicates_collapse_with_a_logged_count(tmp_path, caplog):
    folder = _write(tmp_path / "d", "0 1 1 1 2\n", "0 3 3\n")
    with caplog.at_level(logging.INFO, logger="hirex.data.lightgcn"):
        ds = load_lightgcn(folder, valid_per_user=0)
    assert ds.train.items.tolist() == [1, 2] and ds.test.items.tolist() == [3]
    assert "train.txt: collapsed 2 duplicate" in caplog.text
    assert "test.txt: collapsed 1 duplicate" in caplog.text


def test_test_line_without_items_is_allowed(tmp_path, caplog):
    folder = _write(tmp_path / "d", "0 1\n1 2\n", "0 2\n1\n")
    with caplog.at_level(logging.INFO, logger="hirex.data.lightgcn"):
        ds = load_lightgcn(folder)
    assert ds.test.lengths().tolist() == [1, 0]
    assert "1 users have a line without items" in caplog.text


def test_cold_test_items_and_overlap_warn(tmp_path, caplog):
    folder = _write(tmp_path / "d", "0 1\n1 2\n", "0 7 1\n1 2\n")
    with caplog.at_level(logging.WARNING, logger="hirex.data.lightgcn"):
        ds = load_lightgcn(folder, valid_per_user=0)
    assert ds.n_items == 8 and 7 in ds.test.items.tolist()
    assert "1 test interactions are with 1 items that never appear in train.txt" in caplog.text
    assert "2 test interactions repeat a train item of the same user" in caplog.text


@pytest.mark.parametrize(
    ("train", "test", "where", "problem"),
    [
        ("0 1\n1 x2\n", "0 1\n", "train.txt:2", "'x2' is not an integer id"),
        ("0 1\n", "0 1.5\n", "test.txt:1", "'1.5' is not an integer id"),
        ("0 1\n\n1 -4\n", "0 1\n", "train.txt:3", "negative id -4"),
        ("-1 1\n", "0 1\n", "train.txt:1", "negative id -1"),
        ("0 1\n1 3000000000\n", "0 1\n", "train.txt:2", "id 3000000000 is out of range"),
        ("0 1\n1 99999999999999999999999\n", "0 1\n", "train.txt:2", "out of range"),
        ("0 1\n1\n", "0 1\n", "train.txt:2", "user 1 has no items"),
        ("0 1\n1 2\n0 3\n", "0 1\n", "train.txt:3", r"user 0 already has a line \(line 1\)"),
        ("0 1\n", "0 1\n5 2\n", "test.txt:2", "user 5 has test items but no line in train"),
        ("0 1\n", "\n\n", "test.txt", "file is empty"),
        ("", "0 1\n", "train.txt", "file is empty"),
    ],
)
def test_bad_input_names_file_line_and_problem(tmp_path, train, test, where, problem):
    folder = _write(tmp_path / "d", train, test)
    with pytest.raises(DataError, match=rf"{where}: .*{problem}"):
        load_lightgcn(folder)


def test_missing_files_and_folder(tmp_path):
    with pytest.raises(DataError, match="nowhere: no such folder; pass the folder that holds"):
        load_lightgcn(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train.txt").write_text("0 1\n")
    with pytest.raises(DataError, match=r"half/test\.txt: file not found"):
        load_lightgcn(tmp_path / "half")


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 30), min_size=1, max_size=10), min_size=1, max_size=12),
    st.sampled_from([" ", "  ", "\t"]),
)
def test_fast_parser_matches_reference(tmp_path_factory, lists, sep):
    folder = tmp_path_factory.mktemp("d")
    train = "".join(f"{u}{sep}{sep.join(map(str, items))} \n" for u, items in enumerate(lists))
    _write(folder, train, "0 0\n")
    ds = load_lightgcn(folder, valid_per_user=0)
    assert _pairs(ds.train) == _pairs_reference(folder / "train.txt")


@pytest.fixture(scope="module")
def gowalla(shared_data):
    return load_lightgcn(shared_data / "gowalla")


def test_gowalla_counts_match_the_readme(gowalla):
    assert (gowalla.n_users, gowalla.n_items) == (29_858, 40_981)
    assert gowalla.train.nnz + gowalla.valid.nnz == 810_128
    assert gowalla.test.nnz == 217_242
    assert gowalla.valid.nnz == 29_858  # every user has 2+ train items
    assert (gowalla.test.lengths() > 0).all()
    assert gowalla.history("test").to_csr().multiply(gowalla.test.to_csr()).nnz == 0


def test_gowalla_matches_the_reference_parser(gowalla, shared_data):
    for split, file in [("history", "train.txt"), ("test", "test.txt")]:
        data = gowalla.history("test") if split == "history" else gowalla.test
        got = np.sort(data.users() << 32 | data.items)
        assert np.array_equal(got, _keys(_pairs_reference(shared_data / "gowalla" / file)))
