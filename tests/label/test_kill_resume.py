"""A labelling run killed with kill -9 resumes with no label lost and none asked twice;
with the real local llama.cpp server, no server process is left behind."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hirex.cli.main import main
from hirex.eval.trec import read_qrels
from hirex.label.cache import LabelCache
from tests.label.conftest import write_trec_files

REPO = Path(__file__).parents[2]


def start_label(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "hirex.cli.main", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for_labels(cache: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the labelling run ended (code {proc.returncode}) before the kill")
        if cache.exists():
            try:
                if LabelCache(cache).count() >= n:
                    return
            except ValueError:
                pass
        time.sleep(0.05)
    pytest.fail(f"fewer than {n} labels after {timeout}s")


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill_9_then_resume_with_a_server_process(fake_server, tmp_path):
    files = write_trec_files(tmp_path / "data", 30)
    s = fake_server("ok", delay=0.2)
    cache, out = tmp_path / "c.sqlite", tmp_path / "llm.txt"
    args = [
        "label", "--backend", "openai", "--base-url", s.url, "--model", "fake", "--variant",
        "R", "--concurrency", "2", "--cache", str(cache), "--no-progress", "--queries",
        str(files["queries"]), "--passages", str(files["passages"]), "--qrels",
        str(files["qrels"]), "--output", str(out),
    ]  # fmt: skip
    proc = start_label(args)
    wait_for_labels(cache, 6, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = LabelCache(cache)
    stored = before.get_many([k for k in _all_keys(cache)])
    assert 6 <= len(stored) < 30

    assert main(args) == 0
    after = LabelCache(cache)
    assert read_qrels(out) == read_qrels(files["qrels"])  # every label, each right
    # nothing stored before the kill was lost or changed
    assert after.get_many(list(stored)) == stored
    journal = after.journal()
    assert journal["duplicates"] == 0
    # the server saw each pair once, except those in flight at the kill (at most 2, the
    # concurrency); a request journaled but killed before it was sent never reached it
    counts = collections.Counter(s.requests())
    assert len(counts) == 30 and max(counts.values()) <= 2
    assert journal["reissued"] <= 2
    assert 30 <= sum(counts.values()) <= 30 + journal["reissued"]


def _all_keys(cache: Path) -> list[str]:
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(cache)) as db:
        return [r[0] for r in db.execute("SELECT key FROM labels")]


def test_real_llama_server_labels_and_leaves_nothing_behind(tmp_path):
    pytest.importorskip("xllamacpp")
    from hirex.label.llama_server import resolve_gguf

    try:
        resolve_gguf("smollm2-135m")
    except FileNotFoundError as err:
        pytest.skip(str(err))
    files = write_trec_files(tmp_path / "data", 8)
    cache, out = tmp_path / "c.sqlite", tmp_path / "llm.txt"
    args = [
        "label", "--cache", str(cache), "--no-progress", "--queries", str(files["queries"]),
        "--passages", str(files["passages"]), "--qrels", str(files["qrels"]), "--output",
        str(out),
    ]  # fmt: skip
    proc = start_label(args)
    wait_for_labels(cache, 2, proc)
    servers = children(proc.pid)
    assert servers, "the local llama.cpp server should be a child of the labelling run"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in servers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in servers), "the server outlived its killed parent"

    assert main(args) == 0
    labels = LabelCache(cache)
    keys = _all_keys(cache)
    assert len(keys) == 8
    got = labels.get_many(keys)
    # constrained decoding: every answer parses, with an expected grade from log-probabilities
    assert all(lab.ok and 0 <= lab.grade <= 3 for lab in got.values())
    assert all(lab.expected is not None and 0 <= lab.expected <= 3 for lab in got.values())
    assert all(lab.prompt_tokens > 50 for lab in got.values())
    assert labels.journal()["duplicates"] == 0
    assert sum(len(v) for v in read_qrels(out).values()) == 8
