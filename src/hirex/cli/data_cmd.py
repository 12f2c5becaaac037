"""``hirex data``: download the public benchmarks and list what the cache holds."""

from __future__ import annotations

import argparse
from pathlib import Path

from hirex.data.download import (
    CACHE_ENV,
    DATASETS,
    DEFAULT_CACHE,
    dataset_dir,
    download_dataset,
    verify_dataset,
)
from hirex.data.interactions import DataError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hirex data {download,list}`` to the top-level subcommands."""
    parser = subparsers.add_parser(
        "data",
        help="download and check the public benchmark datasets",
        description="Download the public benchmarks into a local cache and check them.",
    )
    actions = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    download = actions.add_parser(
        "download",
        help="download datasets, resuming partial downloads, and verify them",
        description=(
            "Download datasets into the cache: each file goes to FILE.part (resumed on the next "
            "run if interrupted), is verified against the expected counts and fingerprint, "
            "then renamed into place. Datasets already present and verified are skipped."
        ),
    )
    download.add_argument(
        "names",
        nargs="+",
        metavar="NAME",
        help=f"dataset(s) to download, among: {', '.join(DATASETS)}",
    )
    _add_cache_dir(download)
    download.add_argument(
        "--base-url",
        metavar="URL",
        default=None,
        help=(
            "fetch each file from URL/<its path in the upstream repository>, e.g. a mirror "
            "(default: each dataset's upstream raw GitHub URL; `hirex data list` shows them)"
        ),
    )
    download.add_argument(
        "--force",
        action="store_true",
        help="download again even when the files are present and verify (default: skip them)",
    )

    listing = actions.add_parser(
        "list",
        help="list the datasets, where they go and whether they are present and verified",
        description="List the datasets, their folder in the cache and their status.",
    )
    _add_cache_dir(listing)
    parser.set_defaults(func=run)


def _add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        "--cache-dir",  # its earlier name, still accepted
        dest="cache_dir",
        metavar="DIR",
        default=None,
        help=f"folder holding the datasets, as in `hirex train --data-dir` (default: ${CACHE_ENV} "
        f"if set, else {DEFAULT_CACHE}); --cache-dir is the same option",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``hirex data download`` or ``hirex data list``; returns the exit status."""
    if args.data_command == "download":
        return _download(args)
    if args.data_command == "list":
        return _list(args)
    raise ValueError(f"unknown data action {args.data_command!r}; choose 'download' or 'list'")


def _download(args: argparse.Namespace) -> int:
    names = list(dict.fromkeys(args.names))
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise DataError(f"unknown dataset(s) {unknown}; choose among {sorted(DATASETS)}")
    for name in names:
        directory = download_dataset(name, args.cache_dir, args.base_url, args.force)
        print(f"{name}: {directory}")
    return 0


def _list(args: argparse.Namespace) -> int:
    rows = [("NAME", "STATUS", "FOLDER", "SOURCE")]
    problems = []
    for name, spec in DATASETS.items():
        directory = dataset_dir(name, args.cache_dir)
        status, problem = _status(name, directory)
        rows.append((name, status, str(directory), spec.base_url))
        if problem:
            problems.append(problem)
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True))
            + "  "
            + row[3]
        )
    for problem in problems:
        print(problem)
    return 0


def _status(name: str, directory: Path) -> tuple[str, str | None]:
    """(status, reason it fails verification or None); status is one of 'verified',
    'not downloaded', 'partial download', 'incomplete', 'fails verification'."""
    spec = DATASETS[name]
    present = [(directory / f.dest_name).is_file() for f in spec.files]
    if not all(present):
        if any((directory / f"{f.dest_name}.part").is_file() for f in spec.files):
            return "partial download", None
        return ("incomplete" if any(present) else "not downloaded"), None
    try:
        verify_dataset(name, directory)
    except DataError as err:
        return "fails verification", str(err)
    return "verified", None
