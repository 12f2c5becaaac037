"""What the README's first commands cost from a fresh clone: ``make install``, ``make demo``
and ``make test`` (the CI command), timed one after the other.

Clones the repository's committed HEAD into a temporary folder with ``../shared`` linked beside
it, as CI sees it. pip's download cache of this machine is used, so the figures leave out
downloading the packages on a machine that never had them.

    python benchmarks/first_run.py            # writes results/first_run.json
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from common import RESULTS, ROOT, command_line, machine

from hirex.atomic_files import atomic_write_json


def timed(cmd: list[str], cwd: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(RESULTS / "first_run.json"))
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    result: dict = {
        "command": command_line(),
        "machine": machine(),
        "commit": commit,
        "note": "fresh clone, pip's download cache of this machine in use",
        "seconds": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        subprocess.run(["git", "clone", "-q", str(ROOT), str(base / "main")], check=True)
        (base / "shared").symlink_to(ROOT.parent / "shared")
        for target in ("install", "demo", "test"):
            seconds, rc = timed(["make", target], base / "main")
            result["seconds"][f"make {target}"] = round(seconds, 1)
            result[f"make {target} exit status"] = rc
            print(f"make {target}: {seconds:.0f} s (exit {rc})", flush=True)
            atomic_write_json(args.output, result)
            if rc != 0:
                break


if __name__ == "__main__":
    main()
