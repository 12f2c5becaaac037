"""Load a dataset by name ("gowalla", "beauty", ...) or by path, whatever its format.

Named datasets live in a data folder with the layout that ``hirex data download`` writes and
that the project's shared data has (``hirex.data.download`` defines it)::

    <data>/gowalla/train.txt, test.txt             LightGCN format
    <data>/amazon/beauty/sequences.txt, item_text.txt
    <data>/amazon/sports/sequences.txt, item_text.txt

The data folder is the ``data_dir`` argument, else the ``HIREX_DATA`` environment variable,
else ``~/.cache/hirex/data``.  A name (a ``str``) wins over a folder of the same name in the
working directory: write ``./gowalla`` or pass a ``Path`` to mean the folder.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hirex.data.download import CACHE_ENV, DATASETS, DEFAULT_CACHE, dataset_dir
from hirex.data.interactions import DataError, Dataset
from hirex.data.lightgcn import load_lightgcn
from hirex.data.sequences import load_sequences
from hirex.data.synthetic import SyntheticConfig, make_synthetic
from hirex.data.tables import DELIMITED, PARQUET, load_table

DATASET_NAMES = ("synthetic", *DATASETS)


def load_dataset(
    name_or_path: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    **options: Any,
) -> Dataset:
    """Load a named dataset or the dataset at a path; ``options`` go to the format's loader.

    Names: "synthetic" (options: the fields of ``SyntheticConfig``), "gowalla" (options of
    ``load_lightgcn``), "beauty", "sports" (``load_sequences``).  Paths: a LightGCN folder
    (train.txt + test.txt), a folder with sequences.txt (+ item_text.txt), a sequence file
    ``*.txt``, or a CSV / TSV / Parquet table (options of ``load_table``).
    """
    key = str(name_or_path)
    is_name = isinstance(name_or_path, str)  # a Path object is always a path
    if is_name and key == "synthetic":
        return make_synthetic(SyntheticConfig.from_dict(options))[0]
    if is_name and key in DATASETS:
        return _load_named(key, data_dir, options)
    path = Path(key).expanduser()
    if path.is_dir():
        return _load_folder(path, options)
    if path.is_file():
        return _load_file(path, options)
    if os.sep in key or "/" in key or path.suffix:
        raise DataError(f"{path}: no such file or folder")
    raise DataError(
        f"unknown dataset {key!r}; choose one of {list(DATASET_NAMES)}, or pass the path of a "
        "LightGCN folder (train.txt, test.txt), a sequences file, or a CSV/TSV/Parquet table"
    )


def _data_source(data_dir: str | os.PathLike | None) -> str:
    """Where the data folder came from, for messages."""
    if data_dir is not None:
        return "the data_dir argument"
    if os.environ.get(CACHE_ENV):
        return f"the {CACHE_ENV} environment variable"
    return f"the default {DEFAULT_CACHE}, as {CACHE_ENV} is unset"


def _load_named(name: str, data_dir: str | os.PathLike | None, options: dict) -> Dataset:
    spec = DATASETS[name]
    folder = dataset_dir(name, data_dir)
    files = [remote.dest_name for remote in spec.files]
    missing = [folder / f for f in files if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"dataset {name!r} not found: looked for {', '.join(map(str, missing))} "
            f"(data folder from {_data_source(data_dir)}); run `hirex data download {name}` "
            f"or pass --data-dir (data_dir=) naming the folder that holds {spec.subdir}/"
        )
    options = {"name": name, **options}
    if "train.txt" in files:
        return _call(load_lightgcn, name, folder, options)
    if "item_text.txt" in files:
        options.setdefault("item_text_path", folder / "item_text.txt")
    return _call(load_sequences, name, folder / "sequences.txt", options)


def _load_folder(path: Path, options: dict) -> Dataset:
    if (path / "train.txt").is_file() and (path / "test.txt").is_file():
        return _call(load_lightgcn, str(path), path, options)
    if (path / "sequences.txt").is_file():
        if (path / "item_text.txt").is_file():
            options = {"item_text_path": path / "item_text.txt", **options}
        return _call(load_sequences, str(path), path / "sequences.txt", options)
    raise DataError(
        f"{path}: not a dataset folder; expected train.txt and test.txt (LightGCN format) or "
        f"sequences.txt (one line per user: `user item item ...`); found "
        f"{sorted(p.name for p in path.iterdir())[:10]}"
    )


def _load_file(path: Path, options: dict) -> Dataset:
    lower = path.name.lower().removesuffix(".gz")
    if lower.endswith((*PARQUET, *DELIMITED)):
        return _call(load_table, str(path), path, options)
    if lower.endswith(".txt"):
        return _call(load_sequences, str(path), path, options)
    raise DataError(
        f"{path}: unknown file type; pass a CSV/TSV/Parquet table "
        f"({[*DELIMITED, *PARQUET]}), a sequences .txt file, or a dataset folder"
    )


def _call(loader: Callable[..., Dataset], what: str, path: Path, options: dict) -> Dataset:
    """Call ``loader(path, **options)``, rejecting unknown options with the valid ones."""
    params = inspect.signature(loader).parameters
    valid = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for {what} ({loader.__name__}); choose from {valid}"
        )
    return loader(path, **options)
