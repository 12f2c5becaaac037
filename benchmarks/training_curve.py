"""Validation quality against training time of a run, finished or still training (issue 15).

Reads the per-epoch records that ``hirex train`` keeps in the run's checkpoint (epoch, loss,
validation metrics, seconds since the start), so it works on a run that is still going or was
stopped: the same command resumes it later. Test metrics are not read.

    python benchmarks/training_curve.py runs/bench-gowalla-mol   # training_curve_gowalla-mol.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import RESULTS, command_line, machine
from safetensors import safe_open

from hirex.atomic_files import atomic_write_json
from hirex.config import config_to_dict, load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run folder with checkpoint.safetensors")
    parser.add_argument("--metric", default="recall@20")
    parser.add_argument("--output", default=None, help="default: results/training_curve_<run>.json")
    args = parser.parse_args()
    run = Path(args.run)
    if not (run / "checkpoint.safetensors").is_file():
        parser.error(f"{run} has no checkpoint.safetensors: give a folder that hirex train wrote")
    with safe_open(str(run / "checkpoint.safetensors"), framework="pt") as f:
        state = json.loads(f.metadata()["state"])
    config = (
        config_to_dict(load_config(run / "config.toml")) if (run / "config.toml").exists() else None
    )
    curve = [
        {
            "epoch": e["epoch"],
            "minutes": round(e["seconds"] / 60, 2),
            "loss": round(e["loss"], 4),
            **{k: round(v, 4) for k, v in e.get("valid", {}).items()},
        }
        for e in state["epochs"]
    ]
    best = max(curve, key=lambda e: e.get(args.metric, float("-inf")), default=None)
    result = {
        "command": command_line(),
        "machine": machine(),
        "run": str(run),
        "config": config,
        "finished": bool(state["done"]) or state["epoch"] >= config["train"]["epochs"]
        if config
        else bool(state["done"]),
        "epochs_done": state["epoch"],
        "metric": args.metric,
        "best_valid": best,
        "curve": curve,
        "note": "validation only; minutes are training time including validation, as the run "
        "recorded them (on a machine that may have been shared)",
    }
    out = args.output or str(RESULTS / f"training_curve_{run.name.removeprefix('bench-')}.json")
    atomic_write_json(out, result)
    for e in curve:
        print(e)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
