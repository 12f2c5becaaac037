"""Why test-time training lowers validation: controls that separate the data from the procedure
(issue 15, part 3).

On one base model and its index (trained as ``ttt.py`` trains them, so an existing run folder
is reused), fine-tune with:

- the mined data (``ttt.data = "mined"``, the default TTT) at the config's ``ttt.lr`` and at
  10x and 100x smaller;
- the replay control (``ttt.data = "replay"``): the same number of ordinary training pairs,
  no mined data, at the same learning rates.

``--set ttt.params='user'`` fine-tunes the user side only (items keep their embeddings).
``--resume-optimizer`` starts AdamW from the base run's checkpoint (its moments and step
count) instead of a fresh one.

Reported per control: validation Recall/NDCG (exhaustive) of the start model and after each
fine-tuning epoch (whatever the early stopping keeps), and the number of pairs. Validation
only: the test split is not read.

    python benchmarks/ttt_controls.py --dataset gowalla     # writes results/ttt_controls.json
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

from common import RESULTS, SHARED_DATA, command_line, machine
from ttt import DEFAULTS

from hirex.atomic_files import atomic_write_json
from hirex.config import apply_overrides, config_to_dict, load_config
from hirex.eval.protocols import evaluate
from hirex.index.files import load_index
from hirex.runs import INDEX_DIR, dataset_from_config, train_run
from hirex.train.checkpoint import read_checkpoint
from hirex.train.trainer import CHECKPOINT
from hirex.ttt.finetune import test_time_train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DEFAULTS), required=True)
    p.add_argument("--data-dir", default=str(SHARED_DATA))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr-divisors", default="1,10,100")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--resume-optimizer", action="store_true")
    p.add_argument("--output", default=str(RESULTS / "ttt_controls.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config, metrics = DEFAULTS[args.dataset]
    cfg = apply_overrides(
        load_config(config),
        [
            f'data.data_dir="{args.data_dir}"',
            "index.method='posthoc'",
            f"train.seed={args.seed}",
            f"ttt.seed={args.seed}",
            *[o for o in args.overrides if not o.startswith("ttt.")],
        ],
    )
    ds = dataset_from_config(cfg.data)
    run_dir = Path(f"runs/ttt-{args.dataset}") / f"seed{args.seed}"
    train_run(cfg, ds, run_dir, restart=False, progress=False)
    # ttt.* settings do not change the base run (its folder is shared with ttt.py).
    cfg = apply_overrides(cfg, [o for o in args.overrides if o.startswith("ttt.")])
    model, index = load_index(run_dir / INDEX_DIR)
    opt_state = read_checkpoint(run_dir / CHECKPOINT)[1] if args.resume_optimizer else None
    ks = tuple(sorted({int(m.split("@")[1]) for m in metrics}))
    start = evaluate(model, ds, "valid", ks).metrics
    result = {
        "command": command_line(),
        "machine": machine(),
        "dataset": ds.summary(),
        "config": config_to_dict(cfg),
        "metrics": list(metrics),
        "start_valid": {m: round(start[m], 5) for m in metrics},
        "optimizer": "resumed from the base run's checkpoint" if opt_state else "fresh AdamW",
        "controls": {},
    }
    print("start", result["start_valid"], flush=True)
    for divisor in [int(d) for d in args.lr_divisors.split(",")]:
        for data in ("mined", "replay"):
            lr = cfg.ttt.lr / divisor
            name = f"{data}, lr {lr:g}"
            tcfg = dataclasses.replace(cfg, ttt=dataclasses.replace(cfg.ttt, data=data, lr=lr))
            t0 = time.perf_counter()
            res = test_time_train(
                tcfg, ds, model, index, None, progress=False, optimizer_state=opt_state
            )
            epochs = [e for e in res.training.epochs if "valid" in e]
            result["controls"][name] = {
                "data": data,
                "lr": lr,
                "pairs": res.n_pairs,
                "valid_per_epoch": [{m: round(e["valid"][m], 5) for m in metrics} for e in epochs],
                "change_after_epoch_1": round(epochs[0]["valid"][metrics[0]] - start[metrics[0]], 5)
                if epochs
                else None,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            print(name, result["controls"][name], flush=True)
            atomic_write_json(args.output, result)


if __name__ == "__main__":
    main()
