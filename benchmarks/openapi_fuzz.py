"""schemathesis over the whole OpenAPI document of a real `hirex serve` on 127.0.0.1.

    python benchmarks/openapi_fuzz.py [--max-examples 50] [--time-limit 600]

Trains a small synthetic run with a post-hoc index in a scratch folder, serves it with a bearer
token, and runs `st run <url>/openapi.json --checks all` with the token, a bounded number of
examples per operation and a seed.  Writes benchmarks/results/openapi_fuzz.json: the command,
the counts of cases and failures and schemathesis's own summary lines.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import command_line, machine, write_result
from serve_load import TOKEN, Server

from hirex.cli.main import main as hirex

SMALL = [
    "--data",
    "synthetic",
    "--quiet",
    "--set",
    "data.synthetic_users=400",
    "--set",
    "data.synthetic_items=200",
    "--set",
    "train.epochs=2",
    "--set",
    "model.dim=16",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--max-examples", type=int, default=50, help="per operation")
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds for schemathesis")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="openapi_fuzz")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hirex-fuzz-"))
    run = work / "run"
    assert hirex(["train", *SMALL, "--out", str(run)]) == 0
    assert hirex(["index", "build", "--run", str(run), "--levels", "8,4"]) == 0
    server = Server(run, work / "state", 1, work / "server.log")
    server.start()
    st = Path(sys.executable).with_name("st")
    cmd = [
        str(st),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(args.max_examples),
        "--seed",
        str(args.seed),
        "-H",
        f"Authorization: Bearer {TOKEN}",
        "--request-timeout",
        "30",
    ]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=args.time_limit,
            check=False,
            cwd=work,  # its .schemathesis/ cache goes there, not into the repository
        )
        out, code, timed_out = done.stdout + done.stderr, done.returncode, False
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else err.stdout or ""
        code, timed_out = None, True
    finally:
        server.kill()
    seconds = time.perf_counter() - t0
    print(out[-6000:])
    summary = [line for line in out.splitlines() if re.search(r"passed|failed|error", line, re.I)]
    failures = re.search(r"(\d+) failures?", out)
    cases = re.search(r"(\d+) (?:generated|test cases)", out)
    write_result(
        args.output,
        {
            "schemathesis_exit_code": code,
            "timed_out": timed_out,
            "failures": int(failures.group(1)) if failures else (0 if code == 0 else None),
            "cases": int(cases.group(1)) if cases else None,
            "seconds": round(seconds, 1),
            "summary": summary[-20:],
            "st_command": " ".join(
                c if "Bearer" not in c else "Authorization: Bearer ***" for c in cmd
            ),
            "command": command_line(),
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
