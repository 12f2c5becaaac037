"""``hirex train``: train a retrieval model, evaluate it, write a run folder."""

from __future__ import annotations

import argparse

from hirex.cli.common import add_config_options, config_from_args, print_metrics
from hirex.runs import dataset_from_config, train_run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a retrieval model and evaluate it on the test split",
        description="Train on the training split with early stopping on a validation split "
        "carved from the training data, then evaluate on the test split by exhaustive "
        "full ranking. Writes config.toml, model.safetensors, checkpoint.safetensors and "
        "metrics.json to --out. Re-running on the same --out resumes from the checkpoint.",
    )
    add_config_options(p)
    p.add_argument("--out", default=None, help="run folder (default: runs/<dataset name>)")
    p.add_argument(
        "--restart",
        action="store_true",
        help="discard an existing checkpoint in --out instead of resuming from it",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    out = args.out or f"runs/{cfg.data.name.rstrip('/').split('/')[-1]}"
    dataset = dataset_from_config(cfg.data)
    print(dataset.summary())
    result, report = train_run(cfg, dataset, out, restart=args.restart, progress=not args.quiet)
    print(
        f"trained {len(result.epochs)} epochs in {result.train_seconds:.0f}s, "
        f"best epoch {result.best_epoch + 1}"
    )
    print_metrics("valid", report["valid"])
    print_metrics("test ", report["test"])
    print(f"run written to {out}/")
    return 0
