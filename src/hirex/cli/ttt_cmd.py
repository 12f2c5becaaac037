"""``hirex ttt``: test-time training from the index's intermediate nodes."""

from __future__ import annotations

import argparse
from pathlib import Path

from hirex.atomic_files import atomic_write_json
from hirex.cli.common import print_metrics
from hirex.config import apply_overrides, save_config
from hirex.eval.protocols import evaluate, evaluate_index
from hirex.index.files import load_index, save_index
from hirex.models.retrieval_model import resolve_device
from hirex.runs import INDEX_DIR, load_scoring_run
from hirex.train.trainer import MODEL, eval_ks
from hirex.ttt.finetune import test_time_train


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ttt",
        help="fine-tune a run's model on data mined from its index's intermediate nodes",
        description="Mine (user, node) pairs from each user's beam-search paths at ttt.depth "
        "(kept when the share of the user's training items under the node reaches "
        "ttt.threshold), fine-tune the model on them with the nodes' representative items as "
        "targets (ttt.target = 'item') or the nodes' pseudo-items among their level's nodes "
        "('node'), optionally weighted by interest rate (ttt.weight = 'rate'), plus the "
        "node-centred subset and replayed training pairs; refresh the index, and write the "
        "result as a new run folder with its index. Only the training split is mined; "
        "validation (exhaustive, or through the index with ttt.select = 'index') picks the "
        "epoch or keeps the original model.",
    )
    p.add_argument("--run", required=True, help="run folder written by `hirex train`")
    p.add_argument("--index", help=f"index folder (default: <run>/{INDEX_DIR})")
    p.add_argument("--out", required=True, help="new run folder for the fine-tuned model")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="ttt.KEY=VALUE",
        help="override a [ttt] value, e.g. --set ttt.depth=2 --set ttt.threshold=0.4",
    )
    p.add_argument("--beam", help="beam for the reported metrics (default: the run's index.beam)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    r = load_scoring_run(args.run, args.device, "test-time training")
    bad = [o for o in args.overrides if not o.startswith("ttt.")]
    if bad:
        raise ValueError(f"hirex ttt only takes [ttt] overrides; got {bad}")
    cfg = apply_overrides(r.config, args.overrides)
    out = Path(args.out)
    if out.resolve() == r.path.resolve():
        raise ValueError("--out must be a new folder: the original run is kept as it is")
    model, index = load_index(
        Path(args.index) if args.index else r.path / INDEX_DIR, resolve_device(args.device)
    )
    ks = eval_ks(cfg, r.dataset)
    beam = args.beam or cfg.index.beam

    def measure(m, ix) -> dict:
        return {
            split: {
                "exhaustive": evaluate(m, r.dataset, split, ks).metrics,
                "index": evaluate_index(m, ix, r.dataset, split, ks, beam).metrics,
            }
            for split in ("valid", "test")
        }

    before = measure(model, index)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.toml")
    result = test_time_train(cfg, r.dataset, model, index, out, progress=not args.quiet)
    result.model.save(out / MODEL)
    save_index(out / INDEX_DIR, result.index, result.model, info={"method": "ttt"})
    after = measure(result.model, result.index)
    report = {
        "format": "hirex-ttt",
        "version": 1,
        "from_run": str(r.path),
        "mined": result.mined.summary(),
        "finetune_pairs": result.n_pairs,
        "best_epoch": result.training.best_epoch + 1,
        "epochs": result.training.epochs,
        "beam": list(beam) if not isinstance(beam, str) else beam,
        "before": before,
        "after": after,
    }
    atomic_write_json(out / "ttt.json", report)
    m = result.mined.summary()
    print(
        f"mined at depth {m['depth']}: {m['pairs']:,} (user, node) pairs (per level "
        f"{m['pairs_per_level']}), {m['users_covered']:.1%} of users covered, "
        f"{m['node_centred_interactions']:,} node-centred interactions; "
        f"{result.n_pairs:,} fine-tuning pairs with replay"
    )
    for split in ("valid", "test"):
        for kind in ("exhaustive", "index"):
            print_metrics(f"{split} {kind} before", before[split][kind])
            print_metrics(f"{split} {kind} after ", after[split][kind])
    print(f"fine-tuned run written to {out}/ (model, index/, ttt.json)")
    return 0
