"""load_sequences and load_item_text: known answers, bad input, Amazon beauty / sports."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from hirex.data.interactions import DataError, IdMap
from hirex.data.item_text import load_item_text
from hirex.data.sequences import load_sequences

TINY = "alice b a c d\nbob c b\n\ncarol a a e a\n"

# The first five lines of S3-Rec's Beauty.txt (1-based `user item item ...`), as released with
# S3-Rec and copied by later work (e.g. salesforce/ICLRec data/Beauty.txt).
S3REC_BEAUTY_HEAD = [
    [1, 1, 2, 3, 4, 5],
    [2, 6, 7, 8, 9, 10, 4, 11],
    [3, 4, 12, 13, 14, 15, 16, 17, 18, 19],
    [4, 20, 21, 22, 23, 4, 24],
    [5, 4, 25, 26, 27, 28, 29, 30, 31, 32],
]


def _lists(data) -> list[list[int]]:
    return [data.user_items(u).tolist() for u in range(data.n_users)]


def test_known_answer(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(TINY)
    ds = load_sequences(path)
    assert ds.name == "tiny" and ds.kind == "sequence"
    assert ds.user_ids.raw.tolist() == ["alice", "bob", "carol"]
    # Items numbered by first appearance over the file, users in file order.
    assert ds.item_ids.raw.tolist() == ["b", "a", "c", "d", "e"]
    assert _lists(ds.train) == [[0, 1], [2], [1, 1]]
    assert _lists(ds.valid) == [[2], [], [4]]
    assert _lists(ds.test) == [[3], [0], [1]]
    assert _lists(ds.history("test")) == [[0, 1, 2], [2], [1, 1, 4]]
    assert ds.item_text is None


def test_repeats_are_kept_and_counted(tmp_path, caplog):
    path = tmp_path / "tiny.txt"
    path.write_text(TINY)
    with caplog.at_level(logging.INFO, logger="hirex.data.sequences"):
        ds = load_sequences(path)
    assert ds.train.nnz + ds.valid.nnz + ds.test.nnz == 10
    assert "kept 2 repeated (user, item) interactions" in caplog.text


def test_ids_come_back_in_original_form(tmp_path):
    path = tmp_path / "sequences.txt"
    path.write_text(TINY)
    ds = load_sequences(path)
    assert ds.name == tmp_path.name
    ds.item_ids.save(tmp_path / "items.json")
    items = IdMap.load(tmp_path / "items.json")
    assert items.to_raw(ds.test.items) == ["d", "b", "a"]
    assert ds.user_ids.to_dense(["carol"]).tolist() == [2]


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("u1 a b\nu2\n", 2, "user 'u2' has no items"),
        ("u1 a b\n\nu2 a\n", 3, "user 'u2' has a single item"),
        ("u1 a b\nu2 a b\nu1 c d\n", 3, r"user 'u1' already has a line \(line 1\)"),
    ],
)
def test_bad_input_names_file_line_and_problem(tmp_path, text, line, problem):
    path = tmp_path / "seq.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"seq\.txt:{line}: {problem}"):
        load_sequences(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: file not found; expected .*user item"):
        load_sequences(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match=r"empty\.txt: file is empty"):
        load_sequences(tmp_path / "empty.txt")


def test_item_text(tmp_path, caplog):
    ids = IdMap(np.array(["a", "b", "c"]))
    path = tmp_path / "item_text.txt"
    path.write_text("b  blue  shoes \nzz unknown item\na red hat\nb second line\nyy\nc\n")
    with caplog.at_level(logging.INFO, logger="hirex.data.item_text"):
        texts = load_item_text(path, ids)
    assert texts == ["red hat", "blue  shoes", ""]
    assert "ignored 2 lines for items not in the dataset (e.g. 'zz')" in caplog.text
    assert "ignored 1 repeated lines" in caplog.text
    assert "1 of 3 items have no text" in caplog.text


def test_sequences_with_item_text(tmp_path):
    (tmp_path / "s.txt").write_text("u x y z\n")
    (tmp_path / "t.txt").write_text("z zed\nx ex\n")
    ds = load_sequences(tmp_path / "s.txt", item_text_path=tmp_path / "t.txt", name="n")
    assert ds.name == "n" and ds.item_text == ["ex", "", "zed"]


@pytest.mark.parametrize(
    ("name", "users", "items", "interactions"),
    [("beauty", 22_363, 12_101, 198_502), ("sports", 35_598, 18_357, 296_337)],
)
def test_amazon_counts_match_the_readme(shared_data, name, users, items, interactions):
    folder = shared_data / "amazon" / name
    ds = load_sequences(folder / "sequences.txt", item_text_path=folder / "item_text.txt")
    assert ds.name == name
    assert (ds.n_users, ds.n_items) == (users, items)
    assert ds.train.nnz + ds.valid.nnz + ds.test.nnz == interactions
    assert ds.valid.nnz == ds.test.nnz == users  # every user has 5+ items
    assert len(ds.item_text) == items and sum(1 for t in ds.item_text if t) >= items - 1


def test_beauty_reproduces_the_s3rec_ids(shared_data):
    path = shared_data / "amazon" / "beauty" / "sequences.txt"
    ds = load_sequences(path)
    first_line = path.read_text().split("\n", 1)[0].split()
    assert ds.user_ids.raw[0] == first_line[0]
    assert ds.item_ids.raw[0] == first_line[1]  # dense id 0 is the first item of line 1
    assert ds.item_ids.to_raw(ds.test.user_items(0)) == first_line[-1:]
    full = ds.history("test").concat(ds.test)
    for user, row in enumerate(S3REC_BEAUTY_HEAD):
        assert [user + 1] + (full.user_items(user) + 1).tolist() == row
