"""Cost of one live item change in the index: the in-place patch beside a full rebuild of the
derived arrays (what every change cost before the patch path existed).

    python benchmarks/index_updates.py [--sizes 41000,1000000] [--changes 30] [--threads 1]

Items are random embeddings with post-hoc codebooks of 64 x 32 codewords (the Gowalla serving
layout), nodes at their centroids, in two layouts: "mol" (N, Q=2, D=64), what the torch scan of
a mixture-of-logits model reads, and "dot" (N, Q=1, D=64), where search also reads the faiss
inverted lists (``DotLists``).  Each change is one add of a new item, one re-embedding of an
existing item, or one removal, followed by what a search needs (levels and member lists, and
for "dot" the faiss lists); the full rebuild is all of it built from scratch.

Writes benchmarks/results/index_updates.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import command_line, machine, write_result

from hirex.index.codebooks import ResidualCodebooks
from hirex.index.hierarchy import HierarchicalIndex
from hirex.index.inverted_lists import DotLists


def ready(index: HierarchicalIndex, layout: str) -> None:
    """What a search reads, brought up to date."""
    _ = index.levels, index.members
    if layout == "dot":
        DotLists.of(index)


def timed_changes(
    index: HierarchicalIndex, changes: int, rng: np.random.Generator, layout: str
) -> dict:
    per_kind: dict[str, list[float]] = {"add": [], "update": [], "remove": []}
    patched = 0
    for step in range(changes):
        kind = ("add", "update", "remove")[step % 3]
        src = index.item_emb[int(rng.integers(index.n_items))]
        emb = (src + 0.01 * torch.randn(src.shape))[None]
        t0 = time.perf_counter()
        if kind == "add":
            index.add_items(emb)
        elif kind == "update":
            index.add_items(emb, np.array([int(rng.integers(index.n_items))]))
        else:
            index.remove_items(np.array([int(rng.integers(index.n_items))]))
        patched += index._levels is not None
        ready(index, layout)
        per_kind[kind].append(time.perf_counter() - t0)
    return {
        "patched_share": round(patched / changes, 3),
        **{f"{k}_ms_median": round(float(np.median(v)) * 1000, 2) for k, v in per_kind.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="41000,1000000")
    p.add_argument("--changes", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layouts", default="mol,dot")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for layout in args.layouts.split(","):
        q = {"mol": 2, "dot": 1}[layout]
        for n in [int(x) for x in args.sizes.split(",")]:
            torch.manual_seed(args.seed)
            rng = np.random.default_rng(args.seed)
            emb = torch.randn(n, q, 64)
            cb = ResidualCodebooks([64, 32], q, 64)
            cb.fit_kmeans(emb[: min(n, 100_000)], seed=args.seed, niter=5)
            index = HierarchicalIndex(cb, emb)
            t0 = time.perf_counter()
            ready(index, layout)
            full = time.perf_counter() - t0
            row = {"layout": layout, "items": n, "full_rebuild_ms": round(full * 1000, 1)}
            row.update(timed_changes(index, args.changes, rng, layout))
            index.check()
            rows.append(row)
            print(row)
    write_result(
        "index_updates",
        {"rows": rows, "command": command_line(), "machine": machine()},
    )


if __name__ == "__main__":
    main()
