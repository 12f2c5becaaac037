"""load_dataset: names, where named data is looked for, paths of every format, bad options."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from hirex.data.interactions import DataError
from hirex.data.registry import DATASET_NAMES, load_dataset


def _tiny_data_dir(root: Path) -> Path:
    (root / "gowalla").mkdir(parents=True)
    (root / "gowalla" / "train.txt").write_text("0 1 2\n1 0 2\n")
    (root / "gowalla" / "test.txt").write_text("0 0\n1 1\n")
    beauty = root / "amazon" / "beauty"
    beauty.mkdir(parents=True)
    (beauty / "sequences.txt").write_text("u1 a b c\nu2 b c\n")
    (beauty / "item_text.txt").write_text("a alpha\nc gamma\n")
    return root


def test_names():
    assert set(DATASET_NAMES) >= {"synthetic", "gowalla", "beauty", "sports"}


def test_synthetic_with_options():
    ds = load_dataset("synthetic", n_users=50, n_items=100, kind="sequence")
    assert (ds.n_users, ds.n_items, ds.kind) == (50, 100, "sequence")
    with pytest.raises(ValueError, match=r"unknown synthetic option\(s\) \['users'\]"):
        load_dataset("synthetic", users=5)


def test_named_from_data_dir_argument(tmp_path):
    root = _tiny_data_dir(tmp_path / "data")
    gowalla = load_dataset("gowalla", data_dir=root, valid_per_user=0)
    assert (gowalla.name, gowalla.n_users, gowalla.train.nnz) == ("gowalla", 2, 4)
    beauty = load_dataset("beauty", data_dir=root)
    assert beauty.name == "beauty" and beauty.kind == "sequence"
    assert beauty.item_text == ["alpha", "", "gamma"]


def test_named_from_environment_variable(tmp_path, monkeypatch):
    root = _tiny_data_dir(tmp_path / "env")
    monkeypatch.setenv("HIREX_DATA", str(root))
    assert load_dataset("gowalla").n_users == 2
    # The argument wins over the environment variable.
    with pytest.raises(DataError, match="from the data_dir argument"):
        load_dataset("gowalla", data_dir=tmp_path / "elsewhere")


def test_named_not_found_says_where_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HIREX_DATA", str(tmp_path / "cache"))
    with pytest.raises(DataError) as err:
        load_dataset("sports")
    message = str(err.value)
    assert str(tmp_path / "cache" / "amazon" / "sports" / "sequences.txt") in message
    assert "HIREX_DATA environment variable" in message
    assert "hirex data download sports" in message and "--data-dir" in message


def test_default_cache_when_nothing_is_set(tmp_path, monkeypatch):
    monkeypatch.delenv("HIREX_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match=r"\.cache/hirex/data/gowalla/train\.txt.*default"):
        load_dataset("gowalla")


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(DataError, match=r"unknown dataset 'yelp'; choose one of \['synthetic', "):
        load_dataset("yelp")
    with pytest.raises(DataError, match=r"no/such/file\.csv: no such file or folder"):
        load_dataset("no/such/file.csv")


def test_paths_of_every_format(tmp_path):
    root = _tiny_data_dir(tmp_path / "data")
    assert load_dataset(root / "gowalla").name == "gowalla"
    seq_folder = load_dataset(root / "amazon" / "beauty")
    assert seq_folder.kind == "sequence" and seq_folder.item_text is not None
    seq_file = load_dataset(str(root / "amazon" / "beauty" / "sequences.txt"), name="b")
    assert seq_file.name == "b" and seq_file.item_text is None
    frame = pd.DataFrame({"u": ["a", "a", "b", "b"], "i": [1, 2, 1, 3], "t": [1, 2, 3, 4]})
    frame.to_csv(tmp_path / "log.csv", index=False)
    frame.to_parquet(tmp_path / "log.parquet")
    for name in ["log.csv", "log.parquet"]:
        ds = load_dataset(tmp_path / name, user_col="u", item_col="i", time_col="t")
        assert (ds.kind, ds.n_users, ds.test.nnz) == ("sequence", 2, 2)


def test_bad_options_and_folders(tmp_path):
    root = _tiny_data_dir(tmp_path / "data")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['user_col'\] for gowalla"):
        load_dataset("gowalla", data_dir=root, user_col="u")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: not a dataset folder; expected train.txt"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match=r"x\.json: unknown file type"):
        load_dataset(tmp_path / "x.json")


def test_real_named_datasets(shared_data):
    gowalla = load_dataset("gowalla", data_dir=shared_data)
    assert (gowalla.n_users, gowalla.n_items, gowalla.test.nnz) == (29_858, 40_981, 217_242)
    beauty = load_dataset("beauty", data_dir=shared_data)
    assert (beauty.n_users, beauty.n_items) == (22_363, 12_101)
    assert beauty.item_text is not None
