"""Build a hierarchical index over a trained model's items."""

from __future__ import annotations

import logging
import time

from hirex.config import IndexConfig
from hirex.index.codebooks import ResidualCodebooks
from hirex.index.exhaustive import item_embeddings
from hirex.index.hierarchy import HierarchicalIndex
from hirex.models.retrieval_model import RetrievalModel

log = logging.getLogger(__name__)


def build_index(
    model: RetrievalModel,
    cfg: IndexConfig,
    codebooks: ResidualCodebooks | None = None,
    seed: int = 0,
) -> HierarchicalIndex:
    """Paths for every item of ``model`` by hard assignment.

    codebooks: learned with the model (index.method joint or em); None fits them post hoc by
    residual k-means (faiss) on the trained item embeddings, with ``cfg.levels`` codewords.
    """
    t0 = time.perf_counter()
    items = item_embeddings(model)
    if codebooks is None:
        if cfg.method in ("joint", "em"):
            raise ValueError(
                f"index.method = {cfg.method!r} learns the codebooks during training; train with "
                "it (hirex train) or build a posthoc index"
            )
        codebooks = ResidualCodebooks(cfg.levels, items.shape[1], items.shape[2])
        codebooks.fit_kmeans(items, seed=seed, niter=cfg.kmeans_iters)
    codebooks = codebooks.to(items.device)
    index = HierarchicalIndex(codebooks, items, node_embedding=cfg.node_embedding)
    log.info(
        "index over %d items, levels %s, built in %.1fs",
        index.n_items,
        codebooks.sizes,
        time.perf_counter() - t0,
    )
    return index
