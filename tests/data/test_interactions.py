"""Interactions.collapse_duplicates, IdMap.find / save / load, read_data_text."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hirex.data.interactions import DataError, IdMap, Interactions, read_data_text


def _collapse_reference(data: Interactions) -> list[list[tuple[int, float, float]]]:
    """Per user: (item, summed weight, earliest time) in order of first occurrence."""
    out = []
    for u in range(data.n_users):
        seen: dict[int, list[float]] = {}
        for j in range(data.indptr[u], data.indptr[u + 1]):
            item = int(data.items[j])
            w, t = float(data.weights[j]), float(data.timestamps[j])
            if item in seen:
                seen[item][0] += w
                seen[item][1] = min(seen[item][1], t)
            else:
                seen[item] = [w, t]
        out.append([(i, w, t) for i, (w, t) in seen.items()])
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 5), max_size=8), min_size=1, max_size=6),
    st.integers(0, 2**16),
)
def test_collapse_duplicates_matches_reference(lists, seed):
    rng = np.random.default_rng(seed)
    base = Interactions.from_lists(lists, n_items=6)
    data = Interactions(
        base.n_users,
        base.n_items,
        base.indptr,
        base.items,
        rng.integers(1, 4, base.nnz).astype(np.float32),
        rng.integers(0, 100, base.nnz).astype(np.float64),
    )
    got = data.collapse_duplicates()
    want = _collapse_reference(data)
    for u in range(data.n_users):
        s = slice(got.indptr[u], got.indptr[u + 1])
        rows = list(
            zip(
                got.items[s].tolist(),
                got.weights[s].tolist(),
                got.timestamps[s].tolist(),
                strict=True,
            )
        )
        assert rows == want[u]


def test_collapse_duplicates_without_weights_keeps_first_order():
    data = Interactions.from_lists([[3, 1, 3, 2, 1], [], [0, 0]], n_items=4)
    got = data.collapse_duplicates()
    assert got.items.tolist() == [3, 1, 2, 0]
    assert got.indptr.tolist() == [0, 3, 3, 4]
    assert got.weights is None and got.timestamps is None


def test_idmap_find_unknown_is_minus_one_and_coerces_types():
    strings = IdMap(np.array(["a", "b", "c"]))
    assert strings.find(["c", "zz", "a"]).tolist() == [2, -1, 0]
    ints = IdMap(np.array([10, 20, 30]))
    assert ints.find(["30", "x", 10]).tolist() == [2, -1, 0]
    assert ints.find(np.array([20, 99])).tolist() == [1, -1]


@pytest.mark.parametrize(
    "raw", [np.array(["B004756YJA", "u 1", "é"]), np.array([7, -3, 2**40])], ids=["str", "int"]
)
def test_idmap_save_load_round_trip(tmp_path, raw):
    ids = IdMap(raw)
    ids.save(tmp_path / "ids.json")
    back = IdMap.load(tmp_path / "ids.json")
    assert back.raw.tolist() == raw.tolist()
    assert back.to_raw(np.array([2, 0])) == [raw[2].item(), raw[0].item()]
    assert back.to_dense(raw.tolist()).tolist() == [0, 1, 2]


def test_read_data_text_errors_name_file_and_problem(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: file not found; expected a file with FMT"):
        read_data_text(tmp_path / "nope.txt", "FMT")
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(DataError, match=r"blank\.txt: file is empty; expected FMT"):
        read_data_text(tmp_path / "blank.txt", "FMT")
    (tmp_path / "latin.txt").write_bytes(b"u 1 2\nu\xe9 3\n")
    with pytest.raises(DataError, match=r"latin\.txt:2: not UTF-8 text"):
        read_data_text(tmp_path / "latin.txt", "FMT")
    with pytest.raises(DataError, match="is a folder"):
        read_data_text(tmp_path, "FMT")
