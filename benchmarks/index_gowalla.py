"""Gowalla: recall@20 / NDCG@20 through joint (HILL), EM and post-hoc indexes at several beam
widths against the share of items scored, next to exhaustive scoring with the same model (the
mixture-of-logits scorer), and faiss IVF-Flat / HNSW on a dot-product model's embeddings.

    python benchmarks/index_gowalla.py [--config configs/index-gowalla.toml] [--methods ...]

Writes benchmarks/results/index_gowalla.json and index_gowalla.png.
"""

from index_common import run_index_benchmark

if __name__ == "__main__":
    run_index_benchmark(
        "index_gowalla",
        __doc__,
        "configs/index-gowalla.toml",
        beams=["1", "2", "4", "8", "16", "32", "64"],
    )
