"""Fixtures for the labelling tests: a fake OpenAI-compatible server process, and pairs."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from hirex.label.llama_server import free_port
from hirex.label.prompts import Pair

FAKE = Path(__file__).with_name("fake_openai.py")


class FakeServer:
    def __init__(self, tmp: Path, mode: str, delay: float = 0.0) -> None:
        self.port = free_port()
        self.log = tmp / f"requests-{mode}-{self.port}.log"
        self.log.touch()
        self.proc = subprocess.Popen(
            [sys.executable, str(FAKE), str(self.port), str(self.log), mode, str(delay)]
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/models", timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("fake server did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def requests(self) -> list[str]:
        return self.log.read_text().split()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def fake_server(tmp_path):
    servers = []

    def start(mode: str = "ok", delay: float = 0.0) -> FakeServer:
        s = FakeServer(tmp_path, mode, delay)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def make_pairs(n: int = 6) -> list[Pair]:
    """Pairs whose right label is in the passage text (the fake server reads it)."""
    return [
        Pair(f"q{i % 3}", f"d{i}", f"query number {i % 3}", f"passage {i}: grade {i % 4} text")
        for i in range(n)
    ]


def write_trec_files(folder: Path, n: int = 6) -> dict[str, Path]:
    """qrels (gold = the right label), queries and passages for make_pairs(n)."""
    import json

    pairs = make_pairs(n)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        k: folder / f
        for k, f in (
            ("qrels", "qrels.txt"),
            ("queries", "queries.tsv"),
            ("passages", "passages.jsonl"),
        )
    }
    files["qrels"].write_text(
        "".join(f"{p.qid} 0 {p.docid} {int(p.document[-6])}\n" for p in pairs)
    )
    queries = {p.qid: p.query for p in pairs}
    files["queries"].write_text("".join(f"{q}\t{t}\n" for q, t in queries.items()))
    files["passages"].write_text(
        "".join(json.dumps({"docid": p.docid, "doc": p.document}) + "\n" for p in pairs)
    )
    return files
