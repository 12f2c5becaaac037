"""Choose the spectral branch's rank and weight on validation for a trained pooled-history model.

Loads a trained model, dot or MoL (its learned part), attaches the branch at every rank x weight
and reports the validation metrics, so the choice in configs/gowalla-spectral-branch.toml can be
checked and redone on other data or another scorer.  Test is read only with --test, and then only
for the setting that is best on validation.

    python benchmarks/spectral_sweep.py --config configs/gowalla-spectral-branch.toml \\
        --model runs/bench-gowalla-spectral-branch/model.safetensors [--ranks 256,1024] \\
        [--weights 1,3,5] [--linear-weights 0,8,16]

Writes benchmarks/results/spectral_sweep.json (--output to name it otherwise).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time

import torch
from common import RESULTS, SHARED_DATA, command_line, machine

from hirex.atomic_files import atomic_write_json
from hirex.config import apply_overrides, load_config
from hirex.eval.protocols import evaluate
from hirex.models.retrieval_model import RetrievalModel
from hirex.models.spectral import attach_spectral_branch
from hirex.runs import dataset_from_config
from hirex.train.trainer import eval_ks, select_metric


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", required=True, help="the config the model was trained with")
    p.add_argument(
        "--model", required=True, help="model.safetensors of a pooled-history model (dot or MoL)"
    )
    p.add_argument("--data-dir", default=str(SHARED_DATA))
    p.add_argument("--ranks", default="256,1024")
    p.add_argument("--weights", default="1,3,5")
    p.add_argument(
        "--linear-weights",
        default="0",
        help="weights of the linear-filter block (model.spectral_linear_weight); 0: none",
    )
    p.add_argument(
        "--test", action="store_true", help="also evaluate the best setting (only) on test"
    )
    p.add_argument("--output", default="spectral_sweep", help="results/<output>.json")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = apply_overrides(load_config(args.config), [f'data.data_dir="{args.data_dir}"'])
    ds = dataset_from_config(cfg.data)
    trained = RetrievalModel.load(args.model)
    if (trained.n_users, trained.n_items) != (ds.n_users, ds.n_items):
        raise SystemExit(
            f"{args.model} was trained on {trained.n_users} users x {trained.n_items} items, but "
            f"the data of {args.config} has {ds.n_users} x {ds.n_items}; pass the config the "
            "model was trained with"
        )
    metric = select_metric(cfg, ds)
    ks = eval_ks(cfg, ds)
    # The learned part alone: every parameter except the branch's buffers.
    learned = {k: v for k, v in trained.state_dict().items() if not k.startswith("spectral.")}

    linear_weights = [float(b) for b in args.linear_weights.split(",")]
    linear = any(b > 0 for b in linear_weights)

    def with_branch(rank: int, weight: float) -> RetrievalModel:
        mcfg = dataclasses.replace(
            trained.cfg,
            spectral_rank=rank,
            spectral_weight=weight,
            spectral_linear_weight=1.0 if linear and rank else 0.0,
        )
        model = RetrievalModel(mcfg, ds.n_users, ds.n_items)
        model.load_state_dict(learned, strict=False)  # shapes checked above; branch left empty
        return model.eval()

    rows = []
    fitted: dict[int, tuple[RetrievalModel, torch.Tensor]] = {}  # rank -> model, weight-1 items
    valid = evaluate(with_branch(0, 1.0), ds, "valid", ks).metrics
    rows.append({"rank": 0, "weight": 0.0, "linear_weight": 0.0, "valid": valid})
    print(f"no branch: valid {metric} {valid[metric]:.4f}")

    def set_weights(model: RetrievalModel, unit: torch.Tensor, weight: float, lin: float) -> None:
        scale = torch.full((unit.shape[1],), weight)
        scale[unit.shape[1] // 2 :] = lin if linear else weight
        model.spectral.items.copy_(unit * scale)

    for rank in [int(r) for r in args.ranks.split(",")]:
        t0 = time.perf_counter()
        model = with_branch(rank, 1.0)
        attach_spectral_branch(model, ds.train, cfg.train.seed)
        unit = model.spectral.items.clone()  # each block scaled to weight 1
        fitted[rank] = model, unit
        for weight in [float(w) for w in args.weights.split(",")]:
            for lin in linear_weights:
                set_weights(model, unit, weight, lin)
                valid = evaluate(model, ds, "valid", ks).metrics
                rows.append({"rank": rank, "weight": weight, "linear_weight": lin, "valid": valid})
                seconds = time.perf_counter() - t0
                print(
                    f"rank {rank} weight {weight} linear {lin}: valid {metric} "
                    f"{valid[metric]:.4f} ({seconds:.0f}s)"
                )
                t0 = time.perf_counter()
    best = max(rows, key=lambda r: r["valid"][metric])
    if args.test:
        if best["rank"]:
            model, unit = fitted[best["rank"]]
            set_weights(model, unit, best["weight"], best["linear_weight"])
        else:
            model = with_branch(0, 1.0)
        best["test"] = evaluate(model, ds, "test", ks).metrics
        print(f"test at the best setting: {metric} {best['test'][metric]:.4f}")
    out = {
        "model": str(args.model),
        "config": str(args.config),
        "metric": metric,
        "rows": rows,
        "best": {k: best[k] for k in ("rank", "weight", "linear_weight", "test") if k in best},
        "command": command_line(),
        "machine": machine(),
    }
    atomic_write_json(RESULTS / f"{args.output}.json", out)
    print(
        f"best on validation: rank {best['rank']}, weight {best['weight']}, linear weight "
        f"{best['linear_weight']}"
    )


if __name__ == "__main__":
    main()
