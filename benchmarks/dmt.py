"""DMT (Disaggregated Multi-Tower) on emulated hosts (issue 14): SPTT exactness, bytes per
step within and across hosts, step times, model quality, and a topology cost model.

Phases (results written to ``benchmarks/results/dmt.json`` after each):

1. ``exact``: 2 emulated hosts x 2 ranks (torchrun on 127.0.0.1): the flat model (table-wise
   and row-wise), SPTT with identity towers and a one-process reference from the same
   weights; max abs difference of logits and of every gradient.
2. ``bytes``: the same 4 processes: bytes each rank sends per step, counted in the
   collectives (``CommCounter``), within and cross host, for flat, SPTT and SPTT with tower
   modules at several widths; step times on this machine; the loopback's all-to-all times.
3. ``quality``: one process (DMT's model math does not depend on the number of processes):
   AUC and normalised entropy on held-out synthetic data for the flat model, DMT with random
   towers and DMT with the partitioner's towers (from the interaction affinity of the flat
   model's learned embeddings), over several seeds.
4. ``model``: the cost model's step times for flat and DMT on 16..512 GPUs (8 per host)
   from the measured bytes and compute time, and its check against the measured steps.

    python benchmarks/dmt.py                 # all phases, about 4 minutes on 2 cores
    python benchmarks/dmt.py --phases model  # recompute from the saved measurements
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, command_line, machine

from hirex.atomic_files import atomic_write_json
from hirex.data.ctr import SyntheticCtrConfig, make_synthetic_ctr
from hirex.distributed.cost_model import (
    Profile,
    Topology,
    profile_from_counts,
    scale_batch,
    step_time,
)
from hirex.distributed.launch import LaunchConfig, launch
from hirex.distributed.partitioner import interaction_affinity, partition_towers
from hirex.distributed.sptt import TowerDLRM, sparse_to_kjt
from hirex.models.dlrm import ctr_metrics

OUT = RESULTS / "dmt.json"
NNODES, NPROC = 2, 2
GPUS = [16, 32, 64, 128, 256, 512]
bce = torch.nn.functional.binary_cross_entropy_with_logits


def save(result: dict) -> None:
    atomic_write_json(OUT, result)
    print(f"wrote {OUT}", flush=True)


def _set_out(path: str) -> None:
    global OUT
    OUT = Path(path)


def run_worker(task: str, args: list[str], timeout_s: float = 400) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{task}.json"
        t0 = time.perf_counter()
        rc = launch(
            LaunchConfig(nnodes=NNODES, nproc_per_node=NPROC, timeout_s=300),
            "hirex.distributed.dmt_worker",
            [task, "--out", str(out), *args],
            timeout_s=timeout_s,
        )
        if rc != 0:
            raise RuntimeError(f"dmt_worker {task} failed with exit status {rc}")
        res = json.loads(out.read_text())
        res["wall_seconds"] = round(time.perf_counter() - t0, 1)
        return res


# -- phase 1 and 2: multi-process ------------------------------------------------------


def phase_exact(result: dict) -> None:
    r = run_worker("exact", ["--tables", "8", "--table-size", "64", "--dim", "8", "--batch", "16"])
    result["exact"] = r
    result["sptt_max_abs_diff"] = r["sptt_max_abs_diff"]


def phase_bytes(result: dict, a: argparse.Namespace) -> None:
    args = [
        "--tables", str(a.tables), "--table-size", str(a.table_size), "--dim", str(a.dim),
        "--batch", str(a.batch), "--steps", str(a.steps),
        "--widths", *map(str, a.widths),
    ]  # fmt: skip
    r = run_worker("bytes", args)
    result["bytes"] = r
    v = r["variants"]
    flat = {k: v[k]["cross_host"] for k in ("flat_table_wise", "flat_row_wise")}
    best = min(flat, key=flat.get)
    tm = f"sptt_tm_w{a.chosen_width}"
    result["bytes_summary"] = {
        name: {
            "within_host": round(x["within_host"]),
            "cross_host": round(x["cross_host"]),
            "embedding_cross_host": round(_embedding_cross(x)),
            "step_seconds": round(x["step_seconds"], 4),
        }
        for name, x in v.items()
    }
    result["flat_baseline"] = best
    result["cross_host_reduction"] = flat[best] / v["sptt"]["cross_host"]
    result["cross_host_reduction_tm"] = flat[best] / v[tm]["cross_host"]
    result["cross_host_reduction_vs_row_wise"] = flat["flat_row_wise"] / v["sptt"]["cross_host"]
    result["cross_host_reduction_tm_vs_row_wise"] = flat["flat_row_wise"] / v[tm]["cross_host"]
    e = {k: _embedding_cross(v[k]) for k in v}
    result["embedding_cross_host_reduction"] = {
        k: {"vs_" + f: e[f] / e[k] for f in flat} for k in v if k.startswith("sptt")
    }
    result["chosen_width"] = a.chosen_width


def _embedding_cross(x: dict) -> float:
    """Cross-host bytes of rank 0 without the data-parallel gradient all-reduce."""
    return sum(
        c["cross_host"] for k, c in x["per_rank"][0]["by_group_op"].items() if "all_reduce" not in k
    )


# -- phase 3: quality ------------------------------------------------------------------


def train(model: TowerDLRM, train_set, valid, a: argparse.Namespace, seed: int) -> dict:  # noqa: ANN001
    """Adam on BCE; keeps the epoch with the best validation log loss."""
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    d, s, y = (torch.from_numpy(x) for x in (train_set.dense, train_set.sparse, train_set.labels))
    gen = torch.Generator().manual_seed(seed)
    best, best_state = float("inf"), None
    for _ in range(a.epochs):
        for rows in torch.randperm(len(y), generator=gen).split(a.train_batch):
            loss = bce(model(d[rows], s[rows]), y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
        ne = ctr_metrics(model, valid)["ne"]
        if ne < best:
            best, best_state = ne, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return {"valid_ne": float(best)}


def phase_quality(result: dict, a: argparse.Namespace) -> None:
    rows = []
    for seed in a.seeds:
        cfg = SyntheticCtrConfig(n_samples=a.samples, n_tables=16, seed=seed)
        data, _ = make_synthetic_ctr(cfg)
        rest, test = data.split(0.2, seed=seed)
        train_set, valid = rest.split(0.1, seed=seed)
        n = data.sparse.shape[1]
        row: dict = {"seed": seed, "planted_groups": [list(g) for g in data.planted_groups]}

        torch.manual_seed(seed)
        flat = TowerDLRM(data.table_sizes, data.dense.shape[1], dim=a.dim)
        t0 = time.perf_counter()
        info = train(flat, train_set, valid, a, seed)
        row["flat"] = {**ctr_metrics(flat, test), **info, "seconds": time.perf_counter() - t0}

        # the partitioner reads the flat model's learned embeddings on training samples
        sample = slice(0, min(20_000, len(train_set)))
        with torch.no_grad():
            kt = flat.sparse(sparse_to_kjt(torch.from_numpy(train_set.sparse[sample])))
            emb = kt.values().view(-1, n, a.dim).numpy()
        aff = interaction_affinity(emb, train_set.labels[sample])
        for t in a.quality_towers:
            plan = partition_towers(aff, t, imbalance=0.0, seed=seed)
            perm = np.random.default_rng(seed + 1000).permutation(n)
            towers = {
                "partitioned": plan.groups(),
                "random": [sorted(g.tolist()) for g in np.array_split(perm, t)],
            }
            width = a.dim * n // t // a.compression
            for kind, tw in towers.items():
                torch.manual_seed(seed)
                m = TowerDLRM(
                    data.table_sizes, data.dense.shape[1], dim=a.dim, towers=tw, tower_width=width
                )
                t0 = time.perf_counter()
                info = train(m, train_set, valid, a, seed)
                row[f"dmt_{kind}_{t}"] = {
                    **ctr_metrics(m, test),
                    **info,
                    "towers": tw,
                    "tower_width": width,
                    "seconds": time.perf_counter() - t0,
                }
            row[f"partition_kept_{t}"] = plan.kept
        rows.append(row)
        print({k: (v["auc"] if isinstance(v, dict) else v) for k, v in row.items()}, flush=True)
        result["quality"] = {"runs": rows, "setup": _quality_setup(a)}
        _quality_summary(result, a)
        save(result)


def _quality_setup(a: argparse.Namespace) -> dict:
    return {
        "processes": 1,
        "note": "trained in one process: DMT's model math (towers, tower modules, top) does not "
        "depend on the number of processes; SPTT exactness and bytes come from the "
        "multi-process phases",
        "samples": a.samples,
        "split": "80% train+valid (10% of it valid, best epoch by valid NE), 20% test",
        "epochs": a.epochs,
        "lr": a.lr,
        "batch": a.train_batch,
        "dim": a.dim,
        "compression": a.compression,
        "towers": a.quality_towers,
    }


def _quality_summary(result: dict, a: argparse.Namespace) -> None:
    runs = result["quality"]["runs"]
    summ = {}
    keys = ["flat"] + [f"dmt_{k}_{t}" for t in a.quality_towers for k in ("partitioned", "random")]
    for k in keys:
        auc = [r[k]["auc"] for r in runs]
        ne = [r[k]["ne"] for r in runs]
        summ[k] = {"auc_mean": float(np.mean(auc)), "auc_sd": float(np.std(auc)),
                   "ne_mean": float(np.mean(ne)), "auc": auc}  # fmt: skip
    result["quality_summary"] = summ
    head = f"dmt_partitioned_{a.headline_towers}"
    result["auc_flat"] = summ["flat"]["auc_mean"]
    result["auc_dmt"] = summ[head]["auc_mean"]
    result["auc_dmt_random"] = summ[f"dmt_random_{a.headline_towers}"]["auc_mean"]
    result["auc_gap"] = result["auc_flat"] - result["auc_dmt"]
    result["ne_flat"] = summ["flat"]["ne_mean"]
    result["ne_dmt"] = summ[head]["ne_mean"]
    result["auc_gap_per_seed"] = [r["flat"]["auc"] - r[head]["auc"] for r in runs]
    result["headline_towers"] = a.headline_towers
    for t in a.quality_towers:
        result[f"auc_gap_{t}_towers"] = (
            summ["flat"]["auc_mean"] - summ[f"dmt_partitioned_{t}"]["auc_mean"]
        )
        result[f"auc_gap_random_{t}_towers"] = (
            summ["flat"]["auc_mean"] - summ[f"dmt_random_{t}"]["auc_mean"]
        )


# -- phase 4: cost model ---------------------------------------------------------------


def compute_seconds(a: argparse.Namespace, variants: dict, reps: int = 40) -> dict[str, float]:
    """One process, one rank's batch: forward, backward, Adam step (no communication), per
    variant ``name -> (towers, width)``; the variants' steps are interleaved (so drift on a
    shared machine hits all alike) and the median is kept."""
    sizes = (a.table_size,) * a.tables
    d, s = torch.randn(a.batch, 4), torch.randint(0, a.table_size, (a.batch, a.tables))
    y = (torch.rand(a.batch) < 0.5).float()
    models = {}
    for name, (towers, width) in variants.items():
        torch.manual_seed(0)
        m = TowerDLRM(sizes, 4, dim=a.dim, towers=towers, tower_width=width)
        models[name] = (m, torch.optim.Adam(m.parameters(), lr=1e-3))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(reps + 3):
        for name, (m, opt) in models.items():
            t0 = time.perf_counter()
            loss = bce(m(d, s), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= 3:  # warm-up
                times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def phase_model(result: dict, a: argparse.Namespace) -> None:
    b = result["bytes"]
    v = b["variants"]
    world, local = b["world_size"], b["local_world_size"]
    tm = f"sptt_tm_w{a.chosen_width}"
    towers = b["towers"]
    compute = compute_seconds(
        a, {"flat_table_wise": (None, None), "sptt": (towers, None), tm: (towers, a.chosen_width)}
    )
    compute["flat_row_wise"] = compute["flat_table_wise"]
    profiles = {
        k: profile_from_counts(v[k]["per_rank"][0]["by_group_op"], world, local, compute[k])
        for k in ("flat_table_wise", "flat_row_wise", "sptt", tm)
    }
    topo = Topology()
    out: dict = {
        "topology": topo.__dict__,
        "compute_seconds_this_machine": compute,
        "assumptions": "see hirex.distributed.cost_model: fixed per-rank batch; all-to-all "
        "payload per rank constant, reduce-scatter/all-gather bytes per peer constant, "
        "all-reduced bytes constant; direct sends with per-peer latency, ring all-reduce; "
        "collectives not overlapped with compute; tower modules keep their compression ratio",
        "profile_from": "rank 0's counts at 2 hosts x 2 ranks",
    }
    scenarios = {
        "measured_compute": (1.0, 1.0),  # (compute scale, batch factor)
        "comm_only": (0.0, 1.0),
        "comm_only_batch_x16": (0.0, 16.0),
    }
    out["scenarios"] = {
        "measured_compute": "this machine's compute time per step (one CPU process)",
        "comm_only": "compute 0: the communication alone (the upper bound of the speedup)",
        "comm_only_batch_x16": f"compute 0, per-rank batch {16 * b['batch_per_rank']}: "
        "per-sample bytes x16 (bandwidth-bound rather than latency-bound)",
    }
    for scenario, (scale, factor) in scenarios.items():
        rows = []
        for w in GPUS:
            times = {}
            for k, p in profiles.items():
                p2 = scale_batch(p, factor)
                p2 = Profile(p2.terms, p2.compute_s * scale, p2.meta)
                times[k] = step_time(p2, w, topo)
            flat_best = min(("flat_table_wise", "flat_row_wise"), key=lambda k: times[k]["step"])
            rows.append(
                {
                    "gpus": w,
                    **{f"{k}_step_s": times[k]["step"] for k in times},
                    **{f"{k}_cross_host_bytes": times[k]["cross_host_bytes"] for k in times},
                    "flat_baseline": flat_best,
                    "speedup_sptt": times[flat_best]["step"] / times["sptt"]["step"],
                    "speedup_dmt": times[flat_best]["step"] / times[tm]["step"],
                }
            )
        out[scenario] = rows
    result["cost_model"] = out
    at64 = {s: next(r for r in out[s] if r["gpus"] == 64) for s in scenarios}
    result["modeled_speedup_64"] = at64["measured_compute"]["speedup_dmt"]
    result["modeled_speedup_64_comm_only"] = at64["comm_only"]["speedup_dmt"]
    result["modeled_speedup_64_sptt_only"] = at64["measured_compute"]["speedup_sptt"]
    result["modeled_speedup_64_comm_only_batch_x16"] = at64["comm_only_batch_x16"]["speedup_dmt"]
    result["cost_model_check"] = _check(b, profiles, world, local)


def _check(b: dict, profiles: dict, world: int, local: int) -> dict:
    """The cost model at the emulated (world, local) with the loopback's fitted latency and
    bandwidth for both link kinds, against the measured step times."""
    lb = b["loopback_all_to_all"]
    peers = world - 1
    alpha = lb["small"]["seconds"] / peers
    beta = lb["large"]["sent_bytes"] / max(lb["large"]["seconds"] - peers * alpha, 1e-9)
    topo = Topology(beta, beta, alpha, alpha, local_size=local)
    # 4 processes share this machine's cores: each process's compute runs that much slower
    share = max(1.0, world / (os.cpu_count() or 1))
    rows = {}
    for k, p in profiles.items():
        pred = step_time(p, world, topo)["step"]
        pred_shared = step_time(type(p)(p.terms, p.compute_s * share, p.meta), world, topo)["step"]
        meas = b["variants"][k]["step_seconds"]
        rows[k] = {
            "predicted_s": pred,
            "predicted_s_cores_shared": pred_shared,
            "measured_s": meas,
            "ratio": pred / meas,
            "ratio_cores_shared": pred_shared / meas,
        }
    return {
        "loopback_latency_s": alpha,
        "loopback_bandwidth_Bps": beta,
        "compute_slowdown_cores_shared": share,
        "note": "a weak check: one machine, loopback links for both link kinds, "
        f"{world} processes on {os.cpu_count()} cores; it tests the bookkeeping, not the "
        "topology",
        "variants": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phases", nargs="*", default=["exact", "bytes", "quality", "model"])
    p.add_argument("--tables", type=int, default=16)
    p.add_argument("--table-size", type=int, default=1000)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--batch", type=int, default=512, help="samples per rank and step")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--widths", type=int, nargs="*", default=[64, 32, 16])
    p.add_argument(
        "--chosen-width", type=int, default=32, help="tower module width of the headline"
    )
    p.add_argument("--samples", type=int, default=150_000)
    p.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--train-batch", type=int, default=256)
    p.add_argument(
        "--compression", type=int, default=4, help="tower modules' compression (quality)"
    )
    p.add_argument("--quality-towers", type=int, nargs="*", default=[2, 4])
    p.add_argument("--headline-towers", type=int, default=4)
    p.add_argument("--out", default=str(OUT), help=f"result file (default: {OUT})")
    a = p.parse_args()
    _set_out(a.out)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = (
        json.loads(OUT.read_text()) if OUT.exists() and a.phases != p.get_default("phases") else {}
    )
    result.update({"command": command_line(), "machine": machine(), "issue": 14})
    result["targets"] = {
        "cross_host_reduction": f">= local world size ({NPROC})",
        "cross_host_reduction_tm": "> cross_host_reduction",
        "modeled_speedup_64": ">= 1.9",
        "auc_gap": "<= 0.001",
        "sptt_max_abs_diff": "<= 1e-5",
    }
    phases = {
        "exact": lambda: phase_exact(result),
        "bytes": lambda: phase_bytes(result, a),
        "quality": lambda: phase_quality(result, a),
        "model": lambda: phase_model(result, a),
    }
    for name in a.phases:
        t0 = time.perf_counter()
        phases[name]()
        result.setdefault("phase_seconds", {})[name] = round(time.perf_counter() - t0, 1)
        save(result)
    keys = ["sptt_max_abs_diff", "cross_host_reduction", "cross_host_reduction_tm",
            "cross_host_reduction_vs_row_wise", "modeled_speedup_64",
            "modeled_speedup_64_comm_only", "auc_flat", "auc_dmt", "auc_gap"]  # fmt: skip
    print({k: result.get(k) for k in keys})


if __name__ == "__main__":
    sys.exit(main())
