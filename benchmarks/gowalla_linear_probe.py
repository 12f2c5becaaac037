"""Would GF-CF's exact linear filter add to the learned + spectral-branch model?  A validation
probe (test is never read): score = learned + a * (ideal low-pass branch, weight 1) + b * (GF-CF's
linear filter r R~^T R~, scaled so that a typical user's best score is 1), over a grid of a x b.

The linear filter is not a dot product of fixed low-dimensional embeddings (it needs the whole
normalised interaction matrix), so it cannot join the model that the index serves; the probe
measures what it would be worth.  Its rank-limited form, r V diag(s^2) V^T, is the model's
``spectral_linear_weight`` block (spectral_sweep.py --linear-weights).

    python benchmarks/gowalla_linear_probe.py \\
        --model runs/bench-gowalla-spectral-branch/model.safetensors \\
        [--branch-weights 3] [--linear-weights 0,4,16]

The model must hold an attached branch (rank K, trained weight W from its config); its block is
rescaled to weight 1 before the grid.  Writes benchmarks/results/gowalla_linear_probe.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import SHARED_DATA, command_line, machine, write_result

from hirex.data.registry import load_dataset
from hirex.eval.metrics import MetricAccumulator
from hirex.index.exhaustive import item_embeddings
from hirex.models.baselines import GFCF
from hirex.models.retrieval_model import RetrievalModel
from hirex.models.user_batch import UserBatch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data-dir", default=str(SHARED_DATA))
    p.add_argument("--branch-weights", default="3")
    p.add_argument("--linear-weights", default="0,4,16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--block", type=int, default=1024, help="users per block")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("gowalla", data_dir=args.data_dir, valid_per_user=1, seed=0)
    model = RetrievalModel.load(args.model)
    if model.spectral is None or not model.spectral.active or model.cfg.spectral_linear_weight:
        raise SystemExit(f"{args.model}: needs an attached spectral branch without a linear block")
    dim, temp, trained_weight = model.cfg.dim, model.cfg.temperature, model.cfg.spectral_weight
    grid = [
        (float(a), float(b))
        for a in args.branch_weights.split(",")
        for b in args.linear_weights.split(",")
    ]
    hist, targets = ds.train, ds.valid
    gfcf = GFCF(hist)
    items = item_embeddings(model)[:, 0]
    users = np.flatnonzero(targets.lengths() > 0)
    acc = {g: MetricAccumulator([20]) for g in grid}
    scale, t0 = None, time.perf_counter()
    for start in range(0, len(users), args.block):
        block = users[start : start + args.block]
        with torch.no_grad():
            u = model.encode_users(UserBatch.from_interactions(hist, block))[:, 0]
        learned = (u[:, :dim] @ items[:, :dim].T / temp).numpy()
        branch = (u[:, dim:] @ items[:, dim:].T / temp).numpy() / trained_weight
        r = hist.to_csr()[block].astype(np.float32)
        linear = np.asarray(((r @ gfcf.norm.T) @ gfcf.norm).todense())
        if scale is None:  # fixed on the first block: a typical best linear score is 1
            scale = 1.0 / float(np.abs(linear).max(1).mean())
        linear *= scale
        rows, cols = hist.gather(block)
        for a, b in grid:
            s = learned + a * branch + b * linear
            s[rows, cols] = -np.inf
            top = torch.topk(torch.from_numpy(s), 20, dim=1).indices.numpy()
            acc[a, b].add(top, block, targets)
        print(f"{start + len(block)} / {len(users)} users, {time.perf_counter() - t0:.0f}s")
    rows_out = []
    for (a, b), m in acc.items():
        valid = {k: round(v, 4) for k, v in m.result().values.items()}
        rows_out.append({"branch_weight": a, "linear_weight": b, "valid": valid})
        print(f"branch {a} linear {b}: valid {valid}")
    write_result(
        "gowalla_linear_probe",
        {
            "model": args.model,
            "rows": rows_out,
            "best": max(rows_out, key=lambda r: r["valid"]["recall@20"]),
            "command": command_line(),
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
