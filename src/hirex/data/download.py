"""Download the public benchmarks into a local cache, resumably, and verify what was parsed.

Each dataset is a :class:`DatasetSpec`: an upstream base URL (a raw GitHub URL), a folder
under the cache, and :class:`RemoteFile` entries, each with the :class:`Contents` its parsed
file must have.  The local layout equals the shared benchmark folder, so one loader reads
either::

    <cache>/gowalla/train.txt, test.txt
    <cache>/amazon/beauty/sequences.txt, item_text.txt      (same for sports)

Integrity is checked on the parsed data, not on bytes (copies of the gowalla split list a
user's items in different orders).  A file verifies when its counts and its fingerprint
equal the registry's:

- ``user_items`` (``user item item ...``, order carries no meaning): users = distinct user
  ids, items = distinct item ids, interactions = (user, item) entries; fingerprint = sha256
  of the (user, item) pairs sorted by user then item, as little-endian int64 pairs.
- ``sequences`` (``user item item ...``, chronological): the same counts over string ids;
  fingerprint = sha256 of the lines' whitespace-separated tokens, each line written as its
  tokens joined by one space plus ``\\n`` (blank lines skipped), so order matters.
- ``item_text`` (``item text ...``): items = non-blank lines; fingerprint = sha256 of the
  sorted item ids, each followed by ``\\n``.

Downloads go to ``<file>.part`` with HTTP Range requests to resume, are verified, and only
then renamed to the final name: a final name always holds a verified file.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from hirex.data.interactions import DataError

__all__ = [
    "CACHE_ENV",
    "DATASETS",
    "Contents",
    "DatasetSpec",
    "RemoteFile",
    "dataset_dir",
    "default_cache_dir",
    "download_dataset",
    "read_contents",
    "verify_dataset",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "HIREX_DATA"
DEFAULT_CACHE = "~/.cache/hirex/data"

LIGHTGCN_URL = "https://raw.githubusercontent.com/gusye1234/LightGCN-PyTorch/master"
IDGENREC_URL = "https://raw.githubusercontent.com/agiresearch/IDGenRec/main"

FileFormat = Literal["user_items", "sequences", "item_text"]

# Network behaviour; module-level so tests can shorten the waits.
TIMEOUT_S = 60.0
RETRIES = 3
BACKOFF_S = 1.0
CHUNK_BYTES = 1 << 16
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Contents:
    """Counts and fingerprint of one parsed data file (see the module docstring)."""

    users: int
    items: int
    interactions: int
    fingerprint: str

    def describe(self) -> str:
        if self.users == self.interactions == 0:
            return f"{self.items:,} items"
        return f"{self.users:,} users, {self.items:,} items, {self.interactions:,} interactions"


@dataclass(frozen=True)
class RemoteFile:
    """One upstream file: ``url`` relative to the dataset's base URL, saved as ``dest_name``."""

    url: str
    dest_name: str
    format: FileFormat
    expected: Contents


@dataclass(frozen=True)
class DatasetSpec:
    """A downloadable dataset: where it comes from, where it goes, what it must contain."""

    name: str
    base_url: str
    subdir: str
    files: tuple[RemoteFile, ...]
    description: str = ""

    def url_of(self, remote: RemoteFile, base_url: str | None = None) -> str:
        """Full URL of ``remote``; ``base_url`` replaces the upstream base when given."""
        return f"{(base_url or self.base_url).rstrip('/')}/{remote.url.lstrip('/')}"


def _amazon(name: str, folder: str, sequences: Contents, item_text: Contents) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        base_url=IDGENREC_URL,
        subdir=f"amazon/{name}",
        files=(
            RemoteFile(
                f"rec_datasets/{folder}/user_sequence.txt", "sequences.txt", "sequences", sequences
            ),
            RemoteFile(
                f"rec_datasets/{folder}/item_generative_indexing_phase_0.txt",
                "item_text.txt",
                "item_text",
                item_text,
            ),
        ),
        description=f"Amazon 2014 5-core {folder}, P5/TIGER leave-one-out split (IDGenRec)",
    )


# Expected contents computed from ../shared/data, which equals upstream (its README);
# tests/data/test_download.py recomputes them whenever that folder is present.
DATASETS: dict[str, DatasetSpec] = {
    "gowalla": DatasetSpec(
        name="gowalla",
        base_url=LIGHTGCN_URL,
        subdir="gowalla",
        files=(
            RemoteFile(
                "data/gowalla/train.txt",
                "train.txt",
                "user_items",
                Contents(
                    29858,
                    40981,
                    810128,
                    "d453bfc18e5613d6310ab05f7ebc1c6c724ee913dc31c769d1c8743c678d27f7",
                ),
            ),
            RemoteFile(
                "data/gowalla/test.txt",
                "test.txt",
                "user_items",
                Contents(
                    29858,
                    38546,
                    217242,
                    "dac9527045e35230c82e4a5c54715b5e60f8a7bbe935ffdb4ee2ebe21c32ddb7",
                ),
            ),
        ),
        description="Gowalla check-ins, LightGCN train/test split",
    ),
    "beauty": _amazon(
        "beauty",
        "Beauty",
        Contents(
            22363, 12101, 198502, "47197cbee7bdc1896926e10d96b807dce0aecb9a1f0c2ccc887c21090237c9b7"
        ),
        Contents(0, 12101, 0, "ff7c5e0d694a9cfb19187e398134aca28a2841b1ef6e545bc1a1f908723b7872"),
    ),
    "sports": _amazon(
        "sports",
        "Sports",
        Contents(
            35598, 18357, 296337, "771ce98798c545aab4b48b30ecc1b7ebd045c41d287b87f07abbd773e11b6042"
        ),
        Contents(0, 18357, 0, "c3229d67c80d40c2958eaa03556615a42d2108d6df239ada3668193e42350f3a"),
    ),
}


# ---- cache layout ----------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$HIREX_DATA`` when set and non-empty, else ``~/.cache/hirex/data``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def _spec(name: str, registry: Mapping[str, DatasetSpec] | None) -> DatasetSpec:
    registry = DATASETS if registry is None else registry
    if name not in registry:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(registry)}")
    return registry[name]


def dataset_dir(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    registry: Mapping[str, DatasetSpec] | None = None,
) -> Path:
    """The folder that holds dataset ``name`` under ``cache_dir`` (default: the user cache)."""
    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    return root / _spec(name, registry).subdir


# ---- parsing and fingerprints ----------------------------------------------------------


def read_contents(path: str | os.PathLike, fmt: FileFormat) -> Contents:
    """Parse ``path`` as ``fmt`` and return its counts and fingerprint.

    Raises DataError naming the file and line when the file cannot be parsed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    rows = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1)]
    rows = [(n, tokens) for n, tokens in rows if tokens]
    if fmt == "user_items":
        return _user_items_contents(path, rows)
    if fmt == "sequences":
        return _sequences_contents(rows)
    if fmt == "item_text":
        ids = sorted(tokens[0] for _, tokens in rows)
        digest = hashlib.sha256("".join(f"{i}\n" for i in ids).encode("utf-8"))
        return Contents(0, len(ids), 0, digest.hexdigest())
    raise ValueError(
        f"unknown file format {fmt!r}; choose 'user_items', 'sequences' or 'item_text'"
    )


def _user_items_contents(path: Path, rows: list[tuple[int, list[str]]]) -> Contents:
    users: list[int] = []
    lengths: list[int] = []
    items: list[int] = []
    for lineno, tokens in rows:
        try:
            ids = [int(t) for t in tokens]
        except ValueError:
            raise DataError(
                f"{path}:{lineno}: expected integer ids 'user item item ...', "
                f"got {' '.join(tokens)[:80]!r}"
            ) from None
        if min(ids) < 0:
            raise DataError(f"{path}:{lineno}: negative id in {' '.join(tokens)[:80]!r}")
        users.append(ids[0])
        lengths.append(len(ids) - 1)
        items.extend(ids[1:])
    pair_users = np.repeat(np.asarray(users, dtype=np.int64), lengths)
    pair_items = np.asarray(items, dtype=np.int64)
    order = np.lexsort((pair_items, pair_users))
    pairs = np.stack([pair_users[order], pair_items[order]], axis=1).astype("<i8")
    return Contents(
        users=len(set(users)),
        items=len(np.unique(pair_items)),
        interactions=len(pair_items),
        fingerprint=hashlib.sha256(pairs.tobytes()).hexdigest(),
    )


def _sequences_contents(rows: list[tuple[int, list[str]]]) -> Contents:
    digest = hashlib.sha256()
    users: set[str] = set()
    items: set[str] = set()
    interactions = 0
    for _, tokens in rows:
        digest.update((" ".join(tokens) + "\n").encode("utf-8"))
        users.add(tokens[0])
        items.update(tokens[1:])
        interactions += len(tokens) - 1
    return Contents(len(users), len(items), interactions, digest.hexdigest())


def _mismatch(path: Path, remote: RemoteFile) -> str | None:
    """Why ``path`` does not hold ``remote.expected``, or None when it verifies."""
    try:
        got = read_contents(path, remote.format)
    except DataError as err:
        return str(err)
    want = remote.expected
    counts = [
        f"{label} count {a:,}, expected {b:,}"
        for label, a, b in [
            ("user", got.users, want.users),
            ("item", got.items, want.items),
            ("interaction", got.interactions, want.interactions),
        ]
        if a != b
    ]
    if counts:
        return "; ".join(counts)
    if got.fingerprint != want.fingerprint:
        return (
            f"content fingerprint {got.fingerprint[:16]}... differs from the expected "
            f"{want.fingerprint[:16]}... (same counts, different ids)"
        )
    return None


def verify_dataset(
    name: str,
    directory: str | os.PathLike,
    *,
    registry: Mapping[str, DatasetSpec] | None = None,
) -> None:
    """Check that ``directory`` (e.g. ``<cache>/gowalla``) holds dataset ``name`` exactly.

    Raises DataError naming the file, what differs and the fix.
    """
    spec = _spec(name, registry)
    directory = Path(directory)
    for remote in spec.files:
        path = directory / remote.dest_name
        if not path.is_file():
            raise DataError(
                f"{name}: {path} is missing; run `hirex data download {name}` "
                f"(or point at a folder holding {', '.join(f.dest_name for f in spec.files)})"
            )
        reason = _mismatch(path, remote)
        if reason is not None:
            raise DataError(
                f"{name}: {path} does not verify: {reason}; "
                f"run `hirex data download {name} --force` to fetch it again"
            )


# ---- downloading -----------------------------------------------------------------------


class _ShortRead(Exception):
    """The connection closed before the announced length; the .part keeps what arrived."""


_NETWORK_ERRORS = (
    urllib.error.URLError,
    ConnectionError,
    TimeoutError,
    http.client.HTTPException,
    _ShortRead,
)


def download_dataset(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    base_url: str | None = None,
    force: bool = False,
    *,
    registry: Mapping[str, DatasetSpec] | None = None,
) -> Path:
    """Download dataset ``name`` into ``<cache_dir>/<subdir>`` and return that folder.

    Files that are already present and verify are skipped unless ``force``.  ``base_url``
    replaces the upstream base URL (files are fetched from ``<base_url>/<upstream path>``).
    ``registry`` replaces :data:`DATASETS`.  Raises DataError naming the dataset, the URL,
    the file and the fix.
    """
    spec = _spec(name, registry)
    directory = dataset_dir(name, cache_dir, registry=registry)
    directory.mkdir(parents=True, exist_ok=True)
    fetched = 0
    for remote in spec.files:
        dest = directory / remote.dest_name
        if not force and dest.is_file():
            reason = _mismatch(dest, remote)
            if reason is None:
                continue
            logger.warning("%s: %s does not verify (%s); downloading it again", name, dest, reason)
        _download_file(spec, remote, spec.url_of(remote, base_url), dest, fresh=force)
        fetched += 1
    if fetched == 0:
        logger.info("%s: already present and verified in %s", name, directory)
    return directory


def _download_file(
    spec: DatasetSpec, remote: RemoteFile, url: str, dest: Path, fresh: bool
) -> None:
    """Fetch ``url`` into ``dest.part``, verify it, then rename it to ``dest``."""
    part = dest.with_name(dest.name + ".part")
    label = f"{spec.name}/{remote.dest_name}"
    if fresh:
        part.unlink(missing_ok=True)
    restarted = False
    while True:
        resumed = part.exists() and part.stat().st_size > 0
        logger.info("%s: %s %s", label, "resuming" if resumed else "downloading", url)
        _fetch_with_retries(spec, remote, url, part, label)
        reason = _mismatch(part, remote)
        if reason is None:
            os.replace(part, dest)
            logger.info("%s: verified (%s)", label, remote.expected.describe())
            return
        part.unlink()
        if not resumed or restarted:
            break
        # The earlier part may come from another version of the file: start over once.
        logger.warning("%s: resumed download does not verify (%s); restarting", label, reason)
        restarted = True
    raise DataError(
        f"{spec.name}: {remote.dest_name} downloaded from {url} does not verify: {reason}. "
        f"Deleted the download {part}; nothing was written to {dest}. The transfer was "
        f"cut short or upstream changed: run `hirex data download {spec.name}` again, "
        f"or pass --base-url pointing at a copy of the expected files"
    )


def _fetch_with_retries(
    spec: DatasetSpec, remote: RemoteFile, url: str, part: Path, label: str
) -> None:
    """Fetch into ``part``, retrying connection errors and 5xx answers with backoff."""
    for attempt in range(RETRIES + 1):
        try:
            _fetch_once(url, part, label)
            return
        except urllib.error.HTTPError as err:
            err.close()
            if err.code not in _RETRY_STATUS or attempt == RETRIES:
                raise DataError(
                    f"{spec.name}: {url} answered HTTP {err.code} {err.reason} for "
                    f"{remote.dest_name}. The URL is wrong or the file moved upstream: "
                    f"check --base-url (default {spec.base_url}; files are fetched from "
                    f"<base-url>/{remote.url}), or place the files in {part.parent} by hand"
                ) from None
            reason = f"HTTP {err.code} {err.reason}"
        except _NETWORK_ERRORS as err:
            if attempt == RETRIES:
                kept = f"kept {part} to resume" if part.exists() else "nothing was kept"
                raise DataError(
                    f"{spec.name}: could not download {remote.dest_name} from {url} after "
                    f"{RETRIES + 1} attempts ({err}); {kept}. Check the network and run "
                    f"`hirex data download {spec.name}` again, or pass --base-url pointing "
                    f"at a reachable copy"
                ) from None
            reason = str(err) or type(err).__name__
        delay = BACKOFF_S * 2**attempt
        logger.warning("%s: %s; retrying in %.1f s", label, reason, delay)
        time.sleep(delay)


def _fetch_once(url: str, part: Path, label: str) -> None:
    """One request: append to ``part`` from its current size, or rewrite it from the start."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "hirex", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S
        )
    except urllib.error.HTTPError as err:
        if err.code != 416 or not offset:
            raise
        total = _content_range(err.headers.get("Content-Range", ""))[2]
        err.close()
        if total == offset:
            return  # the part already holds the whole file; verification decides
        part.unlink()
        return _fetch_once(url, part, label)
    with response:
        if offset and response.status == 206:
            start = _content_range(response.headers.get("Content-Range", ""))[0]
            if start != offset:
                part.unlink()
                raise _ShortRead(f"server resumed at byte {start}, not {offset}")
            mode = "ab"
        else:
            if offset:
                logger.info("%s: server ignored the Range request; restarting", label)
            offset, mode = 0, "wb"
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header is not None else None
        received = 0
        with (
            open(part, mode) as out,
            tqdm(
                total=None if length is None else offset + length,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label,
                file=sys.stderr,
                disable=None,
                leave=False,
            ) as bar,
        ):
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    if length is not None and received < length:
        raise _ShortRead(
            f"connection closed after {offset + received:,} of {offset + length:,} bytes"
        )


def _content_range(value: str) -> tuple[int | None, int | None, int | None]:
    """``bytes START-END/TOTAL`` or ``bytes */TOTAL`` -> (start, end, total), None if absent."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", value)
    if match is None:
        return None, None, None
    start, end, total = (None if g in (None, "*") else int(g) for g in match.groups())
    return start, end, total
