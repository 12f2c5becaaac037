"""``hirex train``: train a retrieval model, evaluate it, write a run folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hirex.cli.common import add_config_options, config_from_args, print_metrics
from hirex.config import RunConfig
from hirex.runs import check_init_from, dataset_from_config, prepare_run_dir, train_run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a retrieval model and evaluate it on the test split",
        description="Train on the training split with early stopping on a validation split "
        "carved from the training data, then evaluate on the test split by exhaustive "
        "full ranking. Writes config.toml, model.safetensors, checkpoint.safetensors and "
        "metrics.json to --out. Re-running on the same --out resumes from the checkpoint. "
        "With --distributed, trains on --nnodes x --nproc-per-node processes (TorchRec shards "
        "the id tables row-wise; the run folder is the same as a single-process run's).",
    )
    add_config_options(p)
    p.add_argument("--out", default=None, help="run folder (default: runs/<dataset name>)")
    p.add_argument(
        "--restart",
        action="store_true",
        help="discard an existing checkpoint in --out instead of resuming from it",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    d = p.add_argument_group("distributed training (TorchRec over torchrun)")
    d.add_argument(
        "--distributed",
        action="store_true",
        help="train on several processes; without --rdzv-endpoint, all of them on this "
        "machine, --nnodes agents standing in for hosts, meeting on 127.0.0.1",
    )
    d.add_argument("--nnodes", type=int, default=1, help="hosts (default 1)")
    d.add_argument("--nproc-per-node", type=int, default=2, help="processes per host (default 2)")
    d.add_argument(
        "--rdzv-endpoint",
        default=None,
        help="HOST:PORT of the rendezvous for real hosts: run the same command on each host",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.out is not None and not args.out.strip():
        raise ValueError("--out is empty; give the run folder, e.g. --out runs/my-run")
    cfg = config_from_args(args)
    out = args.out or f"runs/{cfg.data.name.rstrip('/').split('/')[-1]}"
    if args.distributed:
        return _run_distributed(args, cfg, out)
    if args.nnodes != 1 or args.nproc_per_node != 2 or args.rdzv_endpoint is not None:
        raise ValueError("--nnodes, --nproc-per-node and --rdzv-endpoint need --distributed")
    dataset = dataset_from_config(cfg.data)
    print(dataset.summary())
    result, report = train_run(cfg, dataset, out, restart=args.restart, progress=not args.quiet)
    print(
        f"trained {len(result.epochs)} epochs in {result.train_seconds:.0f}s, "
        f"best epoch {result.best_epoch + 1}"
    )
    _print_report(report, out)
    return 0


def _run_distributed(args: argparse.Namespace, cfg: RunConfig, out: str) -> int:
    # Imported here: only this path needs them.
    from hirex.distributed.launch import LaunchConfig, launch
    from hirex.distributed.scope import check_distributed_config

    launch_cfg = LaunchConfig(args.nnodes, args.nproc_per_node, args.rdzv_endpoint)
    check_distributed_config(cfg)
    # The data is loaded (downloaded, generated) once here, so the ranks only read it.
    dataset = dataset_from_config(cfg.data)
    print(dataset.summary())
    check_init_from(cfg, dataset)
    out_dir = prepare_run_dir(cfg, out, args.restart)
    print(
        f"training on {launch_cfg.world_size} processes "
        f"({launch_cfg.nnodes} host(s) x {launch_cfg.nproc_per_node})"
    )
    worker_args = [str(out_dir)] + (["--quiet"] if args.quiet else [])
    status = launch(launch_cfg, "hirex.distributed.worker", worker_args)
    if status != 0:
        print(
            f"hirex train: error: a training process failed (exit status {status}); "
            f"{out_dir}/ keeps the last checkpoint, and the same command resumes from it",
            file=sys.stderr,
        )
        return 1
    metrics = Path(out_dir) / "metrics.json"
    if not metrics.exists():  # real hosts without a shared file system: rank 0's host has it
        print(f"training finished; the host of rank 0 holds the run folder {out_dir}/")
        return 0
    report = json.loads(metrics.read_text())
    print(f"trained {len(report['epochs'])} epochs, best epoch {report['best_epoch']}")
    _print_report(report, out)
    return 0


def _print_report(report: dict, out: str) -> None:
    print_metrics("valid", report["valid"])
    print_metrics("test ", report["test"])
    print(f"run written to {out}/")
