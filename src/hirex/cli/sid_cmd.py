"""``hirex sid``: fit semantic IDs from item text, and report their statistics.

Generators over the IDs train, evaluate and retrieve through ``hirex train`` (with
``--set generator.ids=DIR``), ``hirex eval`` and ``hirex retrieve``, like every other model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hirex.cli.common import add_config_options, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sid",
        help="semantic IDs for generative retrieval: fit them from item text, show statistics",
        description="Semantic IDs give every item a short code sequence in which a shared prefix "
        "means shared meaning. Fit them with `hirex sid fit`, then train a generator over them "
        "with `hirex train --set generator.ids=DIR`.",
    )
    s = p.add_subparsers(dest="sid_command", required=True, metavar="SUBCOMMAND")
    fit = s.add_parser(
        "fit",
        help="fit semantic IDs for a dataset's items ([sid] config section)",
        description="Encode every item's text and learn its ID with sid.method: lmindexer "
        "(learned end to end), rqvae (TIGER), rq_kmeans, hierarchical_kmeans, random, or "
        "hill_paths (the paths of a trained run's index, sid.run). Writes an ID folder "
        "(manifest.json + ids.safetensors) to --out.",
    )
    add_config_options(fit)
    fit.add_argument("--out", required=True, help="ID folder to write (replaced atomically)")
    fit.add_argument("--quiet", action="store_true", help="no progress bars")
    fit.set_defaults(func=run_fit)
    stats = s.add_parser(
        "stats",
        help="statistics of an ID folder: levels, codebook usage, collisions",
        description="Print the method, levels, codebook sizes, perplexity and dead codes per "
        "position, and the collision rate that the disambiguation code resolves.",
    )
    stats.add_argument("ids", help="ID folder written by `hirex sid fit`")
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    stats.set_defaults(func=run_stats)


def run_fit(args: argparse.Namespace) -> int:
    from hirex.runs import dataset_from_config
    from hirex.semantic_ids import catalogue_fingerprint, fit_ids, save_ids

    cfg = config_from_args(args)
    out = Path(args.out)
    if out.exists() and not (out / "manifest.json").exists():
        raise ValueError(f"--out {out} exists and is not an ID folder; choose another path")
    dataset = dataset_from_config(cfg.data)
    if dataset.item_text is None:
        raise ValueError(
            f"{dataset.name} has no item text; semantic IDs are learned from text (beauty and "
            "sports ship item_text.txt)"
        )
    index = None
    if cfg.sid.method == "hill_paths":
        from hirex.index.files import load_index
        from hirex.runs import INDEX_DIR

        if not cfg.sid.run:
            raise ValueError(
                "sid.method = 'hill_paths' needs --set sid.run=RUN_FOLDER (with an index)"
            )
        _, index = load_index(Path(cfg.sid.run) / INDEX_DIR)
    raw = dataset.item_ids.raw if dataset.item_ids is not None else range(dataset.n_items)
    ids = fit_ids(
        dataset.item_text,
        catalogue_fingerprint(raw),
        cfg.sid,
        index=index,
        item_names=[str(r) for r in raw],
        progress=not args.quiet,
    )
    save_ids(out, ids)
    _print_stats(ids.info["stats"])
    print(f"IDs written to {out}/ in {ids.info['fit_seconds']:.0f}s")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from hirex.semantic_ids import load_ids

    ids = load_ids(args.ids)
    stats = ids.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        _print_stats(stats)
    return 0


def _print_stats(stats: dict) -> None:
    print(
        f"{stats['method']}: {stats['items']:,} items, {stats['levels']} levels of "
        f"{stats['codebook_sizes']} codes + a disambiguation code of {stats['disambiguation_size']}"
    )
    for t, u in enumerate(stats["usage"], 1):
        print(
            f"  position {t}: perplexity {u['perplexity']:.1f} of {u['size']}, "
            f"{u['dead_codes']} dead codes, {stats['distinct_prefixes'][t - 1]:,} distinct prefixes"
        )
    print(
        f"  collision rate {stats['collision_rate']:.4f} (items sharing all semantic codes; the "
        f"disambiguation code tells them apart, at most {stats['max_disambiguation'] + 1} per ID)"
    )
