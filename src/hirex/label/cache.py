"""A durable label cache: SQLite in WAL mode, one row per judged input.

A label's key is the SHA-256 of everything that decides the answer: the template id (name,
version and text hash), the variant, the model, the rendered messages and the decoding
settings. So a label is never requested twice, and a changed template never reuses old labels.

Each row records the answer (``ok`` with its grade, or ``unparsed`` with the raw text; a
request that failed is not a label and is not stored), tokens and cost. A request journal
records every request before it is sent and when its answer is stored, in the same
transaction as the label: after a ``kill -9``, a rerun finds every answered label, and the
journal tells requests repeated for an answer already stored (duplicates: there should be
none) from requests that were in flight when the process died (asked again, never stored).

Several threads or processes may write at once: each opens its own connection, writes are
short transactions, and SQLite's busy timeout serialises them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CachedLabel", "LabelCache"]

FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS labels (
    key TEXT PRIMARY KEY,
    template TEXT NOT NULL,
    variant TEXT NOT NULL,
    model TEXT NOT NULL,
    input_hash TEXT NOT NULL,
    qid TEXT NOT NULL,
    docid TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'unparsed')),
    label REAL,
    grade INTEGER,
    expected REAL,
    aspects TEXT NOT NULL,
    reason TEXT NOT NULL,
    raw TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost REAL NOT NULL,
    seconds REAL NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    outcome TEXT
);
CREATE INDEX IF NOT EXISTS requests_key ON requests (key);
"""


@dataclass(frozen=True)
class CachedLabel:
    key: str
    qid: str
    docid: str
    status: str
    label: float | None
    grade: int | None
    expected: float | None
    """The expected grade from the answer's log-probabilities (see ``parse.expected_grade``),
    None when the server sent none."""
    aspects: dict[str, int]
    reason: str
    raw: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class LabelCache:
    """The cache file at ``path`` (created with its folder when missing)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(
                f"label cache {self.path} is a folder; give a file path, e.g. "
                f"{self.path / 'labels.sqlite'}"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            self._check_format(db)

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=60000")
        except sqlite3.DatabaseError as err:
            raise ValueError(f"{self.path} is not a hirex label cache (SQLite: {err})") from None
        return db

    def _check_format(self, db: sqlite3.Connection) -> None:
        try:
            db.execute("BEGIN IMMEDIATE")
            for stmt in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                db.execute(stmt)
            row = db.execute("SELECT value FROM meta WHERE key='format_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('format_version', ?)", (str(FORMAT_VERSION),))
            db.execute("COMMIT")
        except sqlite3.DatabaseError as err:
            raise ValueError(f"{self.path} is not a hirex label cache (SQLite: {err})") from None
        if row is not None and row[0] != str(FORMAT_VERSION):
            raise ValueError(
                f"{self.path} is a label cache of format {row[0]}; this hirex reads format "
                f"{FORMAT_VERSION}: use another --cache file for this version"
            )

    # -- reading ------------------------------------------------------------------------------

    def get_many(self, keys: list[str]) -> dict[str, CachedLabel]:
        out: dict[str, CachedLabel] = {}
        with closing(self._connect()) as db:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    "SELECT key, qid, docid, status, label, grade, expected, aspects, reason, raw, "
                    f"prompt_tokens, completion_tokens, cost, seconds FROM labels "
                    f"WHERE key IN ({marks})",
                    chunk,
                ).fetchall()
                for r in rows:
                    out[r[0]] = CachedLabel(*r[:7], json.loads(r[7]), *r[8:])
        return out

    def journal(self) -> dict[str, int]:
        """Counts from the request journal (see the module docstring):

        - ``requests``: requests sent;
        - ``duplicates``: requests sent for a key whose label was already stored;
        - ``reissued``: requests sent again after an earlier one for the same key never finished
          (the process died with it in flight);
        - ``unfinished``: requests that never finished.
        """
        with closing(self._connect()) as db:
            (n,) = db.execute("SELECT COUNT(*) FROM requests").fetchone()
            (dup,) = db.execute(
                "SELECT COUNT(*) FROM requests r JOIN labels l ON r.key = l.key "
                "WHERE r.started > l.created"
            ).fetchone()
            (reissued,) = db.execute(
                "SELECT COUNT(*) FROM requests r WHERE EXISTS (SELECT 1 FROM requests e "
                "WHERE e.key = r.key AND e.id < r.id AND e.finished IS NULL)"
            ).fetchone()
            (unfinished,) = db.execute(
                "SELECT COUNT(*) FROM requests WHERE finished IS NULL"
            ).fetchone()
        return {"requests": n, "duplicates": dup, "reissued": reissued, "unfinished": unfinished}

    def count(self) -> int:
        with closing(self._connect()) as db:
            return db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]

    # -- writing ------------------------------------------------------------------------------

    def begin_request(self, key: str) -> int:
        with closing(self._connect()) as db:
            cur = db.execute(
                "INSERT INTO requests (key, pid, started) VALUES (?, ?, ?)",
                (key, os.getpid(), time.time()),
            )
            return int(cur.lastrowid)

    def end_request(self, request_id: int, outcome: str) -> None:
        with closing(self._connect()) as db:
            db.execute(
                "UPDATE requests SET finished = ?, outcome = ? WHERE id = ?",
                (time.time(), outcome, request_id),
            )

    def store(self, request_id: int, label: CachedLabel, meta: dict[str, str]) -> None:
        """Store a label and close its request in one transaction."""
        now = time.time()
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT OR IGNORE INTO labels VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    label.key,
                    meta["template"],
                    meta["variant"],
                    meta["model"],
                    meta["input_hash"],
                    label.qid,
                    label.docid,
                    label.status,
                    label.label,
                    label.grade,
                    label.expected,
                    json.dumps(label.aspects),
                    label.reason,
                    label.raw,
                    label.prompt_tokens,
                    label.completion_tokens,
                    label.cost,
                    label.seconds,
                    now,
                ),
            )
            db.execute(
                "UPDATE requests SET finished = ?, outcome = ? WHERE id = ?",
                (now, label.status, request_id),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()
