"""Test-time training on a trained model as it is served: through its post-hoc index (issue 15,
part 3).

One finished run (e.g. the best Gowalla model, MoL grown from the dot model, with the spectral
branch) gets the index that serves it: a post-hoc one (hierarchical k-means on the learned
dimensions by default, ``index.kmeans_on = "learned"``), or with ``--index own`` the index the run
learned with the model (``<run>/index``, e.g. configs/gowalla-mol-warm-joint.toml's joint one,
as HILL fine-tunes).  Then:

1. selection, validation only: every setting in ``--settings`` fine-tunes the model with
   ``ttt.seed = 0``; each epoch, and the start model, is scored through the refreshed index on
   ``--valid-users`` evenly spaced validation users (``ttt.select = "index"``), so a setting that
   does not help keeps the start model.  The best setting by that validation Recall@20 is picked;
   the replay control (``ttt.data = "replay"``) of the picked setting is run beside it.
2. test: the picked setting over ``--seeds`` (``ttt.seed``), test Recall/NDCG through the index
   and exhaustive on ``--test-users`` evenly spaced test users, against the start model on the
   same users.  The base model is the same for every seed (training it three times costs about
   2 x 38 minutes here), so the spread is that of test-time training alone.

    python benchmarks/ttt_served.py --run runs/bench-gowalla-mol-warm-1epoch \\
        [--index posthoc|own] [--levels 64,32] [--beam 16] [--valid-users 5000] \\
        [--test-users 10000] [--seeds 0,1,2] \\
        [--settings "ttt.target='node' ttt.params='user'|ttt.target='item'"] \\
        [--result-name ttt_served]

Settings are separated by ``|``, the overrides of one setting by spaces.  Writes
benchmarks/results/<result-name>.json (after every step, ``complete`` false until the end).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, command_line, machine, rounded
from index_common import own_index

from hirex.atomic_files import atomic_write_json
from hirex.config import ConfigError, IndexConfig, RunConfig, apply_overrides, config_to_dict
from hirex.eval.protocols import evaluate, evaluate_index
from hirex.index.build import build_index
from hirex.runs import INDEX_DIR, load_run
from hirex.train.trainer import eval_ks
from hirex.ttt.finetune import test_time_train

DEFAULT_SETTINGS = "|".join(
    [
        "ttt.target='item'",
        "ttt.target='item' ttt.params='user'",
        "ttt.target='item' ttt.weight='rate'",
        "ttt.target='node' ttt.params='user'",
        "ttt.target='node' ttt.params='user' ttt.weight='rate'",
        "ttt.target='node'",
        "ttt.target='node' ttt.params='user' ttt.depth=2 ttt.threshold=0.4",
        "ttt.target='node' ttt.params='user' ttt.lr=0.00005",
    ]
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", required=True, help="a finished run folder (hirex train --out)")
    p.add_argument(
        "--index",
        choices=["posthoc", "own"],
        default="posthoc",
        help="posthoc: hierarchical k-means over the model (--levels, --kmeans-on); own: the "
        "index the run wrote at training (<run>/index, e.g. a joint one)",
    )
    p.add_argument("--levels", help="with --index posthoc (default 64,32)")
    p.add_argument(
        "--kmeans-on", choices=["all", "learned"], help="with --index posthoc (default learned)"
    )
    p.add_argument("--beam", default="16", help="serving beam (index.beam), e.g. 16 or 16,8")
    p.add_argument("--valid-users", type=int, default=5000, help="0: all")
    p.add_argument("--test-users", type=int, default=10000, help="0: all")
    p.add_argument("--settings", default=DEFAULT_SETTINGS)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--result-name", default="ttt_served")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    settings = [s.strip() for s in args.settings.split("|") if s.strip()]
    try:  # every setting is checked before anything is trained
        for setting in settings:
            apply_overrides(RunConfig(), [*shlex.split(setting), *args.overrides])
    except (ConfigError, ValueError) as err:
        p.error(f"--settings / --set: {err}")
    if args.index == "own":
        if args.levels or args.kmeans_on:
            p.error("--levels and --kmeans-on build a posthoc index; --index own uses the run's")
        if not (Path(args.run) / INDEX_DIR).is_dir():
            p.error(f"--index own: {args.run} has no index written at training ({INDEX_DIR}/)")
    kmeans_on = args.kmeans_on or "learned"
    try:
        levels = tuple(int(x) for x in (args.levels or "64,32").split(","))
    except ValueError:
        p.error(f"--levels {args.levels!r}: give codewords per level, e.g. 64,32")
    t_all = time.perf_counter()
    try:
        run = load_run(args.run, device="cpu")
    except (FileNotFoundError, ValueError) as err:
        p.error(f"--run: {err}")
    ds = run.dataset
    cfg = apply_overrides(
        run.config,
        [
            f"index.beam=[{args.beam}]",
            "ttt.select='index'",
            f"ttt.select_users={args.valid_users}",
            *args.overrides,
        ],
    )
    ks = eval_ks(cfg, ds)
    metrics = [f"recall@{max(ks)}", f"ndcg@{max(ks)}"]
    if args.index == "own":
        index, method = own_index(args.run, run.model)
        index_info = {"levels": list(index.sizes), "method": method}
    else:
        index_cfg = IndexConfig(
            method="posthoc", levels=levels, kmeans="hierarchical", kmeans_on=kmeans_on
        )
        index = build_index(run.model, index_cfg, seed=cfg.train.seed)
        index_info = {"levels": list(levels), "kmeans": "hierarchical", "kmeans_on": kmeans_on}
    valid_users = args.valid_users or None
    test_users = args.test_users or None

    def test(model, idx) -> dict[str, Any]:  # noqa: ANN001
        through = evaluate_index(model, idx, ds, "test", ks, cfg.index.beam, max_users=test_users)
        exhaustive = evaluate(model, ds, "test", ks, max_users=test_users)
        return {
            "test_index": rounded({m: through.metrics[m] for m in metrics}, 5),
            "items_scored_fraction": round(through.cost["items_scored_fraction"], 5),
            "test_exhaustive": rounded({m: exhaustive.metrics[m] for m in metrics}, 5),
        }

    result: dict[str, Any] = {
        "run": args.run,
        "scorer": cfg.model.scorer,
        "index": config_to_dict(cfg)["index"] | index_info,
        "valid_users": valid_users or "all",
        "test_users": test_users or "all",
        "metrics": metrics,
    }

    def write(complete: bool) -> None:
        payload = {
            **result,
            "seconds": round(time.perf_counter() - t_all, 1),
            "complete": complete,
            "command": command_line(),
            "config": config_to_dict(cfg),
            "machine": machine(),
        }
        atomic_write_json(RESULTS / f"{args.result_name}.json", payload)

    start = evaluate_index(run.model, index, ds, "valid", ks, cfg.index.beam, max_users=valid_users)
    result["start_valid_index"] = rounded({m: start.metrics[m] for m in metrics}, 5)
    print("start valid (index)", result["start_valid_index"], flush=True)

    def ttt(setting: str, seed: int, extra: tuple[str, ...] = ()):  # noqa: ANN202
        tcfg = apply_overrides(cfg, [*shlex.split(setting), *extra, f"ttt.seed={seed}"])
        t0 = time.perf_counter()
        res = test_time_train(tcfg, ds, run.model, index, None, progress=False)
        summary = {
            "mined": res.mined.summary(),
            "examples": res.n_pairs,
            "best_epoch": res.training.best_epoch + 1,  # 0: the start model was kept
            "valid_index_per_epoch": [
                rounded({m: e["valid"][m] for m in metrics}, 5)
                for e in res.training.epochs
                if "valid" in e
            ],
            "valid_index": rounded({m: res.training.best_valid[m] for m in metrics}, 5),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        return res, summary

    result["selection"] = {}
    kept = {}
    for setting in settings:
        try:
            res, summary = ttt(setting, 0)
        except ValueError as err:  # nothing mined
            result["selection"][setting] = {"skipped": str(err)}
            continue
        result["selection"][setting] = summary
        kept[setting] = res
        print(setting, summary, flush=True)
        write(False)
    if not kept:
        write(True)
        print("no setting could be mined")
        return
    key = metrics[0]
    best = max(kept, key=lambda s: result["selection"][s]["valid_index"][key])
    _, control = ttt(best, 0, ("ttt.data='replay'",))
    result["picked"] = best
    result["picked_replay_control"] = control
    write(False)

    result["test_start"] = test(run.model, index)
    print("start", result["test_start"], flush=True)
    per_seed = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        res = kept[best] if seed == 0 else ttt(best, seed)[0]
        per_seed.append({"seed": seed, **test(res.model, res.index)})
        print(per_seed[-1], flush=True)
        result["test_with_ttt"] = per_seed
        write(False)
    values = np.array([r["test_index"][key] for r in per_seed])
    gain = float(values.mean() - result["test_start"]["test_index"][key])
    spread = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    result["verdict"] = {
        "setting": best,
        f"test_index_{key}_mean": round(float(values.mean()), 5),
        f"test_index_{key}_gain": round(gain, 5),
        "seed_std": round(spread, 5),
        "real_gain": bool(len(values) > 1 and gain > 2 * spread),
    }
    write(True)
    print(result["verdict"])


if __name__ == "__main__":
    main()
