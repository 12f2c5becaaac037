"""The worker that DMT's multi-process checks and benchmark run under ``launch``:
``python -m hirex.distributed.dmt_worker TASK --out FILE [options]``.

Tasks (rank 0 writes ``--out`` as JSON):

- ``exact``: the flat model, SPTT with identity towers and a single-process reference on
  the global batch, from the same weights: max abs differences of the logits and of every
  gradient (tables and dense layers), after one step of SGD with lr 1.
- ``bytes``: per-step bytes each rank sends, within and cross host (counted in the
  collectives by :class:`~hirex.distributed.comm_bytes.CommCounter`), and step time, for the
  flat model (table-wise and row-wise), SPTT, and SPTT with tower modules at each
  ``--widths``; and the loopback's all-to-all time (small and large payloads).
- ``count``: hand-computable collectives (and a DDP gradient all-reduce) inside a
  ``CommCounter``: what every rank counted, for the counter's test.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from hirex.data.ctr import SyntheticCtrConfig, make_synthetic_ctr
from hirex.distributed.comm_bytes import CommCounter
from hirex.distributed.launch import finish_worker, init_worker
from hirex.distributed.sptt import TowerDLRM, full_tables, load_tables, shard_model

bce = nn.functional.binary_cross_entropy_with_logits


def _towers(n_features: int, nnodes: int) -> list[list[int]]:
    """Contiguous blocks of features, one per host."""
    return [b.tolist() for b in np.array_split(np.arange(n_features), nnodes)]


def _dense_state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v
        for k, v in m.state_dict().items()
        if "embedding_bags" not in k and not hasattr(v, "local_shards")
    }


def _make(args: argparse.Namespace, towers, width) -> TowerDLRM:  # noqa: ANN001
    torch.manual_seed(args.seed)
    sizes = (args.table_size,) * args.tables
    return TowerDLRM(sizes, args.n_dense, dim=args.dim, towers=towers, tower_width=width)


def _data(args: argparse.Namespace, n: int):  # noqa: ANN202
    cfg = SyntheticCtrConfig(
        n_samples=n,
        n_tables=args.tables,
        table_size=args.table_size,
        n_dense=args.n_dense,
        n_groups=args.tables // 4,
        group_size=2,
        seed=args.seed,
    )
    data, _ = make_synthetic_ctr(cfg)
    return (
        torch.from_numpy(data.dense),
        torch.from_numpy(data.sparse),
        torch.from_numpy(data.labels),
    )


def task_exact(args: argparse.Namespace, w) -> dict:  # noqa: ANN001
    b = args.batch
    dense, sparse, labels = _data(args, b * w.world_size)
    rows = slice(w.rank * b, (w.rank + 1) * b)

    ref = _make(args, None, None)
    tables = {
        k.split("embedding_bags.")[1].split(".")[0]: v.detach().clone()
        for k, v in ref.state_dict().items()
        if "embedding_bags" in k
    }
    dense0 = {k: v.detach().clone() for k, v in _dense_state(ref).items()}
    # reference: the global batch in one process; the loss DDP and TorchRec's gradient
    # division make of per-rank sums: sum over the global batch / world size
    logits_ref = ref(dense, sparse)
    (bce(logits_ref, labels, reduction="sum") / w.world_size).backward()
    grads_ref = {
        **{k: ref.sparse.embedding_bags[k].weight.grad for k in tables},
        **{k: p.grad for k, p in ref.named_parameters() if "embedding_bags" not in k},
    }

    out: dict = {"world_size": w.world_size, "local_world_size": w.local_world_size}
    logits: dict[str, torch.Tensor] = {}
    grads: dict[str, dict[str, torch.Tensor]] = {}
    variants = {
        "flat_table_wise": (None, "table_wise"),
        "flat_row_wise": (None, "row_wise"),
        "sptt": (_towers(args.tables, w.nnodes), "table_wise"),
    }
    for name, (towers, flat) in variants.items():
        model = _make(args, towers, None)
        model.load_state_dict(dense0, strict=False)
        dmp = shard_model(model, w.world_size, w.local_world_size, flat)
        load_tables(dmp, tables)
        for k, v in _dense_state(dmp).items():
            v.copy_(dense0[k])
        opt = torch.optim.SGD(dmp.parameters(), lr=1.0)
        lg = dmp(dense[rows], sparse[rows])
        bce(lg, labels[rows], reduction="sum").backward()
        opt.step()
        after = full_tables(dmp, model.table_sizes())
        g = {k: tables[k] - after[k] for k in tables}
        g.update({k: dense0[k] - v for k, v in _dense_state(dmp).items()})
        logits[name], grads[name] = lg.detach(), g

    def maxdiff(a: dict, bb: dict) -> float:
        return max(float((a[k] - bb[k]).abs().max()) for k in a)

    def reduce_max(x: float) -> float:
        t = torch.tensor([x], dtype=torch.float64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t)

    for name in variants:
        out[f"{name}_vs_reference_logits"] = reduce_max(
            float((logits[name] - logits_ref[rows].detach()).abs().max())
        )
        out[f"{name}_vs_reference_grads"] = maxdiff(grads[name], grads_ref)
    for flat in ("flat_table_wise", "flat_row_wise"):
        out[f"sptt_vs_{flat}_logits"] = reduce_max(
            float((logits["sptt"] - logits[flat]).abs().max())
        )
        out[f"sptt_vs_{flat}_grads"] = maxdiff(grads["sptt"], grads[flat])
    out["max_abs_grad"] = max(float(v.abs().max()) for v in grads_ref.values())
    out["max_abs_table_grad"] = max(float(grads_ref[k].abs().max()) for k in tables)
    out["sptt_max_abs_diff"] = max(
        out[f"sptt_vs_{f}_{x}"]
        for f in ("flat_table_wise", "flat_row_wise")
        for x in ("logits", "grads")
    )
    return out


def _time_all_to_all(world: int, reps: int = 10) -> dict:
    """Seconds per world all-to-all on this machine, for a tiny and a large payload (the
    loopback's latency and bandwidth for the cost model's check)."""
    res = {}
    for label, floats in (("small", world), ("large", world * 262_144)):
        x = torch.ones(floats)
        y = torch.empty_like(x)
        dist.all_to_all_single(y, x)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(reps):
            dist.all_to_all_single(y, x)
        dist.barrier()
        res[label] = {
            "sent_bytes": 4 * floats * (world - 1) / world,
            "seconds": (time.perf_counter() - t0) / reps,
        }
    return res


def task_bytes(args: argparse.Namespace, w) -> dict:  # noqa: ANN001
    b = args.batch
    dense, sparse, labels = _data(args, b * w.world_size * args.steps)
    towers = _towers(args.tables, w.nnodes)
    variants: dict[str, tuple] = {
        "flat_table_wise": (None, None, "table_wise"),
        "flat_row_wise": (None, None, "row_wise"),
        "sptt": (towers, None, "table_wise"),
    }
    for width in args.widths:
        variants[f"sptt_tm_w{width}"] = (towers, width, "table_wise")
    out: dict = {
        "world_size": w.world_size,
        "local_world_size": w.local_world_size,
        "batch_per_rank": b,
        "steps": args.steps,
        "towers": towers,
        "variants": {},
    }
    out["loopback_all_to_all"] = _time_all_to_all(w.world_size)
    for name, (tw, width, flat) in variants.items():
        model = _make(args, tw, width)
        dmp = shard_model(model, w.world_size, w.local_world_size, flat)
        CommCounter.watch_ddp(dmp)
        opt = torch.optim.Adam(dmp.parameters(), lr=1e-3)

        def step(i: int, dmp=dmp, opt=opt) -> None:  # noqa: ANN001
            r = slice((i * w.world_size + w.rank) * b, (i * w.world_size + w.rank + 1) * b)
            loss = bce(dmp(dense[r], sparse[r]), labels[r])
            opt.zero_grad()
            loss.backward()
            opt.step()

        step(0)  # first step: lazy set-up (split sizes, output dists), not counted
        counter = CommCounter(w.local_world_size)
        torch.distributed.barrier()
        t0 = time.perf_counter()
        with counter:
            for i in range(1, args.steps):
                step(i)
        torch.distributed.barrier()
        secs = (time.perf_counter() - t0) / (args.steps - 1)
        mine = counter.totals.as_dict(args.steps - 1)
        gathered: list = [None] * w.world_size
        torch.distributed.all_gather_object(gathered, mine)
        out["variants"][name] = {
            "step_seconds": secs,
            "per_rank": gathered,
            "within_host": float(np.mean([g["within_host"] for g in gathered])),
            "cross_host": float(np.mean([g["cross_host"] for g in gathered])),
        }
    return out


def task_count(args: argparse.Namespace, w) -> dict:  # noqa: ANN001
    """Hand-computable collectives inside a CommCounter; every rank's totals."""
    r, ws = w.rank, w.world_size
    counter = CommCounter(w.local_world_size)
    ddp = torch.nn.parallel.DistributedDataParallel(nn.Linear(10, 1, bias=False))  # 40 bytes
    assert CommCounter.watch_ddp(ddp) == 1
    with counter:
        # all-to-all: rank r sends (j + 1) float32 rows of 3 to rank j: 12 (j + 1) bytes
        splits = [j + 1 for j in range(ws)]
        recv = [r + 1] * ws
        out = torch.empty(sum(recv), 3)
        dist.all_to_all_single(out, torch.ones(sum(splits), 3), recv, splits)
        # all-reduce of 8 float64 (64 bytes): 2 * 64 / W to each peer
        dist.all_reduce(torch.ones(8, dtype=torch.float64))
        # all-gather of 5 int64 (40 bytes) to each peer
        dist.all_gather_into_tensor(
            torch.empty(5 * ws, dtype=torch.int64), torch.ones(5, dtype=torch.int64)
        )
        # reduce-scatter of 4 W float32: 16 bytes to each peer
        dist.reduce_scatter_tensor(torch.empty(4), torch.ones(4 * ws))
        # DDP's gradient all-reduce of 40 bytes, through the hook
        ddp(torch.ones(2, 10)).sum().backward()
    gathered: list = [None] * ws
    dist.all_gather_object(gathered, counter.totals.as_dict())
    return {"world_size": ws, "local_world_size": w.local_world_size, "per_rank": gathered}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("task", choices=sorted(TASKS))
    p.add_argument("--out", required=True)
    p.add_argument("--tables", type=int, default=8)
    p.add_argument("--table-size", type=int, default=64)
    p.add_argument("--n-dense", type=int, default=4)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--batch", type=int, default=16, help="samples per rank and step")
    p.add_argument("--steps", type=int, default=4, help="bytes: steps, the first not counted")
    p.add_argument("--widths", type=int, nargs="*", default=[8], help="tower module widths")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    w = init_worker()
    code = 0
    try:
        result = TASKS[args.task](args, w)
        if w.rank == 0:
            Path(args.out).write_text(json.dumps(result, indent=1))
    except Exception:
        import traceback

        traceback.print_exc()
        code = 1
    finish_worker(code)


TASKS = {"exact": task_exact, "bytes": task_bytes, "count": task_count}

if __name__ == "__main__":
    main()
