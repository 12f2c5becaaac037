"""Query and passage text in the TREC Deep Learning layout (see ../shared/data/trec-dl19):
``queries.tsv`` (``qid<TAB>text``) and ``passages.jsonl`` (``{"docid": ..., "doc": text}``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["read_passages", "read_queries"]


def read_queries(path: str | os.PathLike) -> dict[str, str]:
    path = Path(path)
    out: dict[str, str] = {}
    for lineno, line in enumerate(_text(path).splitlines(), 1):
        if not line.strip():
            continue
        qid, sep, text = line.partition("\t")
        if not sep or not qid.strip():
            raise ValueError(f"{path}:{lineno}: expected `qid<TAB>query text`, got {line[:80]!r}")
        if not text.strip():
            raise ValueError(f"{path}:{lineno}: query {qid!r} has no text")
        out[qid.strip()] = text.strip()
    return out


def read_passages(path: str | os.PathLike) -> dict[str, str]:
    path = Path(path)
    out: dict[str, str] = {}
    for lineno, line in enumerate(_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            docid, doc = str(obj["docid"]), obj["doc"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(
                f'{path}:{lineno}: expected a JSON object {{"docid": ..., "doc": text}}'
            ) from None
        if not isinstance(doc, str):
            raise ValueError(f"{path}:{lineno}: passage {docid!r}: `doc` must be a string")
        out[docid] = doc
    return out


def _text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None
