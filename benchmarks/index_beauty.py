"""Amazon beauty: the index benchmark of index_gowalla.py on leave-one-out sequences (SASRec
user tower, mixture-of-logits scorer); metrics R@5, R@10, N@5, N@10 through each index.

    python benchmarks/index_beauty.py [--config configs/index-beauty.toml] [--methods ...]

Writes benchmarks/results/index_beauty.json and index_beauty.png.
"""

from index_common import run_index_benchmark

if __name__ == "__main__":
    run_index_benchmark(
        "index_beauty",
        __doc__,
        "configs/index-beauty.toml",
        beams=["1", "2", "4", "8", "16", "32", "64"],
    )
