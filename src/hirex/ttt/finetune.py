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
from hirex.eval.protocols import evaluate_index
from hirex.index.exhaustive import item_embeddings
from hirex.index.hierarchy import HierarchicalIndex
from hirex.models.retrieval_model import RetrievalModel
from hirex.train.trainer import FixedTargets, TrainResult, eval_ks, finetune_model
from hirex.ttt.mining import Mined, mine

log = logging.getLogger(__name__)


@dataclass
class TTTResult:
    model: RetrievalModel
    index: HierarchicalIndex
    """The same codebooks, every item whose embedding fine-tuning changed re-assigned."""
    mined: Mined
    training: TrainResult
    n_pairs: int
    """Fine-tuning examples: mined + node-centred + replayed."""


def rate_weights(mined: Mined) -> np.ndarray:
    """(M,) each mined pair's interest rate over the mean rate."""
    return (mined.rates / max(float(mined.rates.mean()), 1e-12)).astype(np.float32)


def training_pairs(
    mined: Mined,
    train: Interactions,
    replay: float,
    seed: int,
    node_centred: bool = True,
    data: str = "mined",
    *,
    target: str = "item",
    weight: str = "none",
) -> Interactions:
    """The (user, item) pairs of fine-tuning: the mined pairs with their nodes' representative
    items (``target = "item"``; with "node" they train against the nodes instead, see
    ``node_targets``), the node-centred subset (if asked) and ``replay`` ordinary training pairs
    per mined pair; with ``data = "replay"``, as many ordinary training pairs as that in all
    (the control).  ``weight = "rate"``: the mined pairs weigh their interest rate over the
    mean rate, every other pair 1."""
    users, items = [], []
    if target == "item":
        users.append(mined.users)
        items.append(mined.items)
    if node_centred:
        users.append(mined.node_centred.users())
        items.append(mined.node_centred.items)
    n_mined = len(mined.users) + (mined.node_centred.nnz if node_centred else 0)
    n_replay = int(round(replay * n_mined))
    if data == "replay":
        users, items = [], []
        n_replay += n_mined
    if n_replay:
        rng = np.random.default_rng(seed)
        pick = rng.choice(train.nnz, min(n_replay, train.nnz), replace=False)
        users.append(train.users()[pick])
        items.append(train.items[pick])
    u = np.concatenate(users) if users else np.zeros(0, np.int64)
    i = np.concatenate(items) if items else np.zeros(0, np.int64)
    w = None
    if weight == "rate" and target == "item" and data == "mined":  # the mined pairs come first
        w = np.ones(len(u), np.float32)
        w[: len(mined.users)] = rate_weights(mined)
    return Interactions.from_pairs(u, i, train.n_users, train.n_items, w)


def node_targets(mined: Mined, index: HierarchicalIndex, weight: str = "none") -> FixedTargets:
    """The mined (user, node) pairs as targets among all the nodes of their level, each node
    scored as the index scores it (its pseudo-item, through the level's user map)."""
    level = mined.depth - 1
    codebooks = index.codebooks
    return FixedTargets(
        users=mined.users,
        targets=mined.nodes,
        emb=index.levels[level].emb,
        weights=rate_weights(mined) if weight == "rate" else None,
        map_user=lambda u: codebooks.map_user(u, level),
    )


def refresh_index(index: HierarchicalIndex, model: RetrievalModel) -> HierarchicalIndex:
    """Re-assign every item whose embedding the model changed to a path with the same codebooks
    (the index's own rule for new items: codebooks or nearest centroids); an item whose
    embedding is unchanged keeps its path (an unchanged model gives a copy of ``index``).
    Removed items stay removed and every node stays."""
    items = index.item_emb.clone()
    # Items added to the index after training keep their stored embeddings.
    items[: model.n_items] = item_embeddings(model).to(items.device, items.dtype)
    moved = (items != index.item_emb).flatten(1).any(1)
    codes = index.codes.clone()
    if bool(moved.any()):
        codes[moved.cpu()] = index.paths_for(items[moved]).to(codes.dtype)
    return HierarchicalIndex(
        index.codebooks,
        items,
        codes,
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
    pairs = training_pairs(
        mined,
        dataset.train,
        tc.replay,
        tc.seed,
        tc.node_centred,
        tc.data,
        target=tc.target,
        weight=tc.weight,
    )
    fixed = (
        node_targets(mined, index, tc.weight)
        if tc.target == "node" and tc.data == "mined"
        else None
    )
    if pairs.nnz == 0:
        raise ValueError(
            "ttt.target = 'node' leaves no (user, item) pairs to step through: set ttt.replay "
            "> 0 or ttt.node_centred = true"
        )
    ft_cfg = dataclasses.replace(
        cfg,
        train=dataclasses.replace(
            cfg.train, epochs=tc.epochs, lr=tc.lr, seed=tc.seed, refit=False, patience=1
        ),
        index=dataclasses.replace(cfg.index, method="none"),
    )
    frozen = ("item_tower.", "scorer.", "spectral.") if tc.params == "user" else ()
    validate = None
    if tc.select == "index":

        def validate(m: RetrievalModel) -> dict[str, float]:
            ks = eval_ks(cfg, dataset)
            users = tc.select_users or None
            return evaluate_index(
                m, refresh_index(index, m), dataset, "valid", ks, cfg.index.beam, max_users=users
            ).metrics

    result = finetune_model(
        ft_cfg,
        dataset,
        model,
        pairs,
        out_dir,
        progress=progress,
        frozen=frozen,
        optimizer_state=optimizer_state,
        fixed_targets=fixed,
        validate=validate,
    )
    n = pairs.nnz + (len(fixed.users) if fixed is not None else 0)
    return TTTResult(result.model, refresh_index(index, result.model), mined, result, n)
