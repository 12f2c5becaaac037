"""Fit semantic IDs for a catalogue, and give items added later an ID from their text alone."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hirex.config import SidConfig
from hirex.semantic_ids.ids import SemanticIds, finish_ids
from hirex.semantic_ids.lmindexer import LMIndexer, LMIndexerConfig, fit_lmindexer
from hirex.semantic_ids.quantizers import (
    RQVAE,
    HierarchicalKmeans,
    RandomIds,
    RQKmeans,
    hill_path_codes,
)
from hirex.semantic_ids.text_encoder import TfidfEncoder, check_texts, encode_texts

log = logging.getLogger(__name__)

NO_TEXT = "[no text]"
QUANTIZERS = {cls.name: cls for cls in (RQKmeans, HierarchicalKmeans, RandomIds, RQVAE, LMIndexer)}


def quantizer_from_tensors(name: str, tensors: dict[str, torch.Tensor], sizes: list[int]):  # noqa: ANN201
    if name not in QUANTIZERS:
        raise ValueError(f"unknown ID assigner {name!r}; choose one of {sorted(QUANTIZERS)}")
    return QUANTIZERS[name].from_tensors(tensors, sizes)


@dataclass
class Assigner:
    """Text -> semantic codes for new items: the text encoder, then the method's quantizer."""

    encoder: str
    text: TfidfEncoder | None
    quantizer: Any

    def codes(self, texts: list[str], max_tokens: int = 32) -> np.ndarray:
        check_texts(texts, "new items")
        enc = encode_texts(texts, self.encoder, tfidf=self.text, max_tokens=max_tokens)
        return self.quantizer.encode(enc.embeddings)


def assign_from_text(ids: SemanticIds, texts: list[str]) -> np.ndarray:
    """Append items with the given texts to ``ids``; returns their dense ids.

    The IDs come from the same text encoder and quantizer that fitted the catalogue, so the new
    items land under the prefixes of similar items and a trained generator can emit them
    without retraining (``GenerativeRetriever.add_items``)."""
    if ids.assigner is None:
        raise ValueError(
            f"{ids.method} IDs cannot be assigned from text: "
            + (
                "HILL paths come from a retrieval model's item embeddings, which a new item "
                "does not have; add it to the index (PUT /v1/items) or use text-based IDs"
                if ids.method == "hill_paths"
                else "these IDs were saved without their assigner; refit them (hirex sid fit)"
            )
        )
    return ids.add(ids.assigner.codes(texts, int(ids.info.get("max_tokens", 32))))


def fit_ids(
    texts: list[str],
    catalogue: str,
    cfg: SidConfig | None = None,
    *,
    index=None,  # noqa: ANN001
    item_names: list | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> SemanticIds:
    """Semantic IDs for every item with ``cfg.method``.

    texts: one non-empty string per dense item id.  index: a HierarchicalIndex over a trained
    retrieval model (hill_paths only; its levels replace ``cfg.levels``).  item_names: the
    original item ids, for error messages."""
    cfg = cfg or SidConfig()
    t0 = time.perf_counter()
    levels = list(cfg.levels)
    info: dict[str, Any] = {"max_tokens": cfg.max_tokens, "seed": cfg.seed}
    if cfg.method == "hill_paths":
        if index is None:
            raise ValueError(
                "sid.method = 'hill_paths' takes the paths of a trained run's index: set sid.run "
                "to a run folder with an index (hirex train with index.method, or hirex index "
                "build)"
            )
        if index.n_items != len(texts):
            raise ValueError(
                f"the index holds {index.n_items} items, the catalogue {len(texts)}; use a run "
                "trained on this dataset"
            )
        semantic, levels = hill_path_codes(index), list(index.sizes)
        info["encoder"] = {"name": "none"}
        ids = finish_ids(semantic, levels, cfg.method, catalogue, info)
        ids.info["fit_seconds"] = round(time.perf_counter() - t0, 2)
        return ids
    if cfg.missing_text == "placeholder":
        empty = [i for i, t in enumerate(texts) if not t or not t.strip()]
        if empty:
            log.warning("%d items have no text; they get the text %r", len(empty), NO_TEXT)
            texts = [t if t and t.strip() else NO_TEXT for t in texts]
            info["items_without_text"] = len(empty)
    check_texts(texts, names=item_names)
    tfidf = TfidfEncoder.fit(texts) if cfg.encoder == "tfidf" else None
    enc = encode_texts(
        texts, cfg.encoder, tfidf=tfidf, max_tokens=cfg.max_tokens, device=device,
        progress=progress,
    )  # fmt: skip
    info["encoder"] = {
        "name": enc.encoder,
        "sha256": enc.fingerprint,
        "dim": enc.embeddings.shape[1],
    }
    info["encode_seconds"] = round(time.perf_counter() - t0, 2)
    if len(texts) < max(levels):
        raise ValueError(
            f"{len(texts)} items cannot fill a codebook of {max(levels)} codes; use smaller "
            "sid.levels"
        )
    emb = enc.embeddings
    if cfg.method == "rq_kmeans":
        quantizer = RQKmeans.fit(emb, levels, cfg.seed)
        semantic = quantizer.encode(emb)
    elif cfg.method == "hierarchical_kmeans":
        quantizer = HierarchicalKmeans.fit(emb, levels, cfg.seed)
        semantic = quantizer.fitted_codes
    elif cfg.method == "random":
        quantizer = RandomIds(levels, cfg.seed)
        semantic = quantizer.encode(emb)
    elif cfg.method == "rqvae":
        quantizer = RQVAE.fit(emb, levels, epochs=10 * cfg.epochs, seed=cfg.seed, progress=progress)
        semantic = quantizer.encode(emb)
    elif cfg.method == "lmindexer":
        lcfg = LMIndexerConfig(dim=cfg.dim, epochs_per_level=cfg.epochs, lr=cfg.lr, seed=cfg.seed)
        quantizer, semantic, history = fit_lmindexer(
            emb, enc.tokens, levels, lcfg, progress=progress
        )
        info["history"] = history
    else:
        raise ValueError(f"unknown sid.method {cfg.method!r}")
    assigner = Assigner(enc.encoder, tfidf, quantizer)
    ids = finish_ids(semantic, levels, cfg.method, catalogue, info, assigner)
    ids.info["fit_seconds"] = round(time.perf_counter() - t0, 2)
    log.info(
        "%s IDs for %d items in %.1fs: collision rate %.4f, perplexity %s",
        cfg.method, ids.n_items, ids.info["fit_seconds"], ids.info["stats"]["collision_rate"],
        [u["perplexity"] for u in ids.info["stats"]["usage"]],
    )  # fmt: skip
    return ids
