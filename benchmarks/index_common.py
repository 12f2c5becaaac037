"""Index quality against cost on a public dataset (shared by index_gowalla.py, index_beauty.py).

For each index method (posthoc, joint, em) a model with the expressive scorer is trained with
that method (resumable run folders under --out), its index is built, and test metrics are
measured through beam search at several widths next to exhaustive scoring with the same model.
faiss IVF-Flat and HNSW run on the embeddings of a dot-product model at matched budgets.
With --runs, finished run folders are measured instead: the index each wrote at training
(``own``, e.g. a joint one) and post-hoc indexes built over the same model.
Writes benchmarks/results/<name>.json (a list of rows) and <name>.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import RESULTS, SHARED_DATA, command_line, machine, rounded, warm_start_source

from hirex.atomic_files import atomic_write_bytes, atomic_write_json
from hirex.config import RunConfig, apply_overrides, config_to_dict, load_config
from hirex.data.interactions import Dataset, Interactions
from hirex.eval.protocols import evaluate, evaluate_index, evaluate_ranker
from hirex.index.build import build_index
from hirex.index.exhaustive import item_embeddings
from hirex.index.files import load_index, read_manifest
from hirex.index.hierarchy import HierarchicalIndex
from hirex.models.user_batch import UserBatch
from hirex.runs import INDEX_DIR, dataset_from_config, train_run
from hirex.train.trainer import eval_ks


def faiss_rows(
    model, dataset: Dataset, ks: tuple[int, ...], nlists: list[int], probes: list[int]
) -> list[dict[str, Any]]:
    """faiss IVF-Flat and HNSW (inner product) on a dot model's embeddings; the cost is the share
    of items whose distance was computed per query."""
    import faiss

    items = item_embeddings(model)[:, 0].float().numpy()
    n, d = items.shape
    k_max = max(ks)
    rows = []

    def users_of(users: np.ndarray, history: Interactions) -> np.ndarray:
        batch = UserBatch.from_interactions(history, users)
        with torch.no_grad():
            return model.encode_users(batch)[:, 0].float().numpy()

    def run(index, name: str, setting: dict[str, Any], cost_fn) -> None:
        spent: list[float] = []

        def ranker(users: np.ndarray, history: Interactions, k: int) -> np.ndarray:
            q = np.ascontiguousarray(users_of(users, history))
            extra = int(history.lengths()[users].max()) if len(users) else 0
            before = cost_fn()
            _, ids = index.search(q, k + extra)
            spent.append((cost_fn() - before) / max(len(users), 1))
            out = np.full((len(users), k), -1, np.int64)
            for row, u in enumerate(users):
                seen = set(history.user_items(u).tolist())
                keep = [i for i in ids[row] if i >= 0 and i not in seen][:k]
                out[row, : len(keep)] = keep
            return out

        t0 = time.perf_counter()
        ev = evaluate_ranker(ranker, dataset, "test", ks)
        rows.append(
            {
                "method": name,
                **setting,
                "items_scored_fraction": round(float(np.sum(spent) / len(spent) / n), 5),
                **rounded(ev.metrics),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(rows[-1], flush=True)

    for nlist in nlists:
        quant = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(items)
        ivf.add(items)
        for nprobe in probes:
            ivf.nprobe = nprobe
            stats = faiss.cvar.indexIVF_stats
            stats.reset()
            run(
                ivf,
                "faiss-ivf-flat (dot model)",
                {"nlist": nlist, "nprobe": nprobe},
                lambda s=stats: s.ndis,
            )
    hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(items)
    for ef in [k_max, 2 * k_max, 4 * k_max, 8 * k_max, 16 * k_max]:
        hnsw.hnsw.efSearch = ef
        stats = faiss.cvar.hnsw_stats
        stats.reset()
        run(hnsw, "faiss-hnsw (dot model)", {"efSearch": ef}, lambda s=stats: s.ndis)
    return rows


def plot(rows: list[dict[str, Any]], metric: str, path: Path, title: str) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    methods = sorted({r["method"] for r in rows if not r["method"].startswith("exhaustive")})
    for m in methods:
        pts = sorted((r["items_scored_fraction"], r[metric]) for r in rows if r["method"] == m)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
    for r in rows:
        if r["method"].startswith("exhaustive"):
            ax.axhline(r[metric], linestyle=":", color="grey", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("share of items scored per user")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def beam_rows(
    model,
    index: HierarchicalIndex,
    ds: Dataset,
    ks: tuple[int, ...],
    beams: list[str],
    label: str,
    metric: str,
    ex,
    rows: list[dict[str, Any]],
    max_users: int | None = None,
    split: str = "test",
) -> None:
    """``split``'s metrics through ``index`` at every beam, appended to ``rows`` as method
    ``label``."""
    for beam in beams:
        ev = evaluate_index(model, index, ds, split, ks, beam, max_users=max_users)
        rows.append(
            {
                "method": label,
                "beam": beam,
                "node_embedding": index.node_embedding,
                "items_scored_fraction": round(ev.cost["items_scored_fraction"], 5),
                "nodes_scored": round(ev.cost["nodes_scored"], 1),
                **rounded(ev.metrics),
                "recall_kept": round(ev.metrics[metric] / max(ex.metrics[metric], 1e-12), 4),
                "seconds": round(ev.seconds, 1),
            }
        )
        print(rows[-1], flush=True)


def own_index(folder: str | Path, model: Any) -> tuple[HierarchicalIndex, str]:
    """The index a run wrote at training (``<run>/index``, e.g. a joint one) and its method;
    SystemExit when it is missing or was built over another model than ``model``."""
    own = Path(folder) / INDEX_DIR
    if not own.is_dir():
        raise SystemExit(f"{folder}: no index written at training ({own})")
    method = read_manifest(own).get("info", {}).get("method", "own")
    index_model, index = load_index(own)
    if not torch.equal(item_embeddings(index_model), item_embeddings(model)):
        raise SystemExit(f"{own} was built over another model than {folder}'s")
    return index, method


def exhaustive_row(label: str, ev) -> dict[str, Any]:  # noqa: ANN001
    """The row of exhaustive scoring (every item scored) with the model named ``label``."""
    row = {
        "method": f"exhaustive ({label})",
        "beam": None,
        "items_scored_fraction": 1.0,
        **rounded(ev.metrics),
        "seconds": round(ev.seconds, 1),
    }
    print(row, flush=True)
    return row


def write_rows(name: str, complete: bool, **payload: Any) -> None:
    """results/<name>.json with the rows so far (after every method or model, so an
    interrupted run keeps what it measured)."""
    atomic_write_json(
        RESULTS / f"{name}.json",
        {**payload, "complete": complete, "command": command_line(), "machine": machine()},
    )


def run_index_benchmark(name: str, doc: str, default_config: str, beams: list[str]) -> None:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=default_config, help=f"default: {default_config}")
    p.add_argument("--data-dir", default=str(SHARED_DATA))
    p.add_argument("--out", default=f"runs/{name}", help="run folders, one per method")
    p.add_argument(
        "--methods",
        default="posthoc,joint,em",
        help="posthoc also searches a hierarchical k-means index over the same model",
    )
    p.add_argument(
        "--beams", default=";".join(beams), help="beams, ';'-separated (each: 8 or 4,16)"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--skip-faiss", action="store_true")
    p.add_argument("--nlists", default="256,1024")
    p.add_argument("--probes", default="1,2,4,8,16,32")
    p.add_argument(
        "--node-embeddings",
        default="centroids,codewords",
        help="node pseudo-items to search each index with; rows of the second and later\n"
        "choices are labelled 'METHOD (CHOICE)'",
    )
    p.add_argument(
        "--runs",
        default="",
        help="comma-separated finished run folders (hirex train --out): measure post-hoc\n"
        "indexes over their models instead of training one model per method",
    )
    p.add_argument(
        "--levels",
        default="",
        help="with --runs: the post-hoc index levels (64,32); several structures ';'-separated,\n"
        "e.g. '32,16;64,32;32,16,8', each built and searched at every beam",
    )
    p.add_argument("--max-users", type=int, default=0, help="with --runs: users (0: all)")
    p.add_argument(
        "--split",
        choices=["valid", "test"],
        default="test",
        help="with --runs: the split measured (valid, to choose an index's levels and beam)",
    )
    p.add_argument(
        "--partitions",
        default="residual,hierarchical,hierarchical-learned",
        help="with --runs: the indexes (own: the index the run wrote at training, <run>/index, "
        "e.g. a joint one; residual, hierarchical: post hoc; hierarchical-learned: hierarchical "
        "k-means on the learned dimensions, index.kmeans_on = 'learned'; only for runs with a "
        "spectral branch)",
    )
    p.add_argument("--result-name", default=name, help=f"results/<NAME>.json (default: {name})")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    beams_list = [b.strip() for b in args.beams.split(";") if b.strip()]
    if args.runs:
        known = {"own", "residual", "hierarchical", "hierarchical-learned"}
        if not set(args.partitions.split(",")) <= known:
            p.error(f"--partitions takes a comma list of {sorted(known)}")
        try:
            structures = [
                tuple(int(x) for x in part.split(","))
                for part in (args.levels or "64,32").split(";")
                if part.strip()
            ]
        except ValueError:
            p.error(
                f"--levels {args.levels!r}: give codewords per level, e.g. 64,32 or '32,16;64,32'"
            )
        if not structures or any(k < 2 for levels in structures for k in levels):
            p.error(f"--levels {args.levels!r}: every level needs at least 2 nodes, e.g. 64,32")
        measure_runs(args, beams_list, structures)
        return
    if args.levels or args.max_users or args.split != "test":
        p.error(
            "--levels, --max-users and --split go with --runs (a trained config sets its own "
            "levels)"
        )
    name = args.result_name
    base = apply_overrides(
        load_config(args.config), [f'data.data_dir="{args.data_dir}"', *args.overrides]
    )
    ds = dataset_from_config(base.data)
    ks = eval_ks(base, ds)
    print(ds.summary())
    metric = f"recall@{max(ks)}"
    rows: list[dict[str, Any]] = []
    runs: dict[str, Any] = {}

    # Runs grown from a trained model (train.init_from) also cost that model's training.
    start = warm_start_source(base.train.init_from) if base.train.init_from else None

    def write(complete: bool) -> None:
        write_rows(
            name,
            complete,
            dataset=ds.summary(),
            rows=rows,
            runs=runs,
            init_from=start,
            config=config_to_dict(base),
        )

    for method in args.methods.split(","):
        cfg: RunConfig = dataclasses.replace(
            base, index=dataclasses.replace(base.index, method=method)
        )
        out = Path(args.out) / method
        t0 = time.perf_counter()
        result, report = train_run(cfg, ds, out, restart=False, progress=False)
        model, index = load_index(out / INDEX_DIR)
        runs[method] = {
            "train_seconds": report["train_seconds"],
            "index_build_seconds": report["index"]["build_seconds"],
            "index_stats": report["index"]["stats"],
            "wall_seconds": round(time.perf_counter() - t0, 1),
        }
        ex = evaluate(model, ds, "test", ks)
        rows.append(exhaustive_row(f"{method} model", ex))
        for j, node_embedding in enumerate(args.node_embeddings.split(",")):
            searched = index.with_node_embedding(node_embedding)
            label = method if j == 0 else f"{method} ({node_embedding})"
            beam_rows(model, searched, ds, ks, beams_list, label, metric, ex, rows)
        if method == "posthoc":
            # The same model with a hierarchical k-means index (k-means inside every node).
            hkm = dataclasses.replace(cfg.index, kmeans="hierarchical", node_embedding="centroids")
            searched = build_index(model, hkm, seed=cfg.train.seed)
            label = "posthoc (hierarchical k-means)"
            beam_rows(model, searched, ds, ks, beams_list, label, metric, ex, rows)
        write(complete=False)
    if not args.skip_faiss:
        dot_cfg = dataclasses.replace(
            base,
            model=dataclasses.replace(base.model, scorer="dot"),
            index=dataclasses.replace(base.index, method="none"),
        )
        out = Path(args.out) / "dot"
        result, report = train_run(dot_cfg, ds, out, restart=False, progress=False)
        ex = evaluate(result.model, ds, "test", ks)
        rows.append(exhaustive_row("dot model", ex))
        rows += faiss_rows(
            result.model,
            ds,
            ks,
            [int(x) for x in args.nlists.split(",")],
            [int(x) for x in args.probes.split(",")],
        )
    write(complete=True)
    plot(rows, metric, RESULTS / f"{name}.png", f"{name}: {metric} against items scored")
    print(f"wrote benchmarks/results/{name}.json and .png")


def measure_runs(
    args: argparse.Namespace, beams: list[str], structures: list[tuple[int, ...]]
) -> None:
    """Post-hoc indexes (residual and hierarchical k-means) over the models of finished runs,
    with exhaustive scoring of the same users, written to results/<result-name>.json and .png."""
    from hirex.config import IndexConfig
    from hirex.runs import load_run

    rows: list[dict[str, Any]] = []
    runs: dict[str, Any] = {}
    max_users = args.max_users or None
    split = args.split

    def write(complete: bool) -> None:
        write_rows(
            name,
            complete,
            dataset=ds.summary(),
            split=split,
            users_measured=max_users or "all",
            rows=rows,
            runs=runs,
        )

    name = args.result_name
    for folder in args.runs.split(","):
        run = load_run(folder, device="cpu")
        ds, cfg = run.dataset, run.config
        ks = eval_ks(cfg, ds)
        metric = f"recall@{max(ks)}"
        label = Path(folder).name
        ex = evaluate(run.model, ds, split, ks, max_users=max_users)
        rows.append(exhaustive_row(label, ex))
        runs[label] = {"folder": folder, "scorer": cfg.model.scorer, "index_build_seconds": {}}
        branch = run.model.embedding_dim > cfg.model.dim
        for partition in args.partitions.split(","):
            if partition == "own":
                if not (Path(folder) / INDEX_DIR).is_dir():
                    print(f"{label}: no index written at training; 'own' skipped")
                    continue
                index, method = own_index(folder, run.model)
                label_own = f"{method} index ({label})"
                beam_rows(
                    run.model, index, ds, ks, beams, label_own, metric, ex, rows, max_users, split
                )
                continue
            kmeans, _, on = partition.partition("-")
            if on and not branch:  # without a branch the learned dimensions are all of them
                print(f"{label}: no spectral branch, so {partition} is {kmeans}; skipped")
                continue
            for levels in structures:
                index_cfg = IndexConfig(
                    method="posthoc", levels=levels, kmeans=kmeans, kmeans_on=on or "all"
                )
                t0 = time.perf_counter()
                index = build_index(run.model, index_cfg, seed=cfg.train.seed)
                key = partition if len(structures) == 1 else f"{partition} {levels}"
                runs[label]["index_build_seconds"][key] = round(time.perf_counter() - t0, 1)
                what = f"{kmeans} k-means" + (" on the learned dimensions" if on else "")
                if len(structures) > 1:
                    what += " " + " x ".join(str(k) for k in levels)
                method = f"posthoc {what} ({label})"
                beam_rows(
                    run.model, index, ds, ks, beams, method, metric, ex, rows, max_users, split
                )
                write(complete=False)
    write(complete=True)
    plot(rows, metric, RESULTS / f"{name}.png", f"{name}: {split} {metric} against items scored")
    print(f"wrote benchmarks/results/{name}.json and .png")
