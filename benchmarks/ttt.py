"""Test-time training from the index's intermediate nodes, with and without, over seeds.

For each seed a base model is trained with its index (train.seed = seed); then for every depth
and threshold the model is fine-tuned on data mined from the index (ttt.seed = seed).  Reported
per setting: mean and standard deviation over seeds of the test metrics (Gowalla: Recall@20 /
NDCG@20; beauty: R@10 / N@10) for exhaustive scoring and for index search, and the same on
validation, which alone picks the best setting.  The target: a gain through the index whose mean
exceeds two standard deviations of the seed-to-seed spread.

    python benchmarks/ttt.py --dataset gowalla [--seeds 0,1,2] [--depths 1,2,3]
        [--thresholds 0.4,0.6,0.8] [--set index.levels=[32,8,8]]

Writes (merges into) benchmarks/results/ttt.json, one entry per dataset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, SHARED_DATA, command_line, machine

from hirex.atomic_files import atomic_write_json
from hirex.config import apply_overrides, config_to_dict, load_config
from hirex.eval.protocols import evaluate, evaluate_index
from hirex.index.files import load_index
from hirex.runs import INDEX_DIR, dataset_from_config, train_run
from hirex.ttt.finetune import test_time_train

DEFAULTS = {
    "gowalla": ("configs/ttt-gowalla.toml", ("recall@20", "ndcg@20")),
    "beauty": ("configs/ttt-beauty.toml", ("recall@10", "ndcg@10")),
}


def measure(model, index, ds, ks, beam) -> dict[str, dict[str, float]]:
    out = {}
    for split in ("valid", "test"):
        out[f"{split}_exhaustive"] = evaluate(model, ds, split, ks).metrics
        out[f"{split}_index"] = evaluate_index(model, index, ds, split, ks, beam).metrics
    return out


def summarise(runs: list[dict[str, Any]], metrics: tuple[str, ...]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of each metric of each measurement."""
    out: dict[str, Any] = {}
    for where in runs[0]:
        for m in metrics:
            values = np.array([r[where][m] for r in runs])
            out[f"{where}/{m}"] = {
                "mean": round(float(values.mean()), 5),
                "std": round(float(values.std(ddof=1)) if len(values) > 1 else 0.0, 5),
                "values": [round(float(v), 5) for v in values],
            }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DEFAULTS), required=True)
    p.add_argument("--config", help="default: the dataset's index benchmark config")
    p.add_argument("--data-dir", default=str(SHARED_DATA))
    p.add_argument("--out", help="run folders (default: runs/ttt-<dataset>)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--depths", default="1,2,3")
    p.add_argument("--thresholds", default="0.4,0.6,0.8")
    p.add_argument("--method", default="posthoc", help="index method of the base runs")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    config, metrics = DEFAULTS[args.dataset]
    base = apply_overrides(
        load_config(args.config or config),
        [f'data.data_dir="{args.data_dir}"', f"index.method='{args.method}'", *args.overrides],
    )
    ds = dataset_from_config(base.data)
    ks = tuple(sorted({int(m.split("@")[1]) for m in metrics}))
    depths = [int(d) for d in args.depths.split(",") if int(d) <= len(base.index.levels)]
    settings = [(d, float(t)) for d in depths for t in args.thresholds.split(",")]
    out_root = Path(args.out or f"runs/ttt-{args.dataset}")
    without: list[dict] = []
    with_ttt: dict[str, list[dict]] = {f"depth {d}, threshold {t}": [] for d, t in settings}
    mined: dict[str, list[dict]] = {k: [] for k in with_ttt}
    t0 = time.perf_counter()
    for seed in [int(s) for s in args.seeds.split(",")]:
        cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, seed=seed))
        run_dir = out_root / f"seed{seed}"
        train_run(cfg, ds, run_dir, restart=False, progress=False)
        model, index = load_index(run_dir / INDEX_DIR)
        without.append(measure(model, index, ds, ks, cfg.index.beam))
        print("seed", seed, "without:", {k: v[metrics[0]] for k, v in without[-1].items()})
        for depth, threshold in settings:
            name = f"depth {depth}, threshold {threshold}"
            tcfg = apply_overrides(
                cfg, [f"ttt.depth={depth}", f"ttt.threshold={threshold}", f"ttt.seed={seed}"]
            )
            try:
                res = test_time_train(tcfg, ds, model, index, None, progress=False)
            except ValueError as err:  # nothing mined at this threshold
                print(name, "skipped:", err)
                continue
            with_ttt[name].append(measure(res.model, res.index, ds, ks, cfg.index.beam))
            fine_tune_valid = [
                round(e["valid"][metrics[0]], 5) for e in res.training.epochs if "valid" in e
            ]
            mined[name].append(
                {
                    **res.mined.summary(),
                    "best_epoch": res.training.best_epoch + 1,
                    "fine_tune_valid": fine_tune_valid,
                }
            )
            print("seed", seed, name, {k: v[metrics[0]] for k, v in with_ttt[name][-1].items()})
    entry: dict[str, Any] = {
        "dataset": ds.summary(),
        "metrics": list(metrics),
        "without_ttt": summarise(without, metrics),
        "with_ttt": {k: summarise(v, metrics) for k, v in with_ttt.items() if v},
        "mined": mined,
    }
    key = f"valid_index/{metrics[0]}"
    if entry["with_ttt"]:
        best = max(entry["with_ttt"], key=lambda k: entry["with_ttt"][k][key]["mean"])
        test_key = f"test_index/{metrics[0]}"
        gain = entry["with_ttt"][best][test_key]["mean"] - entry["without_ttt"][test_key]["mean"]
        spread = max(
            entry["with_ttt"][best][test_key]["std"], entry["without_ttt"][test_key]["std"]
        )
        entry["selected_on_valid"] = {
            "setting": best,
            "test_index_gain": round(gain, 5),
            "two_std": round(2 * spread, 5),
            "real_gain": bool(gain > 2 * spread),
        }
    entry.update(
        {
            "seconds": round(time.perf_counter() - t0, 1),
            "command": command_line(),
            "config": config_to_dict(base),
            "machine": machine(),
        }
    )
    path = RESULTS / "ttt.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[args.dataset] = entry
    atomic_write_json(path, results)
    print(json.dumps(entry.get("selected_on_valid", {}), indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
