"""A small trained run with a post-hoc index, and a real ``hirex serve`` process over it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from hirex.cli.main import main
from tests.cli.test_cli import SMALL

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="session")
def served_run(tmp_path_factory) -> Path:
    """A trained run (synthetic, dot scorer) with a two-level index at <run>/index."""
    out = tmp_path_factory.mktemp("served-run")
    assert main(["train", *SMALL, "--out", str(out)]) == 0
    assert main(["index", "build", "--run", str(out), "--levels", "8,4", "--beam", "4"]) == 0
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``hirex serve`` in a process of its own on 127.0.0.1."""

    def __init__(self, run: Path, state: Path, *extra: str) -> None:
        self.run, self.state, self.extra = run, state, extra
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = state.parent / f"{state.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Server:
        self.port = free_port()
        cmd = [sys.executable, "-m", "hirex.cli.main", "serve", "--run", str(self.run)]
        cmd += ["--state", str(self.state), "--port", str(self.port), "--threads", "1"]
        env = {**os.environ, "HIREX_SERVE_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*cmd, *self.extra], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready in {timeout}s: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> int:
        """A clean shutdown (SIGTERM: the service snapshots pending changes)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        return self.proc.returncode if self.proc is not None else 0

    def kill(self) -> None:
        """kill -9: nothing gets to run."""
        self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def server_factory(tmp_path):
    started: list[Server] = []

    def make(run: Path, *extra: str, state: Path | None = None) -> Server:
        s = Server(run, state or tmp_path / "state", *extra)
        started.append(s)
        return s

    yield make
    for s in started:
        if s.proc is not None and s.proc.poll() is None:
            s.kill()


@pytest.fixture(scope="module")
def server(served_run, tmp_path_factory):
    """One shared server for the read-only and bad-input tests."""
    state = tmp_path_factory.mktemp("shared-state") / "state"
    s = Server(served_run, state).start()
    yield s
    s.kill()
    shutil.rmtree(state, ignore_errors=True)
