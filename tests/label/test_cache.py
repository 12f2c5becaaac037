"""The SQLite label cache: round trip, journal, concurrent writer processes, bad files."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from hirex.label.cache import CachedLabel, LabelCache


def label(key: str, grade: int = 1) -> CachedLabel:
    return CachedLabel(
        key, "q", "d", "ok", float(grade), grade, 0.7, {"M": 1}, "", "{}", 10, 2, 0.0, 0.1
    )


META = {"template": "t@v1", "variant": "R", "model": "m", "input_hash": "h"}


def test_round_trip_and_journal(tmp_path):
    c = LabelCache(tmp_path / "sub" / "c.sqlite")
    rid = c.begin_request("k1")
    c.store(rid, label("k1", 2), META)
    c.begin_request("k2")  # in flight when the process "died"
    again = LabelCache(tmp_path / "sub" / "c.sqlite")
    got = again.get_many(["k1", "k2"])
    assert list(got) == ["k1"] and got["k1"].grade == 2 and got["k1"].aspects == {"M": 1}
    again.store(again.begin_request("k2"), label("k2"), META)
    assert again.journal() == {"requests": 3, "duplicates": 0, "reissued": 1, "unfinished": 1}
    again.begin_request("k1")  # asking for a stored label is a duplicate
    assert again.journal()["duplicates"] == 1


def _writer(path: str, worker: int, n: int) -> None:
    c = LabelCache(path)
    for i in range(n):
        key = f"w{worker}-{i}"
        c.store(c.begin_request(key), label(key), META)


def test_concurrent_writer_processes(tmp_path):
    path = str(tmp_path / "c.sqlite")
    LabelCache(path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    c = LabelCache(path)
    assert c.count() == 160
    assert c.journal() == {"requests": 160, "duplicates": 0, "reissued": 0, "unfinished": 0}


def test_bad_cache_files(tmp_path):
    (tmp_path / "junk").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ValueError, match="is not a hirex label cache"):
        LabelCache(tmp_path / "junk")
    assert (tmp_path / "junk").read_bytes() == b"not a database at all" * 100  # untouched
    with pytest.raises(ValueError, match="is a folder"):
        LabelCache(tmp_path)
    c = LabelCache(tmp_path / "c.sqlite")
    import sqlite3

    with sqlite3.connect(c.path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'format_version'")
    with pytest.raises(ValueError, match="format 99"):
        LabelCache(tmp_path / "c.sqlite")
