"""Semantic IDs and generative retrieval on Amazon beauty / sports (leave-one-out, full ranking).

    python benchmarks/semantic_ids.py [--datasets beauty,sports] [--methods lmindexer,rqvae,...]
        [--epochs 4] [--sid-epochs 6] [--ref-epochs 8] [--threads 1] [--out runs/semantic_ids]

For each dataset: the items' text is encoded once (all-MiniLM-L6-v2 from its package), every ID
method fits IDs, and one generator per method trains through the same code path as
`hirex train --set generator.ids=...` (early stopping on a validation subset, test on every
user).  A reference row trains hirex's scoring model (configs/beauty.toml: SASRec user tower,
dot product, full softmax) on the same split, capped at --ref-epochs epochs; its posthoc
hierarchical index gives the hill_paths IDs and the index's users/s.  Cold start: with 5% of
items held out of training (data.cold_start_fraction = 0.05), the lmindexer generator and the
reference model are retrained and scored on the test targets that are held-out items.

Writes benchmarks/results/semantic_ids.json after every row (a crash keeps finished rows), with
the command and the machine.  Re-running resumes the runs under --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, SHARED_DATA, command_line, machine, rounded

from hirex.atomic_files import atomic_write_json
from hirex.config import apply_overrides, load_config
from hirex.eval.protocols import evaluate_index
from hirex.index.files import load_index
from hirex.runs import dataset_from_config, train_run
from hirex.semantic_ids import catalogue_fingerprint, fit_ids, load_ids, save_ids

log = logging.getLogger("semantic_ids")
METHODS = ["lmindexer", "rqvae", "rq_kmeans", "hill_paths", "hierarchical_kmeans", "random"]
PUBLISHED = {
    "beauty": {"TIGER": {"recall@10": 0.0648, "ndcg@10": 0.0384},
               "RPG": {"recall@10": 0.0809, "ndcg@10": 0.0464}},
    "sports": {"TIGER": {"recall@10": 0.0400, "ndcg@10": 0.0225},
               "RPG": {"recall@10": 0.0463, "ndcg@10": 0.0263}},
}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="beauty,sports")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--epochs", type=int, default=4, help="generator epochs (cap)")
    ap.add_argument("--sid-epochs", type=int, default=6, help="LMIndexer epochs per position")
    ap.add_argument("--ref-epochs", type=int, default=8, help="reference model epochs (cap)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-cold-start", action="store_true")
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--out", default="runs/semantic_ids")
    ap.add_argument("--result", default="semantic_ids")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="combine results/semantic_ids_*.json (one run per dataset, e.g. run in parallel) "
        "into results/semantic_ids.json and exit",
    )
    args = ap.parse_args()
    if args.merge:
        merge()
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    result_path = RESULTS / f"{args.result}.json"
    payload = {
        "command": command_line(),
        "machine": machine(),
        "published": PUBLISHED,
        "rows": [],
        "ids": [],
    }

    def save() -> None:
        atomic_write_json(result_path, payload)

    for name in args.datasets.split(","):
        base = [f"data.name={name!r}", f"data.data_dir={args.data_dir!r}",
                f"train.num_threads={args.threads}", "train.device='cpu'"]  # fmt: skip
        ref_cfg = apply_overrides(
            load_config("configs/beauty.toml"),
            [*base, f"train.epochs={args.ref_epochs}", "index.method='posthoc'",
             "index.levels=[256,256]", "index.beam=[16]"],
        )  # fmt: skip
        # --- reference: hirex's scoring model on the same split, and its index ------------
        ref_dir = out / f"{name}-reference"
        t0 = time.perf_counter()
        dataset = dataset_from_config(ref_cfg.data)
        _, report = train_run(ref_cfg, dataset, ref_dir, restart=False, progress=False)
        model, index = load_index(ref_dir / "index")
        ev = evaluate_index(model, index, dataset, "test", (5, 10), (16,))
        ref_row = {
            "dataset": name,
            "method": "reference: hirex SASRec dot (scoring, not generative)",
            **rounded(report["test"]),
            "cold_start_recall@10": None,
            "train_seconds": report["train_seconds"],
            "epochs": len(report["epochs"]),
            "users_per_second": report["exhaustive_users_per_second"],
            "index_users_per_second": round(ev.users_per_second, 1),
            "index_recall@10": round(ev.metrics["recall@10"], 4),
            "index_items_scored_fraction": round(ev.cost["items_scored_fraction"], 4),
        }
        log.info("reference %s: %s (%.0fs)", name, ref_row, time.perf_counter() - t0)
        if not args.no_cold_start:
            ref_row.update(cold_start(ref_cfg, out / f"{name}-reference-cold"))
        payload["rows"].append(ref_row)
        save()

        # --- IDs -------------------------------------------------------------------------
        catalogue = catalogue_fingerprint(dataset.item_ids.raw)
        sid = apply_overrides(
            ref_cfg,
            ["sid.missing_text='placeholder'", f"sid.epochs={args.sid_epochs}"],
        ).sid
        ids_paths = {}
        for method in args.methods.split(","):
            path = out / f"{name}-ids-{method}"
            if not path.exists():
                m_cfg = dataclasses.replace(sid, method=method)
                ids = fit_ids(
                    dataset.item_text, catalogue, m_cfg,
                    index=index if method == "hill_paths" else None,
                )  # fmt: skip
                save_ids(path, ids)
            ids = load_ids(path, catalogue)
            ids_paths[method] = path
            payload["ids"].append({"dataset": name, **ids.info["stats"],
                                   "fit_seconds": ids.info.get("fit_seconds")})  # fmt: skip
            save()

        # --- one generator per method ----------------------------------------------------
        for method, path in ids_paths.items():
            gen_cfg = apply_overrides(
                ref_cfg,
                [f"generator.ids={str(path)!r}", f"train.epochs={args.epochs}",
                 "train.patience=2", "train.batch_size=256", "train.lr=0.002",
                 "generator.valid_users=3000", "index.method='none'"],
            )  # fmt: skip
            _, rep = train_run(gen_cfg, dataset, out / f"{name}-gen-{method}",
                               restart=False, progress=False)  # fmt: skip
            stats = rep["ids"]
            row = {
                "dataset": name,
                "method": method,
                **rounded(rep["test"]),
                "cold_start_recall@10": None,
                "train_seconds": rep["train_seconds"],
                "epochs": len(rep["epochs"]),
                "best_epoch": rep["best_epoch"],
                "users_per_second": rep["generative_users_per_second"],
                "levels": stats["levels"],
                "codebook_sizes": stats["codebook_sizes"],
                "collision_rate": stats["collision_rate"],
                "perplexity": [u["perplexity"] for u in stats["usage"]],
                "dead_codes": [u["dead_codes"] for u in stats["usage"]],
            }
            if method == "lmindexer" and not args.no_cold_start:
                row.update(cold_start(gen_cfg, out / f"{name}-gen-{method}-cold"))
            payload["rows"].append(row)
            log.info("%s %s: %s", name, method, row)
            save()
    print(f"wrote {result_path}")


def cold_start(cfg, out: Path) -> dict:  # noqa: ANN001
    """Retrain ``cfg`` with 5% of items held out; R@10 on test targets that are held-out items."""
    cold_cfg = apply_overrides(cfg, ["data.cold_start_fraction=0.05"])
    _, report = train_run(
        cold_cfg, dataset_from_config(cold_cfg.data), out, restart=False, progress=False
    )
    return {
        "cold_start_recall@10": round(report["cold_start"]["test"]["recall@10"], 4),
        "cold_start_test_users": report["cold_start"]["test_users"],
    }


def combine(loaded: list[dict]) -> dict:
    """One result from per-dataset results: rows and ID statistics concatenated."""
    commands = [r["command"] for r in loaded]
    return {
        "command": " ; ".join(commands),
        "commands": commands,
        "machine": loaded[0]["machine"],
        "published": PUBLISHED,
        "rows": [row for r in loaded for row in r["rows"]],
        "ids": [row for r in loaded for row in r["ids"]],
    }


def merge() -> None:
    parts = sorted(RESULTS.glob("semantic_ids_*.json"))
    parts = [p for p in parts if p.stem != "semantic_ids_first_pass"]
    if not parts:
        raise SystemExit("no results/semantic_ids_*.json to merge")
    merged = combine([json.loads(p.read_text()) for p in parts])
    atomic_write_json(RESULTS / "semantic_ids.json", merged)
    for p in parts:
        p.unlink()
    print(f"merged {len(parts)} files into {RESULTS / 'semantic_ids.json'}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
