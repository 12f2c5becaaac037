"""Test-time training: fine-tune the model on mined data, then refresh the index's paths."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hirex.config import RunConfig
from hirex.data.interactions import Dataset, Interactions
from hirex.index.exhaustive import item_embeddings
from hirex.index.hierarchy import HierarchicalIndex
from hirex.models.retrieval_model import RetrievalModel
from hirex.train.trainer import TrainResult, finetune_model
from hirex.ttt.mining import Mined, mine

log = logging.getLogger(__name__)


@dataclass
class TTTResult:
    model: RetrievalModel
    index: HierarchicalIndex
    """The same codebooks, every item re-assigned with the fine-tuned embeddings."""
    mined: Mined
    training: TrainResult
    n_pairs: int
    """Fine-tuning pairs: mined + node-centred + replayed."""


def training_pairs(
    mined: Mined,
    train: Interactions,
    replay: float,
    seed: int,
    node_centred: bool = True,
    data: str = "mined",
) -> Interactions:
    """Mined pairs, the node-centred subset (if asked) and ``replay`` ordinary training pairs
    per pair of those; with ``data = "replay"``, as many ordinary training pairs as that in
    all (the control)."""
    users, items = [mined.users], [mined.items]
    if node_centred:
        users.append(mined.node_centred.users())
        items.append(mined.node_centred.items)
    n_mined = sum(len(u) for u in users)
    n_replay = int(round(replay * n_mined))
    if data == "replay":
        users, items = [], []
        n_replay += n_mined
    if n_replay:
        rng = np.random.default_rng(seed)
        pick = rng.choice(train.nnz, min(n_replay, train.nnz), replace=False)
        users.append(train.users()[pick])
        items.append(train.items[pick])
    return Interactions.from_pairs(
        np.concatenate(users), np.concatenate(items), train.n_users, train.n_items
    )


def refresh_index(index: HierarchicalIndex, model: RetrievalModel) -> HierarchicalIndex:
    """Re-assign every item to a path with the same codebooks and the model's new embeddings;
    removed items stay removed and every node stays."""
    items = index.item_emb.clone()
    # Items added to the index after training keep their stored embeddings.
    items[: model.n_items] = item_embeddings(model).to(items.device)
    return HierarchicalIndex(
        index.codebooks,
        items,
        index.paths_for(items),  # the index's own rule: codebooks or nearest centroids
        active=index.active.copy(),
        extra_nodes=index.node_keys,
        node_embedding=index.node_embedding,
        assign=index.assign,
        assign_dims=index.assign_dims,
    )


def test_time_train(
    cfg: RunConfig,
    dataset: Dataset,
    model: RetrievalModel,
    index: HierarchicalIndex,
    out_dir: str | Path | None = None,
    *,
    progress: bool = True,
    optimizer_state: dict[str, Any] | None = None,
) -> TTTResult:
    """Mine (user, node) data from ``index`` on the training split, fine-tune ``model`` on it
    (``cfg.ttt``: epochs, lr, replay), and return the fine-tuned model with a refreshed index.
    ``optimizer_state``: start AdamW from the training run's state (see ``finetune_model``)."""
    tc = cfg.ttt
    mined = mine(model, index, dataset.train, tc.depth, tc.threshold, tc.beam)
    log.info("mined: %s", mined.summary())
    if len(mined.users) == 0 and (mined.node_centred.nnz == 0 or not tc.node_centred):
        raise ValueError(
            f"nothing mined at depth {tc.depth} with threshold {tc.threshold}: no user has that "
            "share of its items under one node; lower ttt.threshold or ttt.depth"
        )
    pairs = training_pairs(mined, dataset.train, tc.replay, tc.seed, tc.node_centred, tc.data)
    ft_cfg = dataclasses.replace(
        cfg,
        train=dataclasses.replace(
            cfg.train, epochs=tc.epochs, lr=tc.lr, seed=tc.seed, refit=False, patience=1
        ),
        index=dataclasses.replace(cfg.index, method="none"),
    )
    frozen = ("item_tower.", "scorer.", "spectral.") if tc.params == "user" else ()
    result = finetune_model(
        ft_cfg,
        dataset,
        model,
        pairs,
        out_dir,
        progress=progress,
        frozen=frozen,
        optimizer_state=optimizer_state,
    )
    return TTTResult(result.model, refresh_index(index, result.model), mined, result, pairs.nnz)
