"""Amazon beauty, leave-one-out, full ranking: R@5, R@10, N@5, N@10 of hirex's model, with
popularity measured in the same run, and exhaustive-scoring throughput per scorer.

    python benchmarks/beauty.py [--config configs/beauty.toml] [--data-dir ../shared/data]

Writes benchmarks/results/beauty.json.
"""

from common import run_benchmark

from hirex.models.baselines import Popularity

if __name__ == "__main__":
    run_benchmark(
        "beauty",
        __doc__,
        "configs/beauty.toml",
        targets={"recall@10": 0.0800, "ndcg@10": 0.0420},
        protocol="leave-one-out (last item test, second last valid), full ranking, "
        "history items masked",
        baselines={"popularity": lambda ds: Popularity(ds.train.concat(ds.valid))},
    )
