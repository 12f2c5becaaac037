"""``hirex index build|stats``: build a hierarchical index for a trained run, inspect one."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from hirex.atomic_files import atomic_write_bytes
from hirex.cli.common import print_metrics
from hirex.config import ConfigError
from hirex.eval.protocols import evaluate_index
from hirex.index.build import build_index
from hirex.index.codebooks import load_codebooks
from hirex.index.files import load_index, read_manifest, save_index
from hirex.index.hierarchy import HierarchicalIndex
from hirex.runs import INDEX_DIR, load_scoring_run
from hirex.train.trainer import CODEBOOKS, eval_ks


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="build or inspect the hierarchical index of a trained run",
        description="A hierarchical index lets the model score a small share of the items: "
        "beam search walks the levels and the full model ranks the items under the kept nodes.",
    )
    isub = p.add_subparsers(dest="index_command", required=True, metavar="ACTION")

    b = isub.add_parser(
        "build",
        help="build an index over a run's items and save it with the model",
        description="posthoc: residual (or, with --kmeans hierarchical, hierarchical) k-means "
        "(faiss) over the trained item embeddings. joint / em: the codebooks the run learned "
        "with the model (train with index.method = joint or em). The index folder holds the "
        "model too, so it serves on its own.",
    )
    b.add_argument("--run", required=True, help="run folder written by `hirex train`")
    b.add_argument(
        "--method",
        choices=["posthoc", "joint", "em"],
        help="default: the run's index.method, or posthoc when the run learned no index",
    )
    b.add_argument(
        "--levels", help="posthoc: codewords per level, e.g. 64,16 (default: the run's config)"
    )
    b.add_argument(
        "--kmeans",
        choices=["residual", "hierarchical"],
        help="posthoc: residual k-means (shared codebooks) or k-means inside every node "
        "(default: the run's index.kmeans)",
    )
    b.add_argument(
        "--kmeans-on",
        choices=["all", "learned"],
        help="hierarchical k-means: partition on all dimensions, or on the learned ones only, "
        "leaving out a spectral branch (default: the run's index.kmeans_on)",
    )
    b.add_argument(
        "--node-embedding",
        choices=["centroids", "codewords"],
        help="what a node is scored at: the mean of its items or its codeword sum (default: "
        "the run's index.node_embedding)",
    )
    b.add_argument("--out", help=f"index folder (default: <run>/{INDEX_DIR})")
    b.add_argument("--beam", help="also evaluate on the test split with this beam, e.g. 8 or 8,16")
    b.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    b.set_defaults(func=run_build)

    s = isub.add_parser(
        "stats",
        help="level sizes, node-size balance, empty nodes; PNG histogram of node sizes",
        description="Print the index's levels (nodes, empty nodes, items per node) and write a "
        "histogram of node sizes per level as a PNG.",
    )
    s.add_argument("index", help="index folder (e.g. <run>/index)")
    s.add_argument("--png", help="histogram file (default: <index>/node_sizes.png)")
    s.add_argument("--json", action="store_true", help="print the statistics as JSON")
    s.set_defaults(func=run_stats)


def run_build(args: argparse.Namespace) -> int:
    r = load_scoring_run(args.run, args.device, "a hierarchical index")
    cfg = r.config.index
    method = args.method or (cfg.method if cfg.method != "none" else "posthoc")
    if args.levels:
        if method != "posthoc":
            raise ValueError(
                "--levels applies to posthoc indexes; joint / em use the run's codebooks"
            )
        try:
            levels = tuple(int(x) for x in args.levels.split(","))
        except ValueError:
            raise ValueError(f"--levels {args.levels!r}: give integers like 64,16") from None
        cfg = dataclasses.replace(cfg, levels=levels)
    cfg = dataclasses.replace(
        cfg,
        method=method,
        kmeans=args.kmeans or cfg.kmeans,
        kmeans_on=args.kmeans_on or cfg.kmeans_on,
        node_embedding=args.node_embedding or cfg.node_embedding,
    )
    codebooks = None
    if method in ("joint", "em"):
        if r.config.index.method != method or not (r.path / CODEBOOKS).exists():
            raise ConfigError(
                f"{r.path} did not learn a {method} index (its index.method is "
                f"{r.config.index.method!r}); train with --set index.method='{method}' or build "
                "with --method posthoc"
            )
        codebooks = load_codebooks(r.path / CODEBOOKS)
    index = build_index(r.model, cfg, codebooks, seed=r.config.train.seed)
    out = Path(args.out) if args.out else r.path / INDEX_DIR
    save_index(out, index, r.model, info={"method": method, "run": str(r.path)})
    print(f"index ({method}) over {index.n_items:,} items, levels {index.sizes} -> {out}")
    _print_stats(index)
    if args.beam:
        ev = evaluate_index(
            r.model,
            index,
            r.dataset,
            "test",
            eval_ks(r.config, r.dataset),
            args.beam,
            progress=True,
        )
        print_metrics(f"test through the index, beam {args.beam}", ev.metrics)
        print(f"items scored per user: {ev.cost['items_scored_fraction']:.2%} of the catalogue")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.index)
    _, index = load_index(args.index)
    stats = index.stats()
    if args.json:
        print(json.dumps({"info": manifest.get("info", {}), **stats}, indent=2))
    else:
        print(f"{args.index}: {manifest.get('info', {}).get('method', '?')} index")
        _print_stats(index)
    png = Path(args.png) if args.png else Path(args.index) / "node_sizes.png"
    write_histogram(index, png)
    print(f"node size histogram -> {png}")
    return 0


def _print_stats(index: HierarchicalIndex) -> None:
    stats = index.stats()
    print(f"{stats['n_active']:,} active items of {stats['n_items']:,}")
    for lv in stats["levels"]:
        print(
            f"  level {lv['level']}: {lv['nodes']:,} nodes ({lv['codebook_size']} codewords), "
            f"{lv['empty_nodes']:,} empty, items per node mean {lv['items_per_node_mean']:.1f} "
            f"max {lv['items_per_node_max']:,}, size cv {lv['size_cv']:.2f}"
        )


def write_histogram(index: HierarchicalIndex, path: Path) -> None:
    """One panel per level: how many nodes hold how many items (log-spaced bins)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    levels = index.levels
    fig, axes = plt.subplots(1, len(levels), figsize=(4 * len(levels), 3.2), squeeze=False)
    for ax, (level, lv) in zip(axes[0], enumerate(levels), strict=True):
        counts = lv.count
        top = max(int(counts.max()), 1)
        bins = np.unique(np.geomspace(1, top + 1, 30).astype(int))
        ax.hist(counts[counts > 0], bins=bins if len(bins) > 1 else 10, color="#4477aa")
        ax.set_xscale("log")
        ax.set_title(f"level {level + 1}: {len(counts):,} nodes, {(counts == 0).sum():,} empty")
        ax.set_xlabel("items under the node")
        ax.set_ylabel("nodes")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
