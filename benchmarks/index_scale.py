"""How the hierarchical index scales: throughput, quality and cost on synthetic corpora of 100
thousand, 1 million and 10 million items.

The corpora are clustered the way the library's synthetic data is: ``--topics`` topics of
``--subtopics`` subtopics each (Dirichlet(1) shares, so subtopic sizes vary); an item embedding
is its subtopic's centre (topic centre + subtopic offset) plus Gaussian noise, L2-normalised.
A query embedding is a subtopic centre plus noise, so every query has a neighbourhood for the
index to find.  Two workloads per corpus size, measured in one process with the same queries
and the same thread count for torch and faiss:

* Mixture of logits (``ModelConfig(scorer="mol")``, Q = 2 item and P = 2 user embeddings of
  dimension 32, gate weights at their random init): a post-hoc index (hierarchical k-means by
  default, ``--kmeans residual`` for residual k-means; nodes scored at their centroids unless
  ``--node-embedding codewords``) through beam search (torch pair scoring) at several beam
  widths, against exhaustive scoring.  Per beam: queries per second, overlap@100 (share of the
  exhaustive top 100 that the index returns), model evaluations per query; per size: index build
  time and memory, and the fastest beam with overlap@100 >= 0.95 with its speed-up over
  exhaustive (target: >= 20x at 1M items).  Levels: about 20 items per leaf (``default_levels``).
* Dot product (Q = P = 1, dimension 64): the same kind of index (levels from ``dot_levels``:
  about 4 sqrt(n) leaves of a few hundred items), searched on its faiss inverted lists
  (``scan="auto"``), against faiss IVF-Flat (nprobe sweep, nlist near 2 sqrt(n)) and faiss
  HNSW32 (efSearch sweep) on the same item embeddings; recall@10 against the exact top 10
  (exhaustive scoring) and the fastest setting of each with recall@10 >= 0.95.

Timings: one warm-up call, then the fastest of at least ``--repeats`` calls (and at least
``MIN_TIMED_SECONDS`` of calls) over all queries in batches; seconds per query = batch wall time
/ queries.  Run it on an otherwise idle machine: with other jobs on the cores, OpenMP barriers
make the millisecond-scale searches (faiss above all) unreliable.  Memory: resident set size
(VmRSS) before and after each phase and its high-water mark inside the phase (VmHWM, reset per
phase through /proc/self/clear_refs where the kernel allows it; otherwise the process-wide
high-water mark, as ``resource.getrusage().ru_maxrss`` is); an estimated 12 GiB peak at 10M items.

    python benchmarks/index_scale.py          # 1e5, 1e6, 1e7 items, 2 threads: an estimated 1-2 h
    python benchmarks/index_scale.py --sizes 20000,50000 --queries 64 --output /tmp/smoke.json

Writes benchmarks/results/index_scale.json (after every size, so a crash keeps the sizes done)
and index_scale.png (model evaluations and seconds per query against corpus size, log-log).
"""

from __future__ import annotations

import argparse
import io
import math
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import faiss
import numpy as np
import torch
from common import RESULTS, command_line, machine

from hirex.atomic_files import atomic_write_bytes, atomic_write_json
from hirex.config import ModelConfig
from hirex.data.interactions import Interactions
from hirex.index.codebooks import ResidualCodebooks
from hirex.index.exhaustive import exhaustive_topk
from hirex.index.hierarchical_kmeans import fit_hierarchical_kmeans
from hirex.index.hierarchy import HierarchicalIndex
from hirex.index.search import beam_search, parse_beam, prepare_index, resolve_scan
from hirex.models.retrieval_model import RetrievalModel
from hirex.models.user_batch import UserBatch

MOL_K, MOL_METRIC = 100, "overlap@100"
"""Mixture of logits: share of the exhaustive top 100 that a search returns in its top 100."""
DOT_K, DOT_METRIC = 10, "recall@10"
"""Dot product: share of the exact top 10 that a search returns in its top 10."""
QUALITY_TARGET = 0.95
SPEEDUP_TARGET = {"n_items": 1_000_000, "speedup": 20.0}

MOL_DIM, MOL_EMBS = 32, 2
DOT_DIM = 64

TOPIC_NORM, SUBTOPIC_NORM, NOISE_NORM = 1.0, 0.6, 0.35
"""Expected norms of the topic centre, the subtopic offset and the per-item noise."""
SECOND_TOPIC_SHARE = 0.5
"""Mixture of logits: share of queries whose second embedding lies in another topic."""
GEN_CHUNK = 1 << 18
"""Items generated per chunk: bounds the temporary memory of generation."""

MIN_TIMED_SECONDS = 1.0
"""Fast searches are repeated until their timed calls add up to this."""

KMEANS_ITERS = 20
IVF_TRAIN_PER_LIST, IVF_KMEANS_ITERS = 64, 10
HNSW_M = 32
KIB_PER_GIB = float(1 << 20)

T = TypeVar("T")


# ---- memory and time -----------------------------------------------------------------------
def _proc_gib(field: str, path: str = "/proc/self/status") -> float:
    """A kB field of a /proc file (VmRSS, VmHWM, MemTotal), in GiB."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / KIB_PER_GIB, 3)
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark (Linux >= 4.0); False where that is refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@contextmanager
def phase(record: dict[str, Any]) -> Iterator[None]:
    """Record the wall time and the memory of the enclosed code into ``record``."""
    local = _reset_peak_rss()
    before = _proc_gib("VmRSS")
    t0 = time.perf_counter()
    yield
    record["seconds"] = round(time.perf_counter() - t0, 2)
    record["memory_gib"] = {
        "rss_before": before,
        "rss_after": _proc_gib("VmRSS"),
        "peak": _proc_gib("VmHWM"),
        "ru_maxrss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_GIB, 3),
        "peak_is_phase_local": local,
    }


def fastest(run: Callable[[], T], warmup: Callable[[], object], repeats: int) -> tuple[float, T]:
    """Call ``warmup`` once, then ``run`` at least ``repeats`` times and until the calls took
    ``MIN_TIMED_SECONDS`` together: (fastest call's seconds, last result).  Many calls of a fast
    search make its minimum robust to other jobs on the machine."""
    warmup()
    best, total, calls, out = math.inf, 0.0, 0, None
    while calls < repeats or total < MIN_TIMED_SECONDS:
        t0 = time.perf_counter()
        out = run()
        seconds = time.perf_counter() - t0
        best, total, calls = min(best, seconds), total + seconds, calls + 1
    assert out is not None
    return best, out


# ---- synthetic data ------------------------------------------------------------------------
@dataclass(frozen=True)
class Space:
    """The clustered embedding space: subtopic centres and how items spread over subtopics."""

    centres: np.ndarray
    """(topics * subtopics, E, D) float32 subtopic centres (topic centre + subtopic offset)."""
    shares: np.ndarray
    """(topics * subtopics,) float64 share of the items in each subtopic."""
    subtopics: int


def _gaussian(rng: np.random.Generator, shape: tuple[int, ...], norm: float) -> np.ndarray:
    """Gaussian vectors along the last axis with expected norm about ``norm``."""
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(norm / math.sqrt(shape[-1]))


def make_space(topics: int, subtopics: int, embs: int, dim: int, seed: int) -> Space:
    rng = np.random.default_rng([seed, 0])
    topic = _gaussian(rng, (topics, 1, embs, dim), TOPIC_NORM)
    offset = _gaussian(rng, (topics, subtopics, embs, dim), SUBTOPIC_NORM)
    centres = (topic + offset).reshape(topics * subtopics, embs, dim)
    return Space(centres, rng.dirichlet(np.ones(topics * subtopics)), subtopics)


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_items(space: Space, n: int, seed: int) -> torch.Tensor:
    """(n, E, D) float32 item embeddings, generated in chunks into one preallocated tensor."""
    rng = np.random.default_rng([seed, 1])
    out = torch.empty(n, *space.centres.shape[1:], dtype=torch.float32)
    for start in range(0, n, GEN_CHUNK):
        m = min(GEN_CHUNK, n - start)
        sub = rng.choice(len(space.shares), size=m, p=space.shares)
        x = space.centres[sub] + _gaussian(rng, (m, *space.centres.shape[1:]), NOISE_NORM)
        out[start : start + m] = torch.from_numpy(_normalised(x))
    return out


def make_queries(space: Space, n: int, p: int, seed: int) -> torch.Tensor:
    """(n, P, D) query embeddings: embedding j sits near a subtopic centre of item embedding
    j % E; with P = 2, both in the query's home topic or (``SECOND_TOPIC_SHARE``) the second one
    in another topic."""
    rng = np.random.default_rng([seed, 2])
    n_sub, embs, dim = space.centres.shape
    n_topics = n_sub // space.subtopics
    home = rng.integers(n_topics, size=n)
    other = np.where(rng.random(n) < SECOND_TOPIC_SHARE, rng.integers(n_topics, size=n), home)
    out = np.empty((n, p, dim), np.float32)
    for j in range(p):
        topic = home if j == 0 else other
        sub = topic * space.subtopics + rng.integers(space.subtopics, size=n)
        noise = _gaussian(rng, (n, dim), NOISE_NORM)
        out[:, j] = _normalised(space.centres[sub, j % embs] + noise)
    return torch.from_numpy(out)


# ---- the model and the searches ------------------------------------------------------------
def query_model(queries: torch.Tensor, scorer: str, seed: int) -> tuple[RetrievalModel, UserBatch]:
    """A model whose users are exactly ``queries`` (B, P, D): ids only, no history; the items
    live in the index (the model's own item table has one placeholder row)."""
    n, p, dim = queries.shape
    cfg = ModelConfig(
        dim=dim,
        scorer=scorer,
        mol_user_embs=p,
        mol_item_embs=p,  # the synthetic items have as many embeddings as the queries
        user_encoder="none",
        use_user_id=True,
        cosine=False,
    )
    torch.manual_seed(seed)
    model = RetrievalModel(cfg, n, 1).eval()
    with torch.no_grad():
        model.user_tower.id_emb.weight.copy_(queries.reshape(n, p * dim))
    batch = UserBatch.from_interactions(Interactions.empty(n, 1), np.arange(n))
    return model, batch


def default_levels(n: int) -> list[int]:
    """Codebook sizes giving about 20 items per bottom node: up to 256 top nodes, then levels of
    at most 64 while at least 8 items per node would be left."""
    paths = n / 20
    top = min(256, 2 ** round(math.log2(2 * math.sqrt(paths))))
    levels, rest = [top], paths / top
    while rest >= 8:
        levels.append(min(64, 2 ** round(math.log2(rest))))
        rest /= levels[-1]
    return levels


def dot_levels(n: int) -> list[int]:
    """Dot product: two levels with about 4 sqrt(n) leaves (4,096 at 1M), so a leaf holds a few
    hundred items, the size at which faiss's list scan runs at full speed: about 2 sqrt(leaves)
    top nodes (a power of two), each split into the rest."""
    leaves = 4 * math.sqrt(n)
    top = 2 ** round(math.log2(2 * math.sqrt(leaves)))
    return [top, max(2, 2 ** round(math.log2(leaves / top)))]


def build_index(
    items: torch.Tensor,
    levels: list[int],
    seed: int,
    node_embedding: str = "centroids",
    kmeans: str = "residual",
) -> tuple[HierarchicalIndex, dict[str, Any]]:
    """Residual or hierarchical k-means on the items, then the index (node arrays built
    eagerly)."""
    record: dict[str, Any] = {"levels": levels, "node_embedding": node_embedding, "kmeans": kmeans}
    with phase(record):
        t0 = time.perf_counter()
        if kmeans == "hierarchical":
            codebooks, codes = fit_hierarchical_kmeans(items, levels, seed=seed, niter=KMEANS_ITERS)
            assign = "centroids"
        else:
            codebooks = ResidualCodebooks(levels, items.shape[1], items.shape[2])
            codebooks.fit_kmeans(items, seed=seed, niter=KMEANS_ITERS)
            codes, assign = None, "codebooks"
        record["kmeans_seconds"] = round(time.perf_counter() - t0, 2)
        index = HierarchicalIndex(
            codebooks, items, codes, node_embedding=node_embedding, assign=assign
        )
        record["stats"] = index.stats()
    return index, record


def overlap(found: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean share of each truth row (E, k) found in the same row of ``found`` (>= E rows)."""
    hit = (found[: len(truth), :, None] == truth[:, None, :]).any(1)
    return float(hit.float().mean())


def exhaustive_row(
    model: RetrievalModel,
    items: torch.Tensor,
    batch: UserBatch,
    k: int,
    metric: str,
    args: argparse.Namespace,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Exact top-k of every user in ``batch`` by scoring all items; the row (exact: quality 1)
    and the ids."""
    seconds, top = fastest(
        lambda: exhaustive_topk(model, batch, None, k, items=items, user_batch=args.user_batch),
        lambda: exhaustive_topk(
            model, batch.slice(0, min(8, len(batch))), None, k, items=items[:65536]
        ),
        args.repeats,
    )
    row = timing_row("exhaustive", {"queries": len(batch)}, seconds, len(batch), items.shape[0])
    row[metric] = 1.0
    return row, top.ids


def index_rows(
    model: RetrievalModel,
    index: HierarchicalIndex,
    batch: UserBatch,
    truth: torch.Tensor,
    k: int,
    metric: str,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Beam search at every width of ``--beams``: speed, model evaluations, top-k quality."""
    rows = []
    for beam in args.beams:
        widths = parse_beam(beam, len(index.sizes))
        seconds, res = fastest(
            lambda w=widths: beam_search(
                model, index, batch, None, k, w, user_batch=args.user_batch, scan=args.scan
            ),
            lambda w=widths: beam_search(
                model, index, batch.slice(0, min(8, len(batch))), None, k, w, scan=args.scan
            ),
            args.repeats,
        )
        items, nodes = float(res.items_scored.mean()), float(res.nodes_scored.mean())
        row = timing_row("hirex index", {"beam": list(widths)}, seconds, len(batch), items + nodes)
        row["scan"] = resolve_scan(model, args.scan)
        row["items_scored_per_query"] = round(items, 1)
        row["nodes_scored_per_query"] = round(nodes, 1)
        row[metric] = round(overlap(res.topk.ids, truth), 4)
        rows.append(row)
        print(row, flush=True)
    return rows


def timing_row(
    method: str, setting: dict[str, Any], seconds: float, queries: int, scored: float
) -> dict[str, Any]:
    return {
        "method": method,
        **setting,
        "qps": round(queries / seconds, 1),
        "seconds_per_query": float(f"{seconds / queries:.4g}"),
        "scored_per_query": round(scored, 1),
    }


def faiss_rows(
    items: np.ndarray,
    queries: np.ndarray,
    truth: torch.Tensor,
    nlist: int,
    args: argparse.Namespace,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """IVF-Flat over ``--nprobes`` and HNSW over ``--ef-search`` (inner product); the cost is the
    distances computed per query (IVF: plus the nlist coarse centroids)."""
    n, d = items.shape
    rows, builds = [], {}

    def sweep(
        index: faiss.Index,
        method: str,
        params: Any,
        knob: str,
        values: list[int],
        stats: Any,
        coarse: int,
    ) -> None:
        """Search at each value of ``params.<knob>``; ``stats`` counts the distances."""

        def search() -> tuple[np.ndarray, int]:
            stats.reset()
            ids = index.search(queries, DOT_K)[1]
            return ids, stats.ndis

        for value in values:
            setattr(params, knob, value)
            seconds, (ids, ndis) = fastest(
                search, lambda: index.search(queries[:8], DOT_K), args.repeats
            )
            scored = ndis / len(queries) + coarse
            row = timing_row(method, {knob: value}, seconds, len(queries), scored)
            row[DOT_METRIC] = round(overlap(torch.from_numpy(ids), truth), 4)
            rows.append(row)
            print(row, flush=True)

    record: dict[str, Any] = {"nlist": nlist}
    with phase(record):
        rng = np.random.default_rng([args.seed, 3])
        train = items[np.sort(rng.choice(n, min(n, IVF_TRAIN_PER_LIST * nlist), replace=False))]
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = IVF_KMEANS_ITERS
        ivf.train(train)
        ivf.add(items)
    builds["faiss ivf-flat"] = record
    sweep(ivf, "faiss ivf-flat", ivf, "nprobe", args.nprobes, faiss.cvar.indexIVF_stats, nlist)
    del ivf
    if n > args.hnsw_max_items:
        builds["faiss hnsw"] = {"skipped": f"more than --hnsw-max-items {args.hnsw_max_items}"}
        return rows, builds
    record = {"M": HNSW_M}
    with phase(record):
        hnsw = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        record["efConstruction"] = hnsw.hnsw.efConstruction
        hnsw.add(items)
    builds["faiss hnsw"] = record
    sweep(hnsw, "faiss hnsw", hnsw.hnsw, "efSearch", args.ef_search, faiss.cvar.hnsw_stats, 0)
    return rows, builds


# ---- one corpus size -----------------------------------------------------------------------
def run_mol(n: int, levels: list[int], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"data": {}}
    with phase(out["data"]):
        space = make_space(args.topics, args.subtopics, MOL_EMBS, MOL_DIM, args.seed)
        items = make_items(space, n, args.seed)
        model, batch = query_model(
            make_queries(space, args.queries, MOL_EMBS, args.seed), "mol", args.seed
        )
    index, out["build"] = build_index(items, levels, args.seed, args.node_embedding, args.kmeans)
    n_exh = min(args.exhaustive_queries, args.queries)
    exhaustive, truth = exhaustive_row(
        model, items, batch.slice(0, min(n_exh, len(batch))), MOL_K, MOL_METRIC, args
    )
    print(exhaustive, flush=True)
    rows = index_rows(model, index, batch, truth, MOL_K, MOL_METRIC, args)
    out["rows"] = [exhaustive, *rows]
    on_target = [r for r in rows if r[MOL_METRIC] >= QUALITY_TARGET]
    out["best"] = None
    if on_target:
        best = max(on_target, key=lambda r: r["qps"])
        out["best"] = {**best, "speedup_over_exhaustive": round(best["qps"] / exhaustive["qps"], 2)}
    return out


def run_dot(n: int, levels: list[int], nlist: int, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"data": {}}
    with phase(out["data"]):
        space = make_space(args.topics, args.subtopics, 1, DOT_DIM, args.seed + 1)
        items = make_items(space, n, args.seed + 1)
        queries = make_queries(space, args.queries, 1, args.seed + 1)
        model, batch = query_model(queries, "dot", args.seed)
    exhaustive, truth = exhaustive_row(model, items, batch, DOT_K, DOT_METRIC, args)
    print(exhaustive, flush=True)
    index, out["build"] = build_index(items, levels, args.seed, args.node_embedding, args.kmeans)
    if resolve_scan(model, args.scan) == "faiss":
        lists: dict[str, Any] = {}
        with phase(lists):  # what the first search after a change pays
            prepare_index(model, index)
        out["build"]["faiss_lists"] = lists
    rows = index_rows(model, index, batch, truth, DOT_K, DOT_METRIC, args)
    del index
    flat, q = items[:, 0].numpy(), np.ascontiguousarray(queries[:, 0].numpy())
    faiss_part, out["faiss_build"] = faiss_rows(flat, q, truth, nlist, args)
    out["rows"] = [exhaustive, *rows, *faiss_part]
    return out


# ---- summary and plot ----------------------------------------------------------------------
SETTING_KEYS = ("beam", "nprobe", "efSearch")
TIMING_KEYS = ("qps", "seconds_per_query", "scored_per_query")


def growth_exponent(sizes: list[int], costs: list[float]) -> float | None:
    """Least-squares slope of log(cost) on log(size): < 1 is sublinear growth."""
    if len(sizes) < 2:
        return None
    return round(float(np.polyfit(np.log(sizes), np.log(costs), 1)[0]), 3)


def series(results: list[dict[str, Any]], cost: str) -> dict[str, list[tuple[int, dict]]]:
    """Per method ("hirex index (mol)", "faiss hnsw (dot)", ...): (corpus size, the row of least
    ``cost`` among those reaching the quality target) for every size where one does."""
    out: dict[str, list[tuple[int, dict]]] = {}
    for res in results:
        for part, metric in (("mol", MOL_METRIC), ("dot", DOT_METRIC)):
            if part not in res:
                continue
            best: dict[str, dict] = {}
            for row in res[part]["rows"]:
                name = f"{row['method']} ({part})"
                if row[metric] >= QUALITY_TARGET and (
                    name not in best or row[cost] < best[name][cost]
                ):
                    best[name] = row
            for name, row in best.items():
                out.setdefault(name, []).append((res["n_items"], row))
    return out


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method and size the fastest setting and the one scoring fewest items on target, how
    both costs grow with the corpus, and the mixture-of-logits speed-up over exhaustive."""
    out: dict[str, Any] = {"quality_target": QUALITY_TARGET, "speedup_target": SPEEDUP_TARGET}
    fastest, fewest = series(results, "seconds_per_query"), series(results, "scored_per_query")
    for name, points in fastest.items():
        cheap = fewest[name]
        out[name] = {
            "fastest_on_target": [
                {"n_items": n, **{k: row[k] for k in (*SETTING_KEYS, *TIMING_KEYS) if k in row}}
                for n, row in points
            ],
            "growth_exponent_seconds": growth_exponent(
                [n for n, _ in points], [row["seconds_per_query"] for _, row in points]
            ),
            "fewest_scored_on_target": [
                {
                    "n_items": n,
                    **{k: row[k] for k in (*SETTING_KEYS, "scored_per_query") if k in row},
                }
                for n, row in cheap
            ],
            "growth_exponent_scored": growth_exponent(
                [n for n, _ in cheap], [row["scored_per_query"] for _, row in cheap]
            ),
        }
    speedups = {
        res["n_items"]: (res["mol"]["best"] or {}).get("speedup_over_exhaustive")
        for res in results
        if "mol" in res
    }
    out["mol_speedup_over_exhaustive"] = {str(n): x for n, x in speedups.items()}
    if SPEEDUP_TARGET["n_items"] in speedups:
        reached = speedups[SPEEDUP_TARGET["n_items"]]
        out["speedup_target_met"] = reached is not None and reached >= SPEEDUP_TARGET["speedup"]
    return out


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One colour per workload; exhaustive dotted next to the index it is the reference of.
    colours = {
        "hirex index (mol)": "C0",
        "exhaustive (mol)": "C0",
        "hirex index (dot)": "C1",
        "exhaustive (dot)": "C1",
        "faiss ivf-flat (dot)": "C2",
        "faiss hnsw (dot)": "C3",
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, cost in zip(axes, ("scored_per_query", "seconds_per_query"), strict=True):
        for name, points in sorted(series(results, cost).items()):
            style = ":" if name.startswith("exhaustive") else "-"
            ax.plot(
                [n for n, _ in points],
                [row[cost] for _, row in points],
                style,
                color=colours[name],
                marker="o",
                label=name,
            )
    axes[0].set_ylabel(
        "fewest model evaluations (hirex: items + nodes)\nor distances (faiss) per query"
    )
    axes[1].set_ylabel("least seconds per query (batched)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("corpus size (items)")
        ax.grid(True, which="both", linewidth=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(
        f"cost against corpus size at quality >= {QUALITY_TARGET} "
        f"({MOL_METRIC} for mol, {DOT_METRIC} for dot)"
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# ---- command line --------------------------------------------------------------------------
def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int_list, default=[100_000, 1_000_000, 10_000_000])
    p.add_argument("--queries", type=int, default=256, help="queries timed through the indexes")
    p.add_argument(
        "--exhaustive-queries",
        type=int,
        default=64,
        help="mol: the first N queries are scored exhaustively, in one batch (timing and\n"
        "overlap truth; below ~64 the item-side gate is amortised over too few queries and\n"
        "exhaustive throughput is understated); dot: exact scoring covers every query",
    )
    p.add_argument("--threads", type=int, default=2, help="torch and faiss threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--topics", type=int, default=64)
    p.add_argument("--subtopics", type=int, default=16, help="per topic")
    p.add_argument(
        "--levels",
        default="",
        help="codebook sizes per corpus size, ';'-separated in --sizes order (e.g.\n"
        "'128,32;256,64;256,64,32'); default: about 20 items per bottom node",
    )
    p.add_argument(
        "--beams",
        type=lambda s: [b.strip() for b in s.split(";") if b.strip()],
        default="4;5;6;7;8;12;16;20;24;32;48;64;96;128;256",
        help="beam widths, ';'-separated; each one width or one per level (e.g. 16,64)",
    )
    p.add_argument(
        "--workloads",
        type=lambda t: [w.strip() for w in t.split(",") if w.strip()],
        default=["mol", "dot"],
        help="which of mol,dot to run",
    )
    p.add_argument(
        "--scan",
        choices=["auto", "torch", "faiss"],
        default="auto",
        help="beam_search's scan: auto is faiss inverted lists for the dot product, torch\n"
        "pair scoring for the mixture of logits",
    )
    p.add_argument(
        "--kmeans",
        choices=["residual", "hierarchical"],
        default="hierarchical",
        help="how the post-hoc index is fitted",
    )
    p.add_argument(
        "--dot-levels",
        default="",
        help="dot product: nodes per level per corpus size, as --levels; default: about\n"
        "4 sqrt(n) leaves in two levels (dot_levels)",
    )
    p.add_argument(
        "--node-embedding",
        choices=["centroids", "codewords"],
        default="centroids",
        help="the node pseudo-items the index scores",
    )
    p.add_argument(
        "--nlists",
        type=int_list,
        default=[],
        help="faiss IVF lists per corpus size; default: power of two near 2 sqrt(n)",
    )
    p.add_argument("--nprobes", type=int_list, default=[1, 2, 4, 8, 16, 32, 64, 128])
    p.add_argument("--ef-search", type=int_list, default=[16, 32, 64, 128, 256, 512])
    p.add_argument(
        "--hnsw-max-items",
        type=int,
        default=10_000_000,
        help="skip HNSW on larger corpora (its build is the slowest step at 1e7)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help=f"timed calls at least (and {MIN_TIMED_SECONDS:g} s of calls); the fastest counts",
    )
    p.add_argument("--user-batch", type=int, default=256)
    p.add_argument("--output", type=Path, default=RESULTS / "index_scale.json")
    args = p.parse_args()
    if not args.workloads or set(args.workloads) - {"mol", "dot"}:
        p.error(f"--workloads takes mol, dot or both, got {args.workloads}")
    levels = [int_list(s) for s in args.levels.split(";") if s.strip()]
    args.levels = levels or [default_levels(n) for n in args.sizes]
    dot = [int_list(s) for s in args.dot_levels.split(";") if s.strip()]
    args.dot_levels = dot or [dot_levels(n) for n in args.sizes]
    args.nlists = args.nlists or [2 ** round(math.log2(2 * math.sqrt(n))) for n in args.sizes]
    if len({len(args.sizes), len(args.levels), len(args.dot_levels), len(args.nlists)}) != 1:
        p.error("--levels, --dot-levels and --nlists need one entry per corpus size")
    if min(args.queries, args.exhaustive_queries, args.repeats, args.threads) < 1:
        p.error("--queries, --exhaustive-queries, --repeats and --threads must be positive")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    payload: dict[str, Any] = {
        "description": __doc__.split("\n\n")[0],
        "command": command_line(),
        "machine": {
            **machine(),
            "faiss": faiss.__version__,
            "faiss_threads": args.threads,
            "memory_gib": _proc_gib("MemTotal", "/proc/meminfo"),
        },
        "settings": {
            "queries": args.queries,
            "exhaustive_queries_mol": min(args.exhaustive_queries, args.queries),
            "threads": args.threads,
            "seed": args.seed,
            "topics": args.topics,
            "subtopics_per_topic": args.subtopics,
            "norms": {"topic": TOPIC_NORM, "subtopic": SUBTOPIC_NORM, "noise": NOISE_NORM},
            "mol": {"dim": MOL_DIM, "item_embs": MOL_EMBS, "user_embs": MOL_EMBS, "k": MOL_K},
            "dot": {"dim": DOT_DIM, "k": DOT_K},
            "kmeans_iters": KMEANS_ITERS,
            "ivf": {"train_points_per_list": IVF_TRAIN_PER_LIST, "kmeans_iters": IVF_KMEANS_ITERS},
            "repeats": args.repeats,
            "min_timed_seconds": MIN_TIMED_SECONDS,
            "user_batch": args.user_batch,
        },
        "notes": [
            "mol gate weights are at their random init (no training): the scorer is still not a "
            "dot product, which is what throughput and overlap need",
            f"{MOL_METRIC}: share of the exhaustive top {MOL_K} found (mol); {DOT_METRIC}: "
            f"share of the exact top {DOT_K} found (dot); scored_per_query counts model "
            "evaluations (hirex: valid items + nodes, padding excluded; faiss: distances, IVF "
            "plus its nlist coarse centroids)",
            "memory_gib.peak is VmHWM inside the phase when peak_is_phase_local, else process-wide",
            "exhaustive mol is timed on the first exhaustive_queries_mol queries in one batch "
            "(the mixture's item-side gate is recomputed per batch, so small batches understate "
            "exhaustive throughput); every other method is timed on all queries",
            "seconds_per_query is the wall time of the fastest batched run (of at least "
            f"`repeats` runs and {MIN_TIMED_SECONDS:g} s of runs) divided by its queries",
        ],
        "sizes": [],
        "complete": False,
    }
    for n, levels, d_levels, nlist in zip(
        args.sizes, args.levels, args.dot_levels, args.nlists, strict=True
    ):
        print(f"== {n:,} items, levels {levels} (dot {d_levels}), nlist {nlist}", flush=True)
        result: dict[str, Any] = {"n_items": n}
        if "mol" in args.workloads:
            result["mol"] = run_mol(n, levels, args)
        if "dot" in args.workloads:
            result["dot"] = run_dot(n, d_levels, nlist, args)
        payload["sizes"].append(result)
        payload["summary"] = summary(payload["sizes"])
        atomic_write_json(args.output, payload)
    payload["complete"] = True
    atomic_write_json(args.output, payload)
    plot(payload["sizes"], args.output.with_suffix(".png"))
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
