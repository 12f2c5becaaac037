"""How Gowalla's validation targets (carved at random from train.txt) differ from its test
targets (test.txt): GF-CF's Recall@20 / NDCG@20 on both, and the training popularity of each
split's target items.

    python benchmarks/gowalla_splits.py [--data-dir ../shared/data]

Writes benchmarks/results/gowalla_splits.json.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import SHARED_DATA, command_line, machine, write_result

from hirex.config import apply_overrides, load_config
from hirex.eval.protocols import evaluate_ranker
from hirex.models.baselines import GFCF
from hirex.runs import dataset_from_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default=str(SHARED_DATA))
    args = p.parse_args()
    cfg = apply_overrides(load_config("configs/gowalla.toml"), [f'data.data_dir="{args.data_dir}"'])
    ds = dataset_from_config(cfg.data)
    counts = ds.train.item_counts().astype(np.float64)
    out: dict = {"dataset": ds.summary(), "gf-cf": {}, "target_popularity": {}}
    # GF-CF sees what a model sees at each split: train for validation, train + valid for test.
    for split, fitted_on in (("valid", ds.train), ("test", ds.train.concat(ds.valid))):
        metrics = evaluate_ranker(GFCF(fitted_on), ds, split, (20,)).metrics
        out["gf-cf"][split] = {k: round(v, 4) for k, v in metrics.items()}
        c = counts[ds.targets(split).items]
        out["target_popularity"][split] = {
            "mean_train_count": round(float(c.mean()), 1),
            "median_train_count": float(np.median(c)),
            "share_in_top_1pct_items": round(float((c >= np.quantile(counts, 0.99)).mean()), 4),
        }
        print(split, out["gf-cf"][split], out["target_popularity"][split])
    out.update(command=command_line(), machine=machine())
    write_result("gowalla_splits", out)


if __name__ == "__main__":
    main()
