"""The training loop: AdamW, validation-based early stopping, resumable checkpoints.

``train_model(cfg, dataset, out_dir)`` is the one entry point.  With an ``out_dir`` it writes
``checkpoint.safetensors`` every ``train.checkpoint_every`` steps and at each epoch end, and the
best model so far as ``model.safetensors``; calling it again on the same folder resumes from the
checkpoint and ends with the same model as an uninterrupted run.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hirex.config import (
    ConfigError,
    RunConfig,
    config_from_dict,
    config_to_dict,
    same_training,
)
from hirex.data.interactions import Dataset, Interactions
from hirex.eval.protocols import Evaluation, default_ks, evaluate
from hirex.index.codebooks import ResidualCodebooks, load_codebooks, save_codebooks
from hirex.index.learning import IndexLearner
from hirex.models.retrieval_model import RetrievalModel, resolve_device
from hirex.models.spectral import attach_spectral_branch, check_spectral, spectral_init
from hirex.models.user_batch import UserBatch
from hirex.models.warm_start import warm_start_state
from hirex.train.batches import (
    PairBatches,
    SequenceBatch,
    SequenceBatches,
    UserTargetBatches,
    UserTargetsBatch,
    step_rng,
)
from hirex.train.checkpoint import load_checkpoint, save_checkpoint
from hirex.train.losses import cosine_contrastive_loss, full_softmax_loss, sampled_softmax_loss

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
REFIT_CHECKPOINT = "checkpoint-refit.safetensors"
FINETUNE_CHECKPOINT = "checkpoint-finetune.safetensors"
MODEL = "model.safetensors"
CODEBOOKS = "codebooks.safetensors"


@dataclass
class TrainResult:
    model: RetrievalModel
    epochs: list[dict[str, Any]]
    """Per epoch: epoch, loss, seconds and the validation metrics (when validated)."""
    best_epoch: int
    best_valid: dict[str, float]
    train_seconds: float
    codebooks: ResidualCodebooks | None = None
    """The index codebooks learned with the model (index.method joint or em)."""


@dataclass(frozen=True)
class FixedTargets:
    """(user, target) examples whose candidates are fixed embeddings, not items: e.g. the
    pseudo-items of an index level for test-time training.  Each example adds a full softmax
    over ``emb`` to the loss, spread over the steps of every epoch of the item pairs."""

    users: np.ndarray
    """(M,) users, encoded from their full training histories."""
    targets: np.ndarray
    """(M,) the row of ``emb`` each user should score highest."""
    emb: torch.Tensor
    """(n, Q, D) the candidates, scored by the model as items are."""
    weights: np.ndarray | None = None
    """(M,) per-example weights (None: all the same)."""
    map_user: Callable[[torch.Tensor], torch.Tensor] | None = None
    """(B, P, D) -> (B, P, D): the user as these candidates' scorer sees it (an index level's
    user map); None: as it is."""


def same_config(saved: dict[str, Any], cfg: RunConfig) -> bool:
    """Whether a checkpoint's stored config trains as ``cfg`` does (:func:`same_training`): read
    with this version's defaults, so a field added since the checkpoint was written (at its
    default) does not orphan it."""
    try:
        return same_training(config_from_dict(saved), cfg)
    except (ConfigError, TypeError, ValueError):
        return False


def select_metric(cfg: RunConfig, dataset: Dataset) -> str:
    if cfg.eval.select_metric:
        return cfg.eval.select_metric
    return "recall@20" if dataset.kind == "set" else "ndcg@10"


def eval_ks(cfg: RunConfig, dataset: Dataset) -> tuple[int, ...]:
    ks = cfg.eval.ks or default_ks(dataset)
    metric = select_metric(cfg, dataset)
    k = int(metric.split("@")[1]) if "@" in metric else None
    if k is None or metric.split("@")[0] not in ("recall", "ndcg", "hit", "mrr", "precision"):
        raise ConfigError(
            f"eval.select_metric {metric!r} must look like recall@20, ndcg@10, hit@10 or mrr@10"
        )
    return tuple(sorted(set(ks) | {k}))


def evaluate_split(
    cfg: RunConfig, model: RetrievalModel, dataset: Dataset, split: str
) -> Evaluation:
    """Exhaustive metrics of ``model`` on ``split`` at the run's ks and ``eval`` batch sizes."""
    return evaluate(
        model,
        dataset,
        split,  # type: ignore[arg-type]
        eval_ks(cfg, dataset),
        user_batch=cfg.eval.user_batch,
        item_chunk=cfg.eval.item_chunk,
    )


def build_model(cfg: RunConfig, dataset: Dataset) -> RetrievalModel:
    if cfg.model.user_encoder == "transformer" and dataset.kind != "sequence":
        log.warning("a transformer user encoder on unordered (set) data: item order is arbitrary")
    return RetrievalModel(cfg.model, dataset.n_users, dataset.n_items, dataset.item_text)


def train_model(
    cfg: RunConfig,
    dataset: Dataset,
    out_dir: str | Path | None = None,
    *,
    progress: bool = True,
) -> TrainResult:
    """Train on ``dataset.train`` with early stopping on ``dataset.valid``; optionally refit
    on train + valid for the selected number of epochs (``train.refit``)."""
    out = Path(out_dir) if out_dir is not None else None
    if dataset.valid.nnz == 0:
        fix = (
            "leave-one-out gives one only to a user with 3+ items (history, validation, test): "
            "give longer sequences"
            if dataset.kind == "sequence"
            else "set data.valid_per_user >= 1"
        )
        raise ValueError(
            f"{dataset.name} has no validation targets, which early stopping and model "
            f"selection need; {fix}"
        )
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device = resolve_device(cfg.train.device)
    result = train_phases(
        cfg,
        dataset,
        lambda phase_cfg, train, name: _Loop(
            phase_cfg, dataset, train, out, name, device, progress
        ),
    )
    if out is not None:
        result.model.save(out / MODEL, extra={"best_epoch": str(result.best_epoch)})
        if result.codebooks is not None:
            save_codebooks(result.codebooks, out / CODEBOOKS)
    return result


def train_phases(
    cfg: RunConfig,
    dataset: Dataset,
    make_loop: Callable[[RunConfig, Interactions, str], _Loop],
) -> TrainResult:
    """The phases of a training run: train with early stopping on validation, refit on train +
    valid when ``train.refit``, attach the spectral branch. ``make_loop(cfg, train,
    checkpoint_name)`` builds each phase's loop (one process, or one rank of a distributed
    job); the result is complete where the loop's ``run`` returns a model."""
    result = make_loop(cfg, dataset.train, CHECKPOINT).run(validate=True)
    if cfg.train.refit:
        log.info("refit on train + valid for %d epochs", result.best_epoch + 1)
        refit_cfg = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, epochs=result.best_epoch + 1)
        )
        full = dataset.train.concat(dataset.valid)
        refit = make_loop(refit_cfg, full, REFIT_CHECKPOINT).run(validate=False)
        result = TrainResult(
            refit.model,
            result.epochs + refit.epochs,
            result.best_epoch,
            result.best_valid,
            result.train_seconds + refit.train_seconds,
            refit.codebooks,
        )
    if result.model is not None and result.model.spectral is not None:
        result = _attach_spectral(cfg, dataset, result)
    return result


def _attach_spectral(cfg: RunConfig, dataset: Dataset, result: TrainResult) -> TrainResult:
    """Attach the spectral branch to the trained model, fitted on the data it was trained on;
    the reported validation metrics become those of the model with the branch."""
    t0 = time.perf_counter()
    data = dataset.train.concat(dataset.valid) if cfg.train.refit else dataset.train
    attach_spectral_branch(result.model, data, cfg.train.seed)
    valid = result.best_valid
    if not cfg.train.refit:
        valid = evaluate_split(cfg, result.model, dataset, "valid").metrics
        metric = select_metric(cfg, dataset)
        log.info(
            "spectral branch (rank %d) attached: valid %s %.4f -> %.4f",
            cfg.model.spectral_rank,
            metric,
            result.best_valid.get(metric, float("nan")),
            valid.get(metric, float("nan")),
        )
    seconds = result.train_seconds + time.perf_counter() - t0
    return dataclasses.replace(result, best_valid=valid, train_seconds=seconds)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX); without,
    torch emulates them, several times slower than float32 (a Gowalla training step 5.5-5.8x
    on an AVX2 EPYC, benchmarks/results/train_step_bf16.json)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def finetune_model(
    cfg: RunConfig,
    dataset: Dataset,
    model: RetrievalModel,
    pairs: Interactions,
    out_dir: str | Path | None = None,
    *,
    progress: bool = True,
    frozen: tuple[str, ...] = (),
    optimizer_state: dict[str, Any] | None = None,
    fixed_targets: FixedTargets | None = None,
    validate: Callable[[RetrievalModel], dict[str, float]] | None = None,
) -> TrainResult:
    """Continue training ``model`` on (user, item) ``pairs`` (users encoded from their training
    histories, each pair weighted by ``pairs.weights`` if set) with ``cfg.train``'s optimiser
    settings, early stopping on validation; the starting model counts as epoch 0, so the result
    is never worse on validation than it.
    ``frozen``: prefixes of parameter names kept as they are (e.g. ``("item_tower.",)``).
    ``optimizer_state``: AdamW's state to start from (e.g. that of the training run's
    checkpoint, ``read_checkpoint(path)[1]``) instead of a fresh one; lr and weight decay are
    this config's.  ``fixed_targets``: more examples, scored against fixed embeddings.
    ``validate``: the validation metrics of a model (default: exhaustive, ``eval`` settings)."""
    out = Path(out_dir) if out_dir is not None else None
    device = resolve_device(cfg.train.device)
    loop = _Loop(
        cfg,
        dataset,
        dataset.train,
        out,
        FINETUNE_CHECKPOINT,
        device,
        progress,
        pairs=pairs,
        init={k: v.detach().cpu() for k, v in model.state_dict().items()},
        frozen=frozen,
        optimizer_state=optimizer_state,
        fixed_targets=fixed_targets,
        validate=validate,
    )
    start = loop._validate()
    result = loop.run(validate=True)
    if result.best_valid.get(loop.metric, float("-inf")) <= start[loop.metric]:
        log.info("fine-tuning did not improve validation %s; keeping the start model", loop.metric)
        model_copy = build_model(cfg, dataset)
        model_copy.load_state_dict(model.state_dict())
        result = TrainResult(
            model_copy.to(device).eval(), result.epochs, -1, start, result.train_seconds
        )
    return result


class _Loop:
    """One training phase over ``train`` interactions (resumable from ``checkpoint_name``).

    pairs: train on these (user, item) pairs instead (histories still come from ``train``);
    init: start from these weights instead of a fresh model; fixed_targets: more examples
    against fixed embeddings (``FixedTargets``); validate: the validation metrics of a model.
    """

    def __init__(
        self,
        cfg: RunConfig,
        dataset: Dataset,
        train: Interactions,
        out: Path | None,
        checkpoint_name: str,
        device: torch.device,
        progress: bool,
        *,
        pairs: Interactions | None = None,
        init: dict[str, torch.Tensor] | None = None,
        frozen: tuple[str, ...] = (),
        optimizer_state: dict[str, Any] | None = None,
        fixed_targets: FixedTargets | None = None,
        validate: Callable[[RetrievalModel], dict[str, float]] | None = None,
    ) -> None:
        self.cfg, self.dataset, self.train, self.out = cfg, dataset, train, out
        self.fixed_targets, self.validate_fn = fixed_targets, validate
        self._fixed_order: tuple[int, np.ndarray] = (-1, np.zeros(0, np.int64))
        self.ckpt = out / checkpoint_name if out is not None else None
        self.device, self.progress = device, progress
        tc = cfg.train
        if tc.bf16 and device.type == "cpu" and not cpu_has_native_bf16():
            log.warning(
                "train.bf16 is on, but this CPU has no native bfloat16 (no AVX512-BF16 or AMX): "
                "bfloat16 matrix products run several times slower than float32 here; set "
                "train.bf16 = false (--set train.bf16=false)"
            )
        torch.manual_seed(tc.seed)
        self.model = build_model(cfg, dataset)
        t_init = time.perf_counter()
        fresh = self.ckpt is None or not self.ckpt.exists()  # a resumed run loads its weights
        if init is not None:
            self.model.load_state_dict(init)
        elif tc.init_from:
            if fresh:
                self.model.load_state_dict(warm_start_state(tc.init_from, self.model, tc.seed))
        elif cfg.model.init == "spectral":
            check_spectral(self.model)
            if fresh:
                spectral_init(self.model, train, tc.seed)
        self.init_seconds = time.perf_counter() - t_init  # counted as training time
        self.model = self.model.to(device)
        if pairs is not None:
            self.batches: PairBatches | SequenceBatches | UserTargetBatches = PairBatches(
                train, tc.batch_size, tc.seed, tc.history_dropout, pairs
            )
            counts = pairs.item_counts()
        elif self.model.sequential:
            self.batches = SequenceBatches(train, tc.batch_size, tc.seed, cfg.model.max_history)
            counts = self.batches.target_counts()
        elif tc.examples == "users":
            self.batches = UserTargetBatches(train, tc.batch_size, tc.seed, tc.target_fraction)
            counts = train.item_counts()
        else:
            self.batches = PairBatches(train, tc.batch_size, tc.seed, tc.history_dropout)
            counts = train.item_counts()
        if len(self.batches) == 0:
            raise ValueError(
                "no training examples: every user needs at least one training item "
                "(two for sequences)"
            )
        self.indexer: IndexLearner | None = None
        if cfg.index.method in ("joint", "em"):
            self.indexer = IndexLearner(
                cfg.index, self.model, len(self.batches), tc.epochs, tc.seed
            )
        for name, param in self.model.named_parameters():
            if name.startswith(frozen):  # kept as they are: not trained, not decayed
                param.requires_grad_(False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.indexer is not None:
            params += self.indexer.parameters()
        self.optimizer = torch.optim.AdamW(
            params,
            lr=tc.lr,
            weight_decay=tc.weight_decay,
            betas=(0.9, tc.adam_beta2),
        )
        if optimizer_state is not None:
            if frozen or self.indexer is not None:
                raise ValueError("an optimizer state can only be resumed for all the parameters")
            try:
                self.optimizer.load_state_dict(optimizer_state)
                for param in params:  # load_state_dict checks counts, not shapes
                    moment = self.optimizer.state.get(param, {}).get("exp_avg")
                    if moment is not None and moment.shape != param.shape:
                        raise ValueError(
                            f"a moment of shape {list(moment.shape)} for a "
                            f"parameter of shape {list(param.shape)}"
                        )
            except (KeyError, ValueError, RuntimeError) as err:
                raise ValueError(f"the optimizer state does not fit this model ({err})") from err
            for group in self.optimizer.param_groups:
                group.update(lr=tc.lr, weight_decay=tc.weight_decay)
        n = dataset.n_items
        freq = np.maximum(counts, 1) / max(counts.sum(), 1)
        self.log_freq = torch.from_numpy(np.log(freq)).float().to(device)
        if tc.negative_sampling == "popularity":
            p = freq**0.75
        else:
            p = np.ones(n)
        self.sample_p = p / p.sum()
        self.sample_cdf = np.cumsum(self.sample_p)
        self.log_sample_p = torch.from_numpy(np.log(self.sample_p)).float().to(device)
        self.metric = select_metric(cfg, dataset)

    # ---- one step ---------------------------------------------------------------------------
    def _rows(
        self, epoch: int, step: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """User embeddings (B, P, D), the row of each positive (None: row i has positive i),
        the positive items (M,) of one batch and the pairs' weights (M,) (None: the same)."""
        batch = self.batches.batch(epoch, step)
        if isinstance(batch, SequenceBatch):
            inputs = batch.inputs.to(self.device)
            targets = batch.targets.to(self.device)
            u = self.model.encode_user_positions(batch.users.to(self.device), inputs)
            keep = targets != self.dataset.n_items
            return u[keep], None, targets[keep], None
        if isinstance(batch, UserTargetsBatch):
            u = self.model.encode_users(batch.users.to(self.device))
            return u, batch.target_rows.to(self.device), batch.target_items.to(self.device), None
        u = self._encode_rows(batch.users, *self._row_range(len(batch.positives)))
        w = batch.weights
        return u, None, batch.positives.to(self.device), None if w is None else w.to(self.device)

    def _encode_rows(self, users: UserBatch, lo: int, hi: int) -> torch.Tensor:
        """(hi - lo, P, D): the user embeddings of rows lo..hi-1 of a batch's users."""
        return self.model.encode_users(users.slice(lo, hi).to(self.device))

    def _loss(self, epoch: int, step: int) -> torch.Tensor:
        loss = self._item_loss(epoch, step)
        if self.fixed_targets is None:
            return loss
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.train.bf16):
            return loss + self._fixed_loss(epoch, step)

    def _fixed_loss(self, epoch: int, step: int) -> torch.Tensor:
        """Full softmax over ``fixed_targets.emb`` for this step's share of its examples."""
        ft = self.fixed_targets
        assert ft is not None
        if self._fixed_order[0] != epoch:  # one seeded order per epoch
            rng = np.random.default_rng([self.cfg.train.seed + 2, epoch])
            self._fixed_order = (epoch, rng.permutation(len(ft.users)))
        per_step = -(-len(ft.users) // len(self.batches))
        idx = self._fixed_order[1][step * per_step : (step + 1) * per_step]
        if len(idx) == 0:
            return torch.zeros((), device=self.device)
        max_len = self.cfg.model.max_history if self.model.sequential else None
        batch = UserBatch.from_interactions(self.train, ft.users[idx], max_len=max_len)
        u = self.model.encode_users(batch.to(self.device))
        if ft.map_user is not None:
            u = ft.map_user(u)
        scores = self.model.score(u, ft.emb.to(self.device)).float()
        target = torch.from_numpy(ft.targets[idx]).to(self.device)
        weights = None
        if ft.weights is not None:
            w = torch.from_numpy(ft.weights[idx]).float().to(self.device)
            weights = w / w.sum().clamp(min=1e-12)
        return full_softmax_loss(scores, target, weights)

    def _item_loss(self, epoch: int, step: int) -> torch.Tensor:
        tc = self.cfg.train
        torch.manual_seed(int(step_rng(tc.seed, epoch, step).integers(2**62)))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=tc.bf16):
            u, rows, pos, pair_w = self._rows(epoch, step)
            # This process's rows: all of them, or a rank's share of a distributed batch.
            mine = slice(*self._row_range(len(pos))) if rows is None else slice(None)
            weights = None
            if pair_w is not None:
                w = pair_w[mine].float()
                weights = w / w.sum().clamp(min=1e-12)
            if rows is not None:
                # Each user weighs the same, whatever its number of targets.
                per_row = torch.bincount(rows, minlength=u.shape[0]).clamp(min=1).float()
                weights = 1.0 / (per_row[rows] * int((per_row > 0).sum()))
            if tc.loss == "softmax":
                candidates = torch.arange(self.dataset.n_items, device=self.device)
                items = self.model.encode_items(candidates)
                scores = self.model.score(u, items).float()
                loss = full_softmax_loss(scores, pos[mine], weights, rows)
                if self.indexer is None:
                    return loss
                per_pos = scores[rows] if rows is not None else scores
                log_q = torch.zeros(len(candidates), device=self.device)
                return loss + self._index_loss(
                    epoch, step, u, rows, items, per_pos, candidates, pos, pos, log_q, weights
                )
            # Candidates: the batch's positives (in-batch) and shared sampled items, each with
            # the log of its expected count under the distribution it came from.
            m = len(pos)
            cands = [pos]
            log_qs = [
                self.log_freq[pos] + math.log(m)
                if tc.in_batch_negatives
                else torch.zeros(m, device=self.device)
            ]
            if tc.num_negatives:
                rng = step_rng(tc.seed + 1, epoch, step)
                sampled = np.searchsorted(self.sample_cdf, rng.random(tc.num_negatives))
                sampled = torch.from_numpy(np.minimum(sampled, self.dataset.n_items - 1))
                cands.append(sampled.to(self.device))
                log_qs.append(self.log_sample_p[cands[-1]] + math.log(tc.num_negatives))
            candidates = torch.cat(cands)
            log_q = torch.cat(log_qs)
            items = self.model.encode_items(candidates)
            scores = self.model.score(u, items).float()
            if rows is not None:
                scores = scores[rows]
            pos_col = torch.arange(m, device=self.device)
            if not tc.in_batch_negatives:
                # The positives' columns are only for their own row: mask them elsewhere.
                other = pos_col[None, :m] != pos_col[mine, None]
                scores[:, :m] = scores[:, :m].masked_fill(other, float("-inf"))
            if tc.loss == "ccl":
                cos = scores * self.cfg.model.temperature if self.cfg.model.cosine else scores
                loss = cosine_contrastive_loss(
                    cos,
                    candidates,
                    pos_col[mine],
                    pos[mine],
                    tc.ccl_margin,
                    tc.ccl_negative_weight,
                    weights,
                )
            else:
                loss = sampled_softmax_loss(
                    scores, candidates, pos_col[mine], pos[mine], log_q, weights
                )
            return loss + self._index_loss(
                epoch, step, u, rows, items, scores, candidates, pos_col, pos, log_q, weights
            )

    def _index_loss(self, epoch: int, step: int, *args: Any) -> torch.Tensor:
        if self.indexer is None:
            return torch.zeros((), device=self.device)
        return self.indexer.loss(self.model, epoch, step, *args)

    # ---- the loop ---------------------------------------------------------------------------
    def _saved_modules(self) -> torch.nn.Module:
        """What a checkpoint holds: the model, and the codebooks when the index is learned."""
        if self.indexer is None:
            return self.model
        return torch.nn.ModuleDict(
            {"model": self.model, "index": self.indexer.codebooks, "state": self.indexer.state}
        )

    # Hooks that a distributed loop (hirex.distributed.trainer) overrides.
    def _save(self, state: dict[str, Any]) -> None:
        if self.ckpt is not None:
            save_checkpoint(self.ckpt, self._saved_modules(), self.optimizer, state)

    def _load(self) -> dict[str, Any]:
        assert self.ckpt is not None
        return load_checkpoint(self.ckpt, self._saved_modules(), self.optimizer)

    def _row_range(self, m: int) -> tuple[int, int]:
        """The rows of an m-row batch this process computes the loss of (all of them here)."""
        return 0, m

    def _loss_value(self, loss: torch.Tensor) -> float:
        """The batch's loss as logged and checked for finiteness."""
        return float(loss.item())

    def _validate(self) -> dict[str, float]:
        if self.validate_fn is not None:
            return self.validate_fn(self.model.eval())
        return evaluate_split(self.cfg, self.model, self.dataset, "valid").metrics

    def _snapshot(self) -> dict[str, torch.Tensor] | None:
        """The weights to keep as the best so far."""
        return copy.deepcopy(self.model.state_dict())

    def _save_best(self, epoch: int) -> None:
        assert self.out is not None
        self.model.save(self.out / MODEL, extra={"best_epoch": str(epoch)})
        if self.indexer is not None:
            save_codebooks(self.indexer.codebooks, self.out / CODEBOOKS)

    def _final_model(self, best: dict[str, torch.Tensor] | None) -> RetrievalModel | None:
        if best is not None:
            self.model.load_state_dict(best)
        return self.model.eval()

    def run(self, validate: bool) -> TrainResult:
        tc = self.cfg.train
        cfg_dict = config_to_dict(self.cfg)
        state: dict[str, Any] = {
            "config": cfg_dict,
            "epoch": 0,
            "step": 0,
            "loss_sum": 0.0,
            "best": None,
            "best_epoch": -1,
            "bad": 0,
            "epochs": [],
            "seconds": self.init_seconds,
            "done": False,
        }
        best_weights: dict[str, torch.Tensor] | None = None
        best_codebooks: dict[str, torch.Tensor] | None = None
        if self.ckpt is not None and self.ckpt.exists():
            try:
                state = self._load()
            except ValueError as err:
                if "--restart" in str(err):
                    raise
                raise ValueError(
                    f"{err} Or pass --restart to train from the start instead (it replaces "
                    f"{self.ckpt.name})."
                ) from err
            if not same_config(state["config"], self.cfg):
                raise ConfigError(
                    f"{self.ckpt} was written with another config; train into a new output "
                    "folder, or pass --restart to discard it"
                )
            state["config"] = cfg_dict  # written again in full by this version
            log.info(
                "resuming from %s: epoch %d, step %d", self.ckpt, state["epoch"], state["step"]
            )
            best_path = self.out / MODEL if self.out is not None else None
            if validate and best_path is not None and best_path.exists():
                best_weights = RetrievalModel.load(best_path).state_dict()
                if self.indexer is not None and (self.out / CODEBOOKS).exists():
                    best_codebooks = load_codebooks(self.out / CODEBOOKS).state_dict()
        steps = len(self.batches)
        t_start = time.perf_counter() - state["seconds"]
        while not state["done"] and state["epoch"] < tc.epochs:
            epoch = state["epoch"]
            self.model.train()
            bar = tqdm(
                range(state["step"], steps),
                initial=state["step"],
                total=steps,
                desc=f"epoch {epoch + 1}/{tc.epochs}",
                unit="batch",
                disable=None if self.progress else True,  # None: off when not a terminal
                leave=False,
            )
            t_epoch, first_step = time.perf_counter(), state["step"]
            if self.indexer is not None and state["step"] == 0:
                self.indexer.epoch_start(self.model, epoch)
            for step in bar:
                loss = self._loss(epoch, step)
                value = self._loss_value(loss)
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"loss became {value} at epoch {epoch + 1} step {step}; "
                        "lower train.lr or raise model.temperature"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                state["loss_sum"] += value
                state["step"] = step + 1
                done_here = step + 1 - first_step
                bar.set_postfix(
                    loss=f"{state['loss_sum'] / (step + 1):.4f}",
                    ex_s=f"{done_here * tc.batch_size / (time.perf_counter() - t_epoch):.0f}",
                )
                if (
                    tc.checkpoint_every
                    and (step + 1) % tc.checkpoint_every == 0
                    and step + 1 < steps
                ):
                    state["seconds"] = time.perf_counter() - t_start
                    self._save(state)
            record: dict[str, Any] = {"epoch": epoch + 1, "loss": state["loss_sum"] / steps}
            if validate:
                metrics = self._validate()
                record["valid"] = metrics
                value = metrics[self.metric]
                if state["best"] is None or value > state["best"]:
                    state.update(best=value, best_epoch=epoch, bad=0)
                    best_weights = self._snapshot()
                    if self.indexer is not None:
                        best_codebooks = copy.deepcopy(self.indexer.codebooks.state_dict())
                    if self.out is not None:
                        self._save_best(epoch)
                else:
                    state["bad"] += 1
                    if state["bad"] >= tc.patience:
                        state["done"] = True
            else:
                state["best_epoch"] = epoch
            record["seconds"] = time.perf_counter() - t_start
            state["epochs"].append(record)
            log.info(
                "epoch %d: loss %.4f%s (%.0fs)",
                epoch + 1,
                record["loss"],
                f", valid {self.metric} {record['valid'][self.metric]:.4f}" if validate else "",
                record["seconds"],
            )
            state.update(epoch=epoch + 1, step=0, loss_sum=0.0)
            state["seconds"] = time.perf_counter() - t_start
            self._save(state)
        model = self._final_model(best_weights if validate else None)
        if validate and self.indexer is not None and best_codebooks is not None:
            self.indexer.codebooks.load_state_dict(best_codebooks)
        best_valid = {}
        if validate and state["epochs"]:
            best_valid = state["epochs"][state["best_epoch"]].get("valid", {})
        return TrainResult(
            model,  # type: ignore[arg-type]  # None only on a distributed job's other ranks
            state["epochs"],
            state["best_epoch"],
            best_valid,
            state["seconds"],
            self.indexer.codebooks if self.indexer is not None else None,
        )
