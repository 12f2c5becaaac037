"""Finding the processes of a distributed job, to check that none is left behind."""

from __future__ import annotations

import os
import time
from pathlib import Path


def processes_mentioning(marker: str) -> list[int]:
    """Pids of the processes (other than this one) whose command line mentions ``marker``
    (a run folder or an output file of the job)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(entry.name))
    return pids


def assert_none_left(marker: str, wait_s: float = 20.0) -> None:
    """Every process of the job has exited, within ``wait_s`` (agents stop their workers)."""
    end = time.monotonic() + wait_s
    while processes_mentioning(marker) and time.monotonic() < end:
        time.sleep(0.2)
    assert processes_mentioning(marker) == [], f"processes mentioning {marker} were left behind"
