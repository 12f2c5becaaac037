"""Options shared by the subcommands that build a run config."""

from __future__ import annotations

import argparse

from hirex.config import RunConfig, apply_overrides, load_config


def add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML or JSON config with [data], [model], [train], [eval] sections "
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
