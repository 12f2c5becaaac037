"""Options shared by the subcommands that build a run config."""

from __future__ import annotations

import argparse
from pathlib import Path

from hirex.config import RunConfig, apply_overrides, load_config

MAX_K = 100_000
"""The largest cut-off (--k, --ks) the commands accept."""


def add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML or JSON config with [data], [model], [train], [eval], [index] sections "
        "(default: built-in defaults; see configs/ for examples)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set train.lr=0.002 (repeatable)",
    )
    p.add_argument(
        "--data",
        metavar="NAME_OR_PATH",
        help="dataset: synthetic, gowalla, beauty, sports, a LightGCN folder or a CSV/Parquet "
        "table (default: the config's data.name, synthetic)",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder holding named datasets (default: $HIREX_DATA, else ~/.cache/hirex/data)",
    )
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the config's, auto)")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    cfg = load_config(args.config) if args.config else RunConfig()
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.name={_toml_str(args.data)}")
    if args.data_dir:
        overrides.append(f"data.data_dir={_toml_str(args.data_dir)}")
    if args.device:
        overrides.append(f"train.device={_toml_str(args.device)}")
    return apply_overrides(cfg, overrides)


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def print_metrics(title: str, metrics: dict[str, float]) -> None:
    shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    print(f"{title}: {shown}")


def add_index_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--index",
        nargs="?",
        const="",
        metavar="DIR",
        help="search through a hierarchical index instead of scoring every item (DIR defaults "
        "to <run>/index; build one with `hirex index build`)",
    )
    p.add_argument(
        "--beam",
        help="with --index: nodes kept per level, one width or one per level, e.g. 8 or 4,16 "
        "(default: the run's index.beam)",
    )


def open_index(args: argparse.Namespace, run):
    """(model, index) from --index, or None when searching exhaustively."""
    from hirex.index.files import load_index
    from hirex.models.retrieval_model import resolve_device
    from hirex.runs import INDEX_DIR

    if args.index is None:
        if args.beam:
            raise ValueError("--beam needs --index")
        return None
    if run.model is None:
        raise ValueError(
            f"{run.path} is a generative run: it retrieves by generating semantic IDs (its "
            "beam width is generator.beam), not through a hierarchical index; drop --index"
        )
    path = Path(args.index) if args.index else Path(run.path) / INDEX_DIR
    model, index = load_index(path, device=resolve_device(args.device))
    if (model.n_users, model.n_items) != (run.model.n_users, run.model.n_items):
        raise ValueError(f"{path} was built for another model than the run {run.path}'s")
    return model, index


def beam_of(args: argparse.Namespace, run) -> str | tuple[int, ...]:
    return args.beam or run.config.index.beam
