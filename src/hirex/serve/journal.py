"""The service's write-ahead journal: every item change is on disk before it is acknowledged.

    updates.log   one header line {"format": "hirex-updates", "version": 1, "after_seq": S}
                  (the records start at sequence number S + 1), then one line per
                  change: "<crc32 of the JSON, 8 hex digits> <JSON>\\n", the JSON holding the
                  change's sequence number ("seq"), "op" ("put" / "delete") and its data.

A change is appended, flushed and fsynced before ``append`` returns, so a change acknowledged
after ``append`` survives a crash or kill -9.  A crash mid-append leaves at most one torn last
line; ``open`` drops it (it was never acknowledged) and truncates the file back to the last
whole record.  A damaged line anywhere else is an error: the journal is not guessed at.

The journal only grows between snapshots: once the index is saved with ``applied_seq = S``,
``reset`` starts the file again, and replay skips every record with ``seq <= S`` in case the
process died between the snapshot and the reset.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any

from hirex.atomic_files import atomic_write_text

log = logging.getLogger(__name__)

JOURNAL_FORMAT = "hirex-updates"
JOURNAL_VERSION = 1


def _header(after_seq: int) -> str:
    head = {"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION, "after_seq": after_seq}
    return json.dumps(head) + "\n"


class JournalError(ValueError):
    """The journal file is damaged or of another format; the message names the line."""


def _line(record: dict[str, Any]) -> bytes:
    payload = json.dumps(record, separators=(",", ":"))
    return f"{zlib.crc32(payload.encode()):08x} {payload}\n".encode()


class Journal:
    """Append-only log of item changes at ``path``; ``records`` are those read at open."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        self._after_seq = 0
        if not self.path.exists():
            atomic_write_text(self.path, _header(0))
        else:
            self.records = self._read()
        self._file = open(self.path, "ab")  # noqa: SIM115 (held open for appends)

    @property
    def last_seq(self) -> int:
        return int(self.records[-1]["seq"]) if self.records else self._after_seq

    def _read(self) -> list[dict[str, Any]]:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        header = lines[0].decode("utf-8", "replace")
        try:
            head = json.loads(header)
        except json.JSONDecodeError:
            head = None
        if not isinstance(head, dict) or head.get("format") != JOURNAL_FORMAT:
            raise JournalError(
                f"{self.path}:1: not a {JOURNAL_FORMAT} journal; move the file away to start "
                "with an empty journal (its changes would be lost)"
            )
        if head.get("version") != JOURNAL_VERSION:
            raise JournalError(
                f"{self.path}:1: journal format version {head.get('version')!r}; this hirex "
                f"reads version {JOURNAL_VERSION}"
            )
        after = head.get("after_seq")
        if not isinstance(after, int) or after < 0:
            raise JournalError(f"{self.path}:1: header lacks a valid after_seq")
        self._after_seq = after
        records: list[dict[str, Any]] = []
        good_bytes = len(lines[0]) + 1
        body = lines[1:]
        # The text after the last newline is a torn append (or empty): it never got an ack.
        complete, tail = body[:-1], body[-1]
        for number, raw in enumerate(complete, start=2):
            record = _parse(raw)
            expect = records[-1]["seq"] + 1 if records else after + 1
            if record is None or record["seq"] != expect:
                raise JournalError(
                    f"{self.path}:{number}: damaged journal record (bad checksum, JSON or "
                    "sequence number); the file was changed by something other than hirex. "
                    "Restore it from a backup, or move it away to start from the last snapshot"
                )
            records.append(record)
            good_bytes += len(raw) + 1
        if tail:
            log.warning(
                "%s: dropping a torn last record (%d bytes) left by a crash mid-write; it was "
                "never acknowledged",
                self.path,
                len(tail),
            )
            with open(self.path, "r+b") as f:
                f.truncate(good_bytes)
                f.flush()
                os.fsync(f.fileno())
        return records

    def append(self, record: dict[str, Any]) -> int:
        """Write one change durably; returns its sequence number (set here)."""
        seq = self.last_seq + 1
        record = {"seq": seq, **record}
        self._file.write(_line(record))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.append(record)
        return seq

    def reset(self, applied_seq: int) -> None:
        """After a snapshot that holds every change up to ``applied_seq``: keep only later ones
        (atomically), so the file does not grow without bound."""
        keep = [r for r in self.records if r["seq"] > applied_seq]
        after = max(applied_seq, self._after_seq) if not keep else keep[0]["seq"] - 1
        self._file.close()
        atomic_write_text(self.path, _header(after) + "".join(_line(r).decode() for r in keep))
        self.records, self._after_seq = keep, after
        self._file = open(self.path, "ab")  # noqa: SIM115

    def close(self) -> None:
        self._file.close()


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        crc, payload = raw.split(b" ", 1)
        if int(crc, 16) != zlib.crc32(payload):
            return None
        record = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
        return None
    return record
