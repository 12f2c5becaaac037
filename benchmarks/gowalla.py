"""Gowalla (LightGCN split), full ranking: Recall@20 / NDCG@20 of hirex's model, with GF-CF
and popularity measured in the same run, and exhaustive-scoring throughput per scorer.

    python benchmarks/gowalla.py [--config configs/gowalla.toml] [--data-dir ../shared/data]

Writes benchmarks/results/gowalla.json.
"""

from common import run_benchmark

from hirex.models.baselines import GFCF, Popularity

if __name__ == "__main__":
    run_benchmark(
        "gowalla",
        __doc__,
        "configs/gowalla.toml",
        targets={"recall@20": 0.1880, "ndcg@20": 0.1580},
        protocol="LightGCN split, full ranking, train (+valid) items masked, all test users",
        baselines={
            "gf-cf": lambda ds: GFCF(ds.train.concat(ds.valid)),
            "popularity": lambda ds: Popularity(ds.train.concat(ds.valid)),
        },
    )
