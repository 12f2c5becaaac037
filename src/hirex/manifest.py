"""Artifact folders: data files plus a JSON manifest (format, version, sizes, sha256 of each).

    FOLDER/
      manifest.json     {"format", "version", "created", "files": {name: {bytes, sha256}}, ...}
      <name>.safetensors ...

``write_artifact`` writes the whole folder beside its destination and renames it into place, so
a crash never leaves half an artifact under the final name and a reader sees the old folder or
the new one.  ``read_manifest`` / ``verify_files`` check format, version, sizes and checksums
before anything is loaded, so a truncated, corrupted or foreign file is a ValueError that names
the file and the fix.  Used by the index (``index/files.py``) and semantic IDs
(``semantic_ids/files.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hirex.atomic_files import atomic_write_json

MANIFEST = "manifest.json"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_artifact(
    path: str | os.PathLike,
    fmt: str,
    version: int,
    write_files: Callable[[Path], list[str]],
    fields: dict[str, Any],
    *,
    what: str,
) -> Path:
    """Write the folder ``path`` atomically, replacing an artifact of the same format there.

    write_files(tmp) writes the data files into the temporary folder and returns their names;
    the manifest records each file's size and sha256 next to ``fields``.  ``what`` names the
    artifact in errors ("a hirex index").  A folder at ``path`` that is not an artifact of this
    format is never replaced: a FileExistsError, nothing written.
    """
    path = Path(path)
    if path.exists():
        existing = path / MANIFEST
        try:
            ok = path.is_dir() and json.loads(existing.read_text()).get("format") == fmt
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise FileExistsError(
                f"{path} exists and is not {what}; choose another folder (nothing was written)"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        names = write_files(tmp)
        manifest = {
            "format": fmt,
            "version": version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **fields,
            "files": {
                name: {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
                for name in names
            },
        }
        atomic_write_json(tmp / MANIFEST, manifest)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_manifest(
    path: str | os.PathLike, fmt: str, version: int, *, what: str, fix: str
) -> dict[str, Any]:
    """The manifest of the artifact folder ``path``, checked for format and version.

    ``fix`` ends every message: how to get a good artifact (e.g. "rebuild the index").
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not {what} folder ({fix})")
    mpath = path / MANIFEST
    if not mpath.exists():
        raise ValueError(f"{path}: no {MANIFEST}; not {what}, or an interrupted write ({fix})")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{mpath}: not valid JSON ({err}); {fix}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        raise ValueError(f"{mpath}: not a {fmt} manifest; {fix}")
    if manifest.get("version") != version:
        raise ValueError(
            f"{mpath}: {fmt} format version {manifest.get('version')!r}; this hirex reads "
            f"version {version}. {fix[0].upper() + fix[1:]} with this version."
        )
    return manifest


def verify_files(path: str | os.PathLike, manifest: dict[str, Any], names: list[str], fix: str):
    """Check that each named file exists with the manifest's size and sha256."""
    path = Path(path)
    try:
        files = manifest["files"]
        for name in names:
            fpath, want = path / name, files[name]
            if not fpath.exists():
                raise ValueError(f"{fpath} is missing; {fix}")
            size = fpath.stat().st_size
            if size != want["bytes"]:
                raise ValueError(
                    f"{fpath} has {size} bytes, the manifest says {want['bytes']} (truncated or "
                    f"replaced); {fix}"
                )
            if sha256_file(fpath) != want["sha256"]:
                raise ValueError(
                    f"{fpath} does not match its checksum in the manifest (corrupted or "
                    f"modified); {fix}"
                )
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path / MANIFEST}: missing or malformed entry {err}; {fix}") from err
