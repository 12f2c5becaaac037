"""Seconds per training step on Gowalla, dot against mixture of logits (issue 15, training cost).

Builds the training loop of a config (default configs/gowalla-mol.toml) for each scorer, and
for MoL with the fused mixture (``MixtureOfLogits.fused``, the default) and with the autograd
reference, runs warm-up steps, then times ``--steps`` optimiser steps on 1 thread. Minutes per
epoch = seconds per step x steps per epoch.

    python benchmarks/train_step.py            # writes results/train_step.json
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from common import RESULTS, SHARED_DATA, command_line, machine

from hirex.atomic_files import atomic_write_json
from hirex.config import load_config
from hirex.models.scorers import MixtureOfLogits
from hirex.runs import dataset_from_config
from hirex.train.trainer import _Loop, cpu_has_native_bf16


def seconds_per_step(cfg, dataset, fused: bool, warmup: int, steps: int) -> tuple[float, int]:  # noqa: ANN001
    loop = _Loop(cfg, dataset, dataset.train, None, "unused", torch.device("cpu"), False)
    for module in loop.model.modules():
        if isinstance(module, MixtureOfLogits):
            module.fused = fused
    for step in range(warmup + steps):
        if step == warmup:
            t0 = time.perf_counter()
        loss = loop._loss(0, step)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()
    return (time.perf_counter() - t0) / steps, len(loop.batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/gowalla-mol.toml")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument(
        "--bf16",
        choices=["config", "both"],
        default="config",
        help="both: time dot and fused MoL with train.bf16 on and off (is bfloat16 native here?)",
    )
    parser.add_argument("--output", default=str(RESULTS / "train_step.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_dir=str(SHARED_DATA)))
    dataset = dataset_from_config(cfg.data)
    result: dict = {
        "command": command_line(),
        "machine": machine(),
        "config": args.config,
        "cpu_native_bf16": cpu_has_native_bf16(),
    }
    rows = []
    if args.bf16 == "both":
        cases = [(sc, True, b) for b in (True, False) for sc in ("dot", "mol")]
    else:
        cases = [
            (sc, f, cfg.train.bf16) for sc, f in (("dot", True), ("mol", True), ("mol", False))
        ]
    for scorer, fused, bf16 in cases:
        run_cfg = dataclasses.replace(
            cfg,
            model=dataclasses.replace(cfg.model, scorer=scorer),
            train=dataclasses.replace(cfg.train, bf16=bf16),
        )
        s, n = seconds_per_step(run_cfg, dataset, fused, args.warmup, args.steps)
        rows.append(
            {
                "scorer": scorer,
                "mixture": ("fused" if fused else "autograd reference") if scorer == "mol" else "-",
                "bf16": bf16,
                "seconds_per_step": round(s, 4),
                "steps_per_epoch": n,
                "minutes_per_epoch": round(s * n / 60, 2),
            }
        )
        print(rows[-1], flush=True)
        result["rows"] = rows
        atomic_write_json(args.output, result)


if __name__ == "__main__":
    main()
