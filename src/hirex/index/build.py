"""Build a hierarchical index over a trained model's items."""

from __future__ import annotations

import logging
import time

import torch

from hirex.config import IndexConfig
from hirex.index.codebooks import ResidualCodebooks
from hirex.index.exhaustive import item_embeddings
from hirex.index.hierarchical_kmeans import fit_hierarchical_kmeans
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

    codebooks: learned with the model (index.method joint or em); None fits them post hoc on the
    trained item embeddings (faiss) with ``cfg.levels`` nodes per level: residual k-means, or
    hierarchical k-means with ``cfg.kmeans = "hierarchical"``.
    """
    t0 = time.perf_counter()
    items = item_embeddings(model)
    if cfg.kmeans == "hierarchical" and (codebooks is not None or cfg.method != "posthoc"):
        raise ValueError(
            f"index.kmeans = 'hierarchical' is a posthoc index; index.method = {cfg.method!r} "
            "learns residual codebooks (set index.kmeans = 'residual')"
        )
    if cfg.kmeans_on == "learned" and cfg.kmeans != "hierarchical":
        raise ValueError(
            "index.kmeans_on = 'learned' partitions by hierarchical k-means: set "
            "index.kmeans = 'hierarchical'"
        )
    if cfg.kmeans == "hierarchical" and cfg.node_embedding != "centroids":
        raise ValueError(
            "index.kmeans = 'hierarchical' scores nodes at their centroids: set "
            "index.node_embedding = 'centroids'"
        )
    codes, assign, assign_dims = None, "codebooks", None
    if codebooks is not None and codebooks.q * codebooks.dim < items.shape[1] * items.shape[2]:
        # Learned with the model (joint or em) before its spectral branch was attached: the
        # paths come from the learned dimensions, the nodes are scored at their items'
        # full-width centroids, and a new item descends by its learned dimensions.
        if cfg.node_embedding != "centroids":
            raise ValueError(
                "codebooks learned before the spectral branch was attached lack its dimensions: "
                "set index.node_embedding = 'centroids'"
            )
        learned = codebooks.dim
        codes = codebooks.encode(items[..., :learned].to(codebooks.codewords[0].device))
        codebooks = _full_width(codebooks, items, codes)
        assign, assign_dims = "centroids", learned
    elif codebooks is None:
        if cfg.method in ("joint", "em"):
            raise ValueError(
                f"index.method = {cfg.method!r} learns the codebooks during training; train with "
                "it (hirex train) or build a posthoc index"
            )
        if items.shape[2] > model.cfg.dim and cfg.kmeans_on == "all":
            log.warning(
                "k-means over all %d dimensions of a model with a spectral branch groups items by "
                "the branch's degree-dependent norms, and such an index routes badly (on Gowalla "
                "76.7%% of exhaustive recall@20, against 99.7%% on the learned dimensions); set "
                "index.kmeans = 'hierarchical' and index.kmeans_on = 'learned' (hirex index build "
                "--kmeans hierarchical --kmeans-on learned)",
                items.shape[2],
            )
        if cfg.kmeans == "hierarchical":
            fit_on = items[..., : model.cfg.dim] if cfg.kmeans_on == "learned" else items
            codebooks, codes = fit_hierarchical_kmeans(
                fit_on, cfg.levels, seed=seed, niter=cfg.kmeans_iters
            )
            if fit_on.shape != items.shape:
                codebooks = _full_width(codebooks, items, codes)
                assign_dims = model.cfg.dim
            assign = "centroids"
        else:
            codebooks = ResidualCodebooks(cfg.levels, items.shape[1], items.shape[2])
            codebooks.fit_kmeans(items, seed=seed, niter=cfg.kmeans_iters)
    codebooks = codebooks.to(items.device)
    index = HierarchicalIndex(
        codebooks,
        items,
        codes,
        node_embedding=cfg.node_embedding,
        assign=assign,
        assign_dims=assign_dims,
    )
    log.info(
        "index over %d items, levels %s (%s k-means), built in %.1fs",
        index.n_items,
        codebooks.sizes,
        cfg.kmeans,
        time.perf_counter() - t0,
    )
    return index


def _full_width(
    codebooks: ResidualCodebooks, items: torch.Tensor, codes: torch.Tensor
) -> ResidualCodebooks:
    """Codebooks fitted on the first dimensions of each item embedding -> the same paths over
    items (N, Q, D): level 1's codewords become the full-embedding centroids of its nodes (what an
    empty node and the shapes use; the deeper codewords stay zero), and each level's user map
    acts on those first dimensions as before and leaves the others (the branch) as they are."""
    n, q, dim = items.shape
    full = ResidualCodebooks(codebooks.sizes, q, dim)
    part = codebooks.dim
    for small, big in zip(codebooks.user_maps, full.user_maps, strict=True):
        big.data[:part, :part].copy_(small.detach().to(big.device))
    flat = items.reshape(n, -1).float()
    top = codes[:, 0].to(flat.device)
    sums = torch.zeros(codebooks.sizes[0], q * dim, device=flat.device).index_add_(0, top, flat)
    counts = torch.bincount(top, minlength=codebooks.sizes[0]).clamp(min=1)[:, None]
    full.codewords[0].data.copy_(sums / counts)
    return full
