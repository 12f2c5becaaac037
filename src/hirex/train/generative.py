"""Training the generator: next-item ID prediction on every prefix of the training sequences.

Each training example is (a user's items before position i, the item at i) for i >= 1 of the
user's training sequence, the history cut to ``generator.max_history`` items.  The loss is the
cross-entropy of each ID token under teacher forcing.  Optimisation, early stopping and
checkpoints follow ``[train]``: AdamW at ``train.lr``, validation (leave-one-out, constrained
beam search, history masked) after every epoch on ``eval.select_metric``, stop after
``train.patience`` epochs without improvement.  ``checkpoint.safetensors`` (the
``train/checkpoint`` format) is written at each epoch end and the best generator to
``<out>/generator``; running again on the same folder resumes from the last finished epoch and
ends with the same model as an uninterrupted run (each epoch's shuffling and dropout are seeded
by the epoch).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hirex.config import RunConfig, config_to_dict
from hirex.data.interactions import Dataset, Interactions
from hirex.eval.protocols import evaluate_ranker
from hirex.models.retrieval_model import resolve_device
from hirex.semantic_ids.files import load_generator, save_generator
from hirex.semantic_ids.generator import GeneratorShape, SemanticIdGenerator
from hirex.semantic_ids.ids import SemanticIds
from hirex.semantic_ids.retriever import GenerativeRetriever
from hirex.train.checkpoint import load_checkpoint, save_checkpoint
from hirex.train.trainer import eval_ks, same_config, select_metric

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
GENERATOR_DIR = "generator"


@dataclass
class GeneratorResult:
    retriever: GenerativeRetriever
    epochs: list[dict[str, Any]]
    best_epoch: int
    best_valid: dict[str, float]
    train_seconds: float


def training_examples(train: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """(users, positions): every entry of a user's sequence after the first, as a target."""
    lengths = train.lengths()
    users = np.repeat(np.arange(train.n_users), np.maximum(lengths - 1, 0))
    starts = np.cumsum(np.maximum(lengths - 1, 0)) - np.maximum(lengths - 1, 0)
    within = np.arange(len(users)) - np.repeat(starts, np.maximum(lengths - 1, 0))
    return users.astype(np.int64), (within + 1).astype(np.int64)


def example_batch(
    ids: SemanticIds, train: Interactions, users: np.ndarray, pos: np.ndarray, max_history: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(history codes (B, H, P) left-padded with -1, target codes (B, P))."""
    first = train.indptr[users]
    target = first + pos
    h = int(min(max_history, pos.max()))
    window = target[:, None] - h + np.arange(h)
    valid = window >= first[:, None]
    items = train.items[np.where(valid, window, 0)]
    hist = np.where(valid[..., None], ids.codes[items], -1)
    return torch.from_numpy(hist), torch.from_numpy(ids.codes[train.items[target]])


def build_generator(cfg: RunConfig, ids: SemanticIds) -> SemanticIdGenerator:
    g = cfg.generator
    shape = GeneratorShape(
        tuple(ids.sizes), g.dim, g.layers, g.heads, g.ff, g.dropout, g.max_history
    )
    return SemanticIdGenerator(shape)


def retriever_for(
    cfg: RunConfig, model: SemanticIdGenerator, ids: SemanticIds, dataset: Dataset
) -> GenerativeRetriever:
    """The run's retriever: items with no training interaction count as new items."""
    g = cfg.generator
    return GenerativeRetriever(
        model, ids, g.beam, max(cfg.eval.user_batch // 2, 1),
        seen=dataset.train.item_counts() > 0,
        new_item_share=g.new_item_share, new_item_prefix=g.new_item_prefix,
    )  # fmt: skip


def check_generative_data(dataset: Dataset, ids: SemanticIds | None = None) -> None:
    """A generator needs sequences, and IDs for exactly the dataset's items."""
    if dataset.kind != "sequence":
        raise ValueError(
            "generative retrieval predicts the next item of a sequence: it needs sequence data "
            f"(beauty, sports, a sequences file); {dataset.name} is {dataset.kind!r} data"
        )
    if ids is not None and ids.n_items != dataset.n_items:
        raise ValueError(
            f"the semantic IDs cover {ids.n_items} items, the dataset has {dataset.n_items}"
        )


def train_generator(
    cfg: RunConfig,
    dataset: Dataset,
    ids: SemanticIds,
    out_dir: str | Path,
    *,
    progress: bool = True,
) -> GeneratorResult:
    """Train a generator on ``dataset.train`` over ``ids``, early stopping on ``valid``."""
    check_generative_data(dataset, ids)
    out = Path(out_dir)
    tc = cfg.train
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    device = resolve_device(tc.device)
    torch.manual_seed(tc.seed)
    model = build_generator(cfg, ids).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    metric = select_metric(cfg, dataset)
    ks = eval_ks(cfg, dataset)
    users, pos = training_examples(dataset.train)
    if len(users) == 0:
        raise ValueError("no training examples: every training sequence has a single item")
    state: dict[str, Any] = {
        "epoch": 0, "best": -math.inf, "best_epoch": -1, "bad": 0, "epochs": [],
        "seconds": 0.0, "config": config_to_dict(cfg),
    }  # fmt: skip
    ckpt = out / CHECKPOINT
    if ckpt.exists():
        saved = load_checkpoint(ckpt, model, opt)
        if not same_config(saved.get("config", {}), cfg):
            raise ValueError(
                f"{ckpt} was written with another config; use a new --out folder or --restart"
            )
        state = saved
        log.info("resuming generator training after epoch %d", state["epoch"])
    retriever = retriever_for(cfg, model, ids, dataset)
    while state["epoch"] < tc.epochs and state["bad"] < tc.patience:
        epoch = state["epoch"]
        t0 = time.perf_counter()
        torch.manual_seed(tc.seed * 1000 + epoch)
        order = np.random.default_rng([tc.seed, epoch]).permutation(len(users))
        model.train()
        total, seen = 0.0, 0
        steps = range(0, len(order), tc.batch_size)
        bar = tqdm(steps, desc=f"generator epoch {epoch + 1}", disable=not progress, leave=False)
        for start in bar:
            b = order[start : start + tc.batch_size]
            hist, target = example_batch(
                ids, dataset.train, users[b], pos[b], cfg.generator.max_history
            )
            hist, target = hist.to(device), target.to(device)
            logits = model(hist, target)
            loss = sum(F.cross_entropy(lg, target[:, t]) for t, lg in enumerate(logits))
            loss = loss / len(logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += float(loss.detach()) * len(b)
            seen += len(b)
            if start // tc.batch_size % 50 == 0:
                bar.set_postfix(loss=f"{total / seen:.3f}")
        if not math.isfinite(total):
            raise ValueError(f"generator loss is not finite in epoch {epoch + 1}; lower train.lr")
        train_s = time.perf_counter() - t0
        model.eval()
        valid = evaluate_ranker(
            retriever.ranker(), dataset, "valid", ks, max_users=cfg.generator.valid_users or None
        )
        row = {
            "epoch": epoch + 1,
            "loss": round(total / seen, 4),
            "seconds": round(train_s, 1),
            "valid_seconds": round(valid.seconds, 1),
            "valid": valid.metrics,
        }
        state["epochs"].append(row)
        state["seconds"] += train_s
        log.info("generator epoch %d: loss %.4f, valid %s (%.0fs)", epoch + 1, row["loss"],
                 {k: round(v, 4) for k, v in valid.metrics.items()}, train_s)  # fmt: skip
        if valid.metrics[metric] > state["best"]:
            state.update(best=valid.metrics[metric], best_epoch=epoch, bad=0)
            save_generator(
                out / GENERATOR_DIR, model, ids, {"epoch": epoch + 1, metric: state["best"]}
            )
        else:
            state["bad"] += 1
        state["epoch"] = epoch + 1
        save_checkpoint(ckpt, model, opt, state)
    best = load_generator(out / GENERATOR_DIR, ids, device)
    best_valid = state["epochs"][state["best_epoch"]]["valid"]
    return GeneratorResult(
        retriever_for(cfg, best, ids, dataset),
        state["epochs"],
        state["best_epoch"],
        best_valid,
        state["seconds"],
    )
