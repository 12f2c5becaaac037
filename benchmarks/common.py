"""Shared by the benchmark scripts: the machine description, throughput, result files."""

from __future__ import annotations

import dataclasses
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hirex.atomic_files import atomic_write_json
from hirex.config import RunConfig, config_to_dict
from hirex.data.interactions import Dataset
from hirex.index.exhaustive import exhaustive_topk, item_embeddings
from hirex.models.retrieval_model import RetrievalModel

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED_DATA = ROOT.parent / "shared" / "data"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def command_line() -> str:
    return "python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]
    )


def scoring_throughput(
    model: RetrievalModel, dataset: Dataset, n_users: int = 2048, k: int = 20
) -> float:
    """Users per second of exhaustive top-k over all items (history masked), one run."""
    history = dataset.history("test")
    users = np.linspace(0, dataset.n_users - 1, min(n_users, dataset.n_users)).astype(np.int64)
    items = item_embeddings(model)
    exhaustive_topk(model, users[:64], history, k, exclude=history, items=items)  # warm-up
    t0 = time.perf_counter()
    exhaustive_topk(model, users, history, k, exclude=history, items=items)
    return len(users) / (time.perf_counter() - t0)


def untrained_twin(cfg: RunConfig, dataset: Dataset, scorer: str) -> RetrievalModel:
    """A model of the same size with another scorer, for throughput only (not trained)."""
    # Weight tying and the spectral branch are dot-scorer options: the mixture of logits has
    # several item embeddings.
    mcfg = dataclasses.replace(
        cfg.model, scorer=scorer, share_item_embedding=False, spectral_rank=0
    )
    return RetrievalModel(mcfg, dataset.n_users, dataset.n_items, dataset.item_text).eval()


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write results/<name>.json, or to ``name`` itself when it is a path (has a folder or
    ends in .json)."""
    is_path = name.endswith(".json") or "/" in name
    path = Path(name).resolve() if is_path else RESULTS / f"{name}.json"
    atomic_write_json(path, payload)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def rounded(metrics: dict[str, float], digits: int = 4) -> dict[str, float]:
    return {k: round(float(v), digits) for k, v in metrics.items()}


def warm_start_source(model_path: str) -> dict[str, Any]:
    """What a run started from (``train.init_from``): the model file's sha256 and, from the
    metrics.json beside it, that run's training seconds and metrics."""
    import json

    from hirex.manifest import sha256_file

    path = Path(model_path)
    info: dict[str, Any] = {
        "model": str(path),
        "sha256": sha256_file(path),
        "train_seconds": 0.0,
    }
    metrics = path.parent / "metrics.json"
    if metrics.exists():
        report = json.loads(metrics.read_text())
        info.update(
            train_seconds=float(report.get("train_seconds", 0.0)),
            valid=rounded(report.get("valid", {})),
            test=rounded(report.get("test", {})),
        )
    else:
        print(f"warning: {metrics} is missing: the starting run's training time is not counted")
    return info


def run_benchmark(
    name: str,
    doc: str,
    default_config: str,
    targets: dict[str, float],
    protocol: str,
    baselines: dict[str, Any],
) -> None:
    """Train with a config on shared data, evaluate on test, measure throughput, write JSON.

    baselines: name -> callable(dataset) returning a ranker, measured in the same run.
    """
    import argparse
    import logging

    from hirex.config import apply_overrides, load_config
    from hirex.eval.protocols import evaluate_ranker
    from hirex.runs import dataset_from_config, train_run
    from hirex.train.trainer import eval_ks

    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--config", default=default_config, help=f"default: {default_config}")
    p.add_argument("--data-dir", default=str(SHARED_DATA), help="folder with the shared data")
    p.add_argument("--out", default=f"runs/bench-{name}", help="run folder (resumable)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="config override, e.g. --set train.epochs=5",
    )
    p.add_argument("--skip-baselines", action="store_true")
    p.add_argument(
        "--result-name", default=name, help=f"write results/<NAME>.json (default: {name})"
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    cfg = apply_overrides(
        load_config(args.config), [f'data.data_dir="{args.data_dir}"', *args.overrides]
    )
    ds = dataset_from_config(cfg.data)
    ks = eval_ks(cfg, ds)
    print(ds.summary())

    measured: dict[str, Any] = {}
    if not args.skip_baselines:
        for base_name, make in baselines.items():
            t0 = time.perf_counter()
            ev = evaluate_ranker(make(ds), ds, "test", ks)
            measured[base_name] = {
                **rounded(ev.metrics),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            print(f"baseline {base_name}:", measured[base_name])

    # A complete run folder (config.toml, metrics.json): hirex eval / retrieve / index and the
    # index benchmarks' --runs read it; rerunning the command resumes from its checkpoint.
    result, report = train_run(cfg, ds, args.out, restart=False, progress=True)
    test_metrics = report["test"]
    print("test:", rounded(test_metrics), f"train {result.train_seconds:.0f}s")

    # A run grown from another (train.init_from) costs that run's training too.
    start = warm_start_source(cfg.train.init_from) if cfg.train.init_from else None
    total_seconds = result.train_seconds + (start["train_seconds"] if start else 0.0)

    other = "mol" if cfg.model.scorer == "dot" else "dot"
    throughput = {
        cfg.model.scorer: round(scoring_throughput(result.model, ds), 1),
        f"{other} (untrained, same size)": round(
            scoring_throughput(untrained_twin(cfg, ds, other), ds), 1
        ),
    }
    write_result(
        args.result_name,
        {
            "dataset": ds.summary(),
            "protocol": protocol,
            "scorer": cfg.model.scorer,
            **rounded(test_metrics),
            "valid": rounded(result.best_valid),
            "best_epoch": result.best_epoch + 1,
            "train_seconds": round(result.train_seconds, 1),
            "total_train_seconds": round(total_seconds, 1),
            "init_from": start,
            "exhaustive_users_per_second": throughput,
            "baselines": measured,
            "targets": targets,
            "command": command_line(),
            "config": config_to_dict(cfg),
            "machine": machine(),
            "epochs": result.epochs,
        },
    )
