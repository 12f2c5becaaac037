"""A run folder: the config, the trained model and its results, as ``hirex train`` writes them.

<run>/config.toml              the exact config (reloads the same data and model)
<run>/model.safetensors        the trained model (weights + model config)
<run>/checkpoint.safetensors   resumable training state
<run>/metrics.json             per-epoch validation, final test metrics, timings
<run>/codebooks.safetensors    index codebooks learned with the model (index.method joint / em)
<run>/index/                   the hierarchical index with its model (index.method != none)
<run>/user_ids.json, item_ids.json   original ids, when the data had them
<run>/run.json                 sha256 of config.toml, metrics.json and the id maps, written
                               last; checked at load (the safetensors files carry their own)

A generative run (``generator.ids`` set) holds, instead of the model and index:

<run>/ids/                     the semantic IDs it generates (a copy of generator.ids)
<run>/generator/               the trained generator (manifest + safetensors)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hirex.atomic_files import atomic_write_json, atomic_write_text
from hirex.config import (
    ConfigError,
    DataConfig,
    RunConfig,
    config_to_toml,
    load_config,
    same_training,
)
from hirex.data.interactions import Dataset
from hirex.data.registry import load_dataset
from hirex.data.splits import cold_start_targets, hold_out_items
from hirex.data.tables import DELIMITED, PARQUET
from hirex.eval.protocols import evaluate_index, evaluate_ranker
from hirex.index.build import build_index
from hirex.index.exhaustive import exhaustive_topk
from hirex.index.files import save_index
from hirex.index.search import beam_search
from hirex.index.topk import TopK
from hirex.manifest import sha256_file
from hirex.models.retrieval_model import RetrievalModel, resolve_device
from hirex.models.warm_start import warm_start_state
from hirex.semantic_ids.files import load_generator, load_ids, save_ids
from hirex.semantic_ids.ids import SemanticIds, catalogue_fingerprint
from hirex.semantic_ids.retriever import GenerativeRetriever
from hirex.train.generative import (
    GENERATOR_DIR,
    GeneratorResult,
    check_generative_data,
    retriever_for,
    train_generator,
)
from hirex.train.trainer import (
    MODEL,
    TrainResult,
    build_model,
    eval_ks,
    evaluate_split,
    train_model,
)

METRICS_FORMAT = "hirex-metrics"
METRICS_VERSION = 1
INDEX_DIR = "index"
IDS_DIR = "ids"


def dataset_from_config(cfg: DataConfig) -> Dataset:
    """Load the dataset a DataConfig names, with its split options (and cold-start items held
    out when ``cold_start_fraction`` > 0)."""
    dataset = _load_named(cfg)
    if cfg.cold_start_fraction:
        dataset = hold_out_items(dataset, cfg.cold_start_fraction, seed=cfg.seed)
    return dataset


def _load_named(cfg: DataConfig) -> Dataset:
    path = Path(cfg.name)
    table_options = {
        "user_col": cfg.user_col,
        "item_col": cfg.item_col,
        "time_col": cfg.time_col,
        "weight_col": cfg.weight_col,
        "test_path": cfg.test_path,
        "test_fraction": cfg.test_fraction,
    }
    if path.name.lower().removesuffix(".gz").endswith((*PARQUET, *DELIMITED)):
        return load_dataset(
            cfg.name, valid_per_user=cfg.valid_per_user, seed=cfg.seed, **table_options
        )
    changed = [f"data.{k}" for k, v in table_options.items() if v != getattr(DataConfig(), k)]
    if changed:
        raise ConfigError(
            f"{', '.join(changed)} apply to interaction tables (CSV / TSV / Parquet files); "
            f"{cfg.name!r} is not one"
        )
    if cfg.name == "synthetic":
        return load_dataset(
            "synthetic",
            n_users=cfg.synthetic_users,
            n_items=cfg.synthetic_items,
            kind=cfg.synthetic_kind,
            valid_per_user=cfg.valid_per_user,
            seed=cfg.seed,
        )
    if cfg.name in ("beauty", "sports"):
        return load_dataset(cfg.name, data_dir=cfg.data_dir)
    if cfg.name == "gowalla" or (path.is_dir() and (path / "train.txt").exists()):
        return load_dataset(
            cfg.name, data_dir=cfg.data_dir, valid_per_user=cfg.valid_per_user, seed=cfg.seed
        )
    return load_dataset(cfg.name, data_dir=cfg.data_dir)


def finish_run(
    cfg: RunConfig, dataset: Dataset, result: TrainResult, out: str | os.PathLike
) -> dict[str, Any]:
    """Evaluate the trained model on the test split and write metrics.json and the id maps."""
    out = Path(out)
    test = evaluate_split(cfg, result.model, dataset, "test")
    report = {
        "format": METRICS_FORMAT,
        "version": METRICS_VERSION,
        "dataset": dataset.summary(),
        "best_epoch": result.best_epoch + 1,
        "valid": result.best_valid,
        "test": test.metrics,
        "test_users": test.n_users,
        "train_seconds": round(result.train_seconds, 2),
        "exhaustive_users_per_second": round(test.users_per_second, 1),
        "epochs": result.epochs,
    }
    if cfg.index.method != "none":
        report["index"] = index_run(cfg, dataset, result, out)
    if dataset.cold_items is not None:
        report["cold_start"] = cold_start_report(
            dataset, lambda cold: evaluate_split(cfg, result.model, cold, "test").metrics
        )
    write_report(out, report, dataset)
    return report


def cold_start_report(dataset: Dataset, test_metrics) -> dict[str, Any]:  # noqa: ANN001
    """Metrics on the test targets that are held-out items; test_metrics(dataset) -> dict."""
    cold = cold_start_targets(dataset)
    return {
        "items": len(dataset.cold_items),
        "test_users": int(len(cold.test.active_users())),
        "test": test_metrics(cold),
    }


def write_report(out: Path, report: dict[str, Any], dataset: Dataset) -> None:
    """metrics.json and the original-id maps of a finished run, then the run's checksums."""
    atomic_write_json(out / "metrics.json", report)
    if dataset.user_ids is not None:
        dataset.user_ids.save(out / "user_ids.json")
    if dataset.item_ids is not None:
        dataset.item_ids.save(out / "item_ids.json")
    files = {n: sha256_file(out / n) for n in RUN_FILES if (out / n).exists()}
    atomic_write_json(out / RUN_MANIFEST, {"format": "hirex-run", "version": 1, "files": files})


RUN_MANIFEST = "run.json"
RUN_FILES = ("config.toml", "metrics.json", "user_ids.json", "item_ids.json")


def verify_run_files(path: Path) -> None:
    """Check the files that run.json lists against their checksums (a run written before
    run.json existed has none to check)."""
    manifest_path = path / RUN_MANIFEST
    if not manifest_path.exists():
        return
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{manifest_path} is damaged ({err}); restore it from a copy, or retrain the run"
        ) from err
    for name, digest in files.items():
        file = path / name
        if not file.exists():
            raise ValueError(f"{file} is missing (run.json lists it); restore it from a copy")
        if sha256_file(file) != digest:
            raise ValueError(
                f"{file} does not match its checksum in {manifest_path}: it was changed or "
                "damaged after the run was written. Restore it from a copy, or retrain."
            )


def index_run(
    cfg: RunConfig, dataset: Dataset, result: TrainResult, out: str | os.PathLike
) -> dict[str, Any]:
    """Build the run's index (learned codebooks, or post hoc), write <out>/index and report
    test metrics through it at ``index.beam``."""
    t0 = time.perf_counter()
    index = build_index(result.model, cfg.index, result.codebooks, seed=cfg.train.seed)
    build_seconds = time.perf_counter() - t0
    save_index(Path(out) / INDEX_DIR, index, result.model, info={"method": cfg.index.method})
    ev = evaluate_index(
        result.model,
        index,
        dataset,
        "test",
        eval_ks(cfg, dataset),
        cfg.index.beam,
        user_batch=cfg.eval.user_batch,
    )
    return {
        "method": cfg.index.method,
        "levels": list(cfg.index.levels),
        "beam": list(cfg.index.beam),
        "build_seconds": round(build_seconds, 2),
        "test": ev.metrics,
        **{k: round(v, 5) for k, v in (ev.cost or {}).items()},
        "stats": index.stats(),
    }


def generative_ids(
    cfg: RunConfig, dataset: Dataset, out: str | os.PathLike, restart: bool
) -> SemanticIds:
    """The IDs a generative run trains on, checked against the data before anything is
    written: the run folder's own copy when resuming, else ``cfg.generator.ids``."""
    check_generative_data(dataset)
    run_ids = Path(out) / IDS_DIR
    source = run_ids if run_ids.exists() and not restart else Path(cfg.generator.ids)
    ids = load_ids(source, catalogue_fingerprint(_item_raw(dataset)))
    check_generative_data(dataset, ids)
    return ids


def generative_run(
    cfg: RunConfig, dataset: Dataset, out: str | os.PathLike, ids: SemanticIds, *, progress: bool
) -> tuple[GeneratorResult, dict[str, Any]]:
    """Train a generator over ``ids`` (from ``generative_ids``) into the run folder ``out``
    (resumable), evaluate it on the test split, and write metrics.json."""
    out = Path(out)
    if not (out / IDS_DIR).exists():
        save_ids(out / IDS_DIR, ids)
    result = train_generator(cfg, dataset, ids, out, progress=progress)
    ks = eval_ks(cfg, dataset)
    test = evaluate_ranker(result.retriever.ranker(), dataset, "test", ks)
    report = {
        "format": METRICS_FORMAT,
        "version": METRICS_VERSION,
        "dataset": dataset.summary(),
        "model": "generative",
        "ids": {"method": ids.method, **ids.info.get("stats", {})},
        "best_epoch": result.best_epoch + 1,
        "valid": result.best_valid,
        "test": test.metrics,
        "test_users": test.n_users,
        "train_seconds": round(result.train_seconds, 2),
        "generative_users_per_second": round(test.users_per_second, 1),
        "epochs": result.epochs,
    }
    if dataset.cold_items is not None:
        report["cold_start"] = cold_start_report(
            dataset,
            lambda cold: evaluate_ranker(result.retriever.ranker(), cold, "test", ks).metrics,
        )
    write_report(out, report, dataset)
    return result, report


def _item_raw(dataset: Dataset) -> list:
    return (
        dataset.item_ids.raw.tolist()
        if dataset.item_ids is not None
        else list(range(dataset.n_items))
    )


@dataclass(frozen=True)
class Run:
    path: Path
    config: RunConfig
    model: RetrievalModel | None
    """None for a generative run, which ranks with ``retriever``."""
    dataset: Dataset
    retriever: GenerativeRetriever | None = None


def load_run(path: str | os.PathLike, device: str = "auto") -> Run:
    """Reload a finished run: its config, its model and the data it was trained on."""
    path = Path(path)
    verify_run_files(path)
    if (path / "config.toml").exists() and (path / GENERATOR_DIR).exists():
        return _load_generative_run(path, device)
    if not (path / "config.toml").exists() or not (path / MODEL).exists():
        raise FileNotFoundError(
            f"{path} is not a finished hirex run (needs config.toml and {MODEL}); "
            "train one with `hirex train --out DIR`"
        )
    cfg = load_config(path / "config.toml")
    model = RetrievalModel.load(path / MODEL, device=resolve_device(device))
    dataset = dataset_from_config(cfg.data)
    if (dataset.n_users, dataset.n_items) != (model.n_users, model.n_items):
        raise ValueError(
            f"{path}: the model was trained on {model.n_users} users x {model.n_items} items but "
            f"the data now has {dataset.n_users} x {dataset.n_items}; did the data change?"
        )
    return Run(path, cfg, model, dataset)


def run_topk(
    run: Run,
    users: np.ndarray,
    k: int,
    split: str = "test",
    keep_seen: bool = False,
    index: tuple | None = None,
    beam: str | tuple[int, ...] | None = None,
) -> TopK:
    """The top ``k`` items for dense ``users`` (U,) with the run's ranker: the generative
    retriever, beam search through ``index`` = (model, index), or exhaustive scoring. The
    user's history for ``split`` is what the model sees and, unless ``keep_seen``, masked."""
    history = run.dataset.history(split)
    exclude = None if keep_seen else history
    if run.retriever is not None:
        return run.retriever.topk(users, history, k, exclude=exclude)
    if index is not None:
        model, ix = index
        return beam_search(model, ix, users, history, k, beam, exclude=exclude).topk
    return exhaustive_topk(
        run.model,
        users,
        history,
        k,
        exclude=exclude,
        user_batch=run.config.eval.user_batch,
        item_chunk=run.config.eval.item_chunk,
    )


def load_scoring_run(path: str | os.PathLike, device: str, what: str) -> Run:
    """``load_run`` for commands that need a scoring model (index, TTT, the service)."""
    run = load_run(path, device)
    if run.model is None:
        raise ValueError(
            f"{path} is a generative run (semantic IDs): {what} needs a scoring model's run "
            "(hirex train without generator.ids)"
        )
    return run


def _load_generative_run(path: Path, device: str) -> Run:
    cfg = load_config(path / "config.toml")
    dataset = dataset_from_config(cfg.data)
    ids = load_ids(path / IDS_DIR, catalogue_fingerprint(_item_raw(dataset)))
    model = load_generator(path / GENERATOR_DIR, ids, resolve_device(device))
    return Run(path, cfg, None, dataset, retriever_for(cfg, model, ids, dataset))


def prepare_run_dir(cfg: RunConfig, out: str | os.PathLike, restart: bool) -> Path:
    """Create the run folder and write its config; refuse to mix configs in one folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the run (new or existing)")
    out.mkdir(parents=True, exist_ok=True)
    if restart:
        for name in (
            "checkpoint.safetensors",
            "checkpoint-refit.safetensors",
            MODEL,
            "metrics.json",
            "codebooks.safetensors",
            RUN_MANIFEST,
        ):
            (out / name).unlink(missing_ok=True)
        for name in (IDS_DIR, GENERATOR_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
    saved = out / "config.toml"
    if saved.exists() and (out / "checkpoint.safetensors").exists():
        if not same_training(load_config(saved), cfg):
            raise ValueError(
                f"{out} holds a run with another config ({saved}); use a new --out folder "
                "or pass --restart to discard that run"
            )
    text = config_to_toml(cfg)
    if not saved.exists() or saved.read_bytes() != text.encode():
        atomic_write_text(saved, text)
        # Another config: the old checksums no longer hold; written again when the run finishes.
        (out / RUN_MANIFEST).unlink(missing_ok=True)
    return out


def check_init_from(cfg: RunConfig, dataset: Dataset) -> None:
    """A ``train.init_from`` model file that does not fit this config and data is a
    ConfigError, raised before the run folder is touched."""
    if cfg.train.init_from:
        warm_start_state(cfg.train.init_from, build_model(cfg, dataset), cfg.train.seed)


def train_run(
    cfg: RunConfig, dataset: Dataset, out: str | os.PathLike, *, restart: bool, progress: bool
) -> tuple[TrainResult | GeneratorResult, dict[str, Any]]:
    """Prepare the run folder, train (resuming when it can), evaluate and write metrics.json."""
    if cfg.generator.ids:
        ids = generative_ids(cfg, dataset, out, restart)  # refused before anything is written
        out_dir = prepare_run_dir(cfg, out, restart)
        return generative_run(cfg, dataset, out_dir, ids, progress=progress)
    check_init_from(cfg, dataset)
    out_dir = prepare_run_dir(cfg, out, restart)
    result = train_model(cfg, dataset, out_dir, progress=progress)
    return result, finish_run(cfg, dataset, result, out_dir)
