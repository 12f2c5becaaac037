"""hirex's retrieval model trained on many processes: TorchRec shards the id tables, DDP the rest.

Each rank builds the same model from the seed, then its id tables (items, history items, users)
move into TorchRec tables sharded row-wise over all ranks (``tables.ShardedTable``); the dense
part (scorer, projections) is replicated by DistributedDataParallel inside
``DistributedModelParallel``. A step's batch is the single-process batch: every rank draws it
from the same seed, computes the loss of its share of the rows against all of the batch's
candidates, and the gradients averaged over ranks are those of the whole batch's mean loss.

Checkpoints and the saved model are the single-process files (``train.checkpoint``): rank 0
gathers the table rows and their optimiser state and writes them in the single-process layout,
so a distributed run resumes from a single-process checkpoint and the other way round, and the
index, TTT and the service read a distributed run's folder unchanged. Validation runs on rank
0 over the gathered model. Supported: the pooled-history or id-only user tower with the dot or
MoL scorer, pair examples, any loss; ``check_distributed_config`` refuses the rest.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.sharding_plan import construct_module_sharding_plan, row_wise
from torchrec.distributed.types import ShardingEnv, ShardingPlan

from hirex.config import RunConfig
from hirex.data.interactions import Dataset, Interactions
from hirex.distributed.launch import Worker
from hirex.distributed.scope import check_distributed_config
from hirex.distributed.tables import TABLE, ShardedTable, gather_rows, shard_tables
from hirex.models.retrieval_model import RetrievalModel
from hirex.models.user_batch import UserBatch
from hirex.train.checkpoint import read_checkpoint, write_checkpoint
from hirex.train.trainer import (
    MODEL,
    TrainResult,
    _Loop,
    build_model,
    evaluate_split,
    train_phases,
)

__all__ = ["DistributedLoop", "train_distributed"]

log = logging.getLogger(__name__)


def train_distributed(
    cfg: RunConfig, dataset: Dataset, out_dir: str | Path, worker: Worker, *, progress: bool
) -> TrainResult:
    """``train_model`` on one rank of a distributed job (every rank calls it). The result's
    model is the trained model on rank 0 and None on the other ranks; rank 0 writes the run
    folder's model and checkpoints."""
    check_distributed_config(cfg)
    out = Path(out_dir)
    result = train_phases(
        cfg,
        dataset,
        lambda phase_cfg, train, name: DistributedLoop(
            phase_cfg, dataset, train, out, name, worker, progress
        ),
    )
    if worker.rank == 0:
        result.model.save(out / MODEL, extra={"best_epoch": str(result.best_epoch)})
    return result


class _LossModule(nn.Module):
    """The loss of one step as a module's forward, so that it runs inside
    DistributedModelParallel (and its DDP wrapper, which syncs the dense gradients)."""

    def __init__(self, loop: DistributedLoop) -> None:
        super().__init__()
        self.model = loop.model
        self.loop = loop  # not a module: DistributedModelParallel sees only the model

    def forward(self, epoch: int, step: int) -> torch.Tensor:
        loop = self.loop
        loss = _Loop._loss(loop, epoch, step)
        m = loop.batch_rows(step)
        lo, hi = loop._row_range(m)
        if hi == lo:  # a short last batch gives some ranks no rows: they add nothing
            return loss.nan_to_num(0.0) * 0.0
        return loss * ((hi - lo) * loop.worker.world_size / m)


class DistributedLoop(_Loop):
    """``_Loop`` on one rank: sharded tables, rank-sliced rows, gathered checkpoints."""

    def __init__(
        self,
        cfg: RunConfig,
        dataset: Dataset,
        train: Interactions,
        out: Path,
        checkpoint_name: str,
        worker: Worker,
        progress: bool,
    ) -> None:
        super().__init__(
            cfg, dataset, train, out, checkpoint_name, worker.device, progress and worker.rank == 0
        )
        self.worker = worker
        initial = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        self.state_keys = list(initial)
        # The single-process optimiser's parameter order, which its checkpoints are keyed by.
        self.param_names = [name for name, _ in self.model.named_parameters()]
        self.tables: dict[str, ShardedTable] = shard_tables(self.model)
        plan = ShardingPlan(
            {
                f"model.{path}.ebc": construct_module_sharding_plan(
                    table.ebc,
                    per_param_sharding={TABLE: row_wise(compute_kernel="dense")},
                    local_size=worker.local_world_size,
                    world_size=worker.world_size,
                    device_type=worker.device.type,
                )
                for path, table in self.tables.items()
            }
        )
        self.dmp = DistributedModelParallel(
            _LossModule(self),
            device=worker.device,
            plan=plan,
            env=ShardingEnv.from_process_group(dist.group.WORLD),
        )
        self.shards = {path: table.local_shard() for path, table in self.tables.items()}
        self._set_model_state(initial)
        tc = cfg.train
        self.optimizer = torch.optim.AdamW(
            self.dmp.parameters(),
            lr=tc.lr,
            weight_decay=tc.weight_decay,
            betas=(0.9, tc.adam_beta2),
        )
        self._gathered: dict[str, torch.Tensor] | None = None

    # ---- which parameter is where -----------------------------------------------------------
    def _table_of(self, name: str) -> str | None:
        path = name.removesuffix(".weight")
        return path if path in self.tables else None

    def _local_param(self, name: str) -> torch.Tensor:
        table = self._table_of(name)
        if table is not None:
            return self.shards[table][2]
        return dict(self.model.named_parameters())[name]

    def _dense_tensors(self) -> dict[str, torch.Tensor]:
        return {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}

    # ---- the rows of a batch ------------------------------------------------------------------
    def batch_rows(self, step: int) -> int:
        """Rows of the whole batch at ``step`` (the last one of an epoch may be short)."""
        bs = self.cfg.train.batch_size
        return min(bs, self.batches.n - step * bs)  # type: ignore[union-attr]

    def _row_range(self, m: int) -> tuple[int, int]:
        rank, world = self.worker.rank, self.worker.world_size
        return rank * m // world, (rank + 1) * m // world

    def _encode_rows(self, users: UserBatch, lo: int, hi: int) -> torch.Tensor:
        # TorchRec's row-wise lookups need the same number of bags on every rank: pad this
        # rank's rows with empty histories up to the largest share, and drop them after.
        share = -(-len(users) // self.worker.world_size)
        rows = users.slice(lo, hi)
        pad = share - len(rows)
        if pad:
            rows = UserBatch(
                torch.cat([rows.users, rows.users.new_zeros(pad)]),
                torch.cat([rows.hist_indptr, rows.hist_indptr[-1:].expand(pad)]),
                rows.hist_items,
            )
        return self.model.encode_users(rows.to(self.device))[: hi - lo]

    def _loss(self, epoch: int, step: int) -> torch.Tensor:
        return self.dmp(epoch, step)

    def _loss_value(self, loss: torch.Tensor) -> float:
        total = loss.detach().clone()
        dist.all_reduce(total)
        return float(total.item()) / self.worker.world_size

    # ---- state in the single-process layout -------------------------------------------------
    def _set_model_state(self, state: dict[str, torch.Tensor]) -> None:
        if sorted(state) != sorted(self.state_keys):
            missing = sorted(set(self.state_keys) - set(state))
            extra = sorted(set(state) - set(self.state_keys))
            raise ValueError(
                f"weights do not match the model config (missing {missing[:3]}, unexpected "
                f"{extra[:3]}); train into a new output folder or pass --restart"
            )
        dense = self._dense_tensors()
        with torch.no_grad():
            for key, value in state.items():
                table = self._table_of(key)
                if table is not None:
                    first, rows, _ = self.shards[table]
                    rows.copy_(value[first : first + rows.shape[0]])
                elif key in dense:
                    dense[key].copy_(value)

    def _gather_model_state(self) -> dict[str, torch.Tensor] | None:
        """The full model's state dict on rank 0 (None elsewhere); every rank must call it."""
        dense = self._dense_tensors()
        state: dict[str, torch.Tensor] = {}
        for key in self.state_keys:
            table = self._table_of(key)
            if table is not None:
                first, rows, _ = self.shards[table]
                full = gather_rows(rows, first, self.tables[table].num_embeddings)
                if full is not None:
                    state[key] = full
            else:
                state[key] = dense[key].detach().cpu().clone()
        return state if self.worker.rank == 0 else None

    def _gather_optimizer_state(self) -> dict[str, Any] | None:
        """The single-process optimiser's state dict on rank 0 (None elsewhere)."""
        have = torch.tensor(
            [float(self._local_param(n) in self.optimizer.state) for n in self.param_names]
        )
        agree = have.clone()
        dist.all_reduce(agree, op=dist.ReduceOp.MIN)
        if not torch.equal(have, agree):
            raise RuntimeError("ranks disagree on which parameters have optimiser state")
        out: dict[int, dict[str, Any]] = {}
        for i, name in enumerate(self.param_names):
            param = self._local_param(name)
            if param not in self.optimizer.state:
                continue
            table = self._table_of(name)
            entry: dict[str, Any] = {}
            for key, value in sorted(self.optimizer.state[param].items()):
                if table is not None and torch.is_tensor(value) and value.dim() > 0:
                    first = self.shards[table][0]
                    value = gather_rows(value, first, self.tables[table].num_embeddings)
                elif torch.is_tensor(value):
                    value = value.detach().cpu().clone()
                entry[key] = value
            out[i] = entry
        if self.worker.rank != 0:
            return None
        group = {k: v for k, v in self.optimizer.param_groups[0].items() if k != "params"}
        group["params"] = list(range(len(self.param_names)))
        return {"state": out, "param_groups": [group]}

    def _set_optimizer_state(self, opt_state: dict[str, Any]) -> None:
        group = self.optimizer.param_groups[0]
        for key, value in opt_state["param_groups"][0].items():
            if key != "params":
                group[key] = tuple(value) if key == "betas" else value
        self.optimizer.state.clear()
        for i, name in enumerate(self.param_names):
            saved = opt_state["state"].get(i)
            if saved is None:
                continue
            param = self._local_param(name)
            table = self._table_of(name)
            entry = {}
            for key, value in saved.items():
                if torch.is_tensor(value):
                    if table is not None and value.dim() > 0:
                        first, rows, _ = self.shards[table]
                        value = value[first : first + rows.shape[0]]
                    value = value.to(param.device).clone()
                entry[key] = value
            self.optimizer.state[param] = entry

    def _full_model(self, state: dict[str, torch.Tensor]) -> RetrievalModel:
        model = build_model(self.cfg, self.dataset)
        model.load_state_dict(state)
        return model.to(self.device)

    # ---- the loop's hooks -------------------------------------------------------------------
    def _save(self, state: dict[str, Any]) -> None:
        if self.ckpt is None:
            return
        model_state = self._gather_model_state()
        opt_state = self._gather_optimizer_state()
        if self.worker.rank == 0:
            assert model_state is not None and opt_state is not None
            write_checkpoint(self.ckpt, model_state, opt_state, state)
        dist.barrier()

    def _load(self) -> dict[str, Any]:
        assert self.ckpt is not None
        model_state, opt_state, state = read_checkpoint(self.ckpt)
        try:
            self._set_model_state(model_state)
            self._set_optimizer_state(opt_state)
        except (KeyError, RuntimeError, ValueError) as err:
            raise ValueError(
                f"{self.ckpt}: checkpoint does not match this model and config ({err}); "
                "train into a new output folder or pass --restart"
            ) from err
        return state

    def _validate(self) -> dict[str, float]:
        self._gathered = self._gather_model_state()
        box: list[Any] = [None]
        if self.worker.rank == 0:
            assert self._gathered is not None
            model = self._full_model(self._gathered)
            box[0] = evaluate_split(self.cfg, model, self.dataset, "valid").metrics
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _snapshot(self) -> dict[str, torch.Tensor] | None:
        return self._gathered  # gathered by _validate, just before

    def _save_best(self, epoch: int) -> None:
        if self.worker.rank == 0:
            assert self.out is not None and self._gathered is not None
            model = self._full_model(self._gathered)
            model.save(self.out / MODEL, extra={"best_epoch": str(epoch)})

    def _final_model(self, best: dict[str, torch.Tensor] | None) -> RetrievalModel | None:
        state = best
        # Only rank 0 holds the best snapshot; it tells the others whether to gather.
        need = torch.tensor([float(best is None)])
        dist.broadcast(need, src=0)
        if need.item():
            state = self._gather_model_state()
        if self.worker.rank != 0:
            return None
        assert state is not None
        return self._full_model(state).eval()
