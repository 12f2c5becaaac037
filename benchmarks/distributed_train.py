"""``hirex train --distributed`` against single-process training (issue 14, part 1).

Trains the same config on one process, on 2 processes (1 host) and on 4 processes (2 emulated
hosts x 2, on 127.0.0.1), and records for each: wall time of the whole command, test and
validation metrics, and the largest difference of the saved weights from the single-process
model. On a 2-core machine the extra processes only add communication, so the wall times say
what the distribution costs here, not what it gains on real hosts.

    python benchmarks/distributed_train.py            # writes results/distributed_train.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, command_line, machine
from safetensors.torch import load_file

from hirex.atomic_files import atomic_write_json

HERE = Path(__file__).resolve().parent
RUNS = HERE.parent / "runs" / "distributed_train"

SETUPS = {
    "1 process": [],
    "1 host x 2": ["--distributed", "--nnodes", "1", "--nproc-per-node", "2"],
    "2 hosts x 2": ["--distributed", "--nnodes", "2", "--nproc-per-node", "2"],
}


def max_diff(a: Path, b: Path) -> float:
    ta, tb = load_file(str(a)), load_file(str(b))
    return max(float((ta[k].double() - tb[k].double()).abs().max()) for k in ta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--scorer", default="dot", choices=["dot", "mol"])
    parser.add_argument("--output", default=str(RESULTS / "distributed_train.json"))
    args = parser.parse_args()
    base = [
        "--data",
        "synthetic",
        "--quiet",
        "--set",
        f"train.epochs={args.epochs}",
        "--set",
        "train.patience=100",
        "--set",
        "model.dim=32",
        "--set",
        f"model.scorer={args.scorer}",
        "--set",
        "train.num_threads=1",
    ]
    result: dict = {
        "command": command_line(),
        "machine": machine(),
        "config": base,
        "note": "synthetic data (5,000 users x 2,000 items); every process on this one machine",
        "setups": {},
    }
    reference = None
    for name, extra in SETUPS.items():
        out = RUNS / name.replace(" ", "_")
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "hirex.cli.main", "train", *base, *extra, "--out", str(out)],
            check=True,
        )
        seconds = time.perf_counter() - t0
        report = json.loads((out / "metrics.json").read_text())
        entry = {
            "processes": 1 if not extra else int(extra[2]) * int(extra[4]),
            "wall_seconds": round(seconds, 1),
            "valid": report["valid"],
            "test": report["test"],
        }
        if reference is None:
            reference = out
        else:
            entry["max_abs_weight_diff"] = max_diff(
                reference / "model.safetensors", out / "model.safetensors"
            )
            one = result["setups"]["1 process"]["test"]
            entry["max_abs_test_metric_diff"] = max(abs(report["test"][k] - one[k]) for k in one)
        result["setups"][name] = entry
        print(name, json.dumps(entry), flush=True)
        atomic_write_json(args.output, result)


if __name__ == "__main__":
    main()
