"""Cost of one live item change in the index: the in-place patch beside a full rebuild of the
derived arrays (what every change cost before the patch path existed).

    python benchmarks/index_updates.py [--sizes 41000,1000000] [--changes 30] [--threads 1]

Items are random (N, Q=2, D=64) embeddings with post-hoc codebooks of 64 x 32 codewords (the
Gowalla serving layout).  Each change is one add of a new item, one re-embedding of an existing
item, or one removal, followed by what a search needs (levels and member lists).

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


def timed_changes(index: HierarchicalIndex, changes: int, rng: np.random.Generator) -> dict:
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
        _ = index.levels, index.members
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
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        torch.manual_seed(args.seed)
        rng = np.random.default_rng(args.seed)
        emb = torch.randn(n, 2, 64)
        cb = ResidualCodebooks([64, 32], 2, 64)
        cb.fit_kmeans(emb[: min(n, 100_000)], seed=args.seed, niter=5)
        index = HierarchicalIndex(cb, emb)
        t0 = time.perf_counter()
        _ = index.levels, index.members
        full = time.perf_counter() - t0
        row = {"items": n, "full_rebuild_ms": round(full * 1000, 1)}
        row.update(timed_changes(index, args.changes, rng))
        index.check()
        rows.append(row)
        print(row)
    write_result(
        "index_updates",
        {"rows": rows, "command": command_line(), "machine": machine()},
    )


if __name__ == "__main__":
    main()
