"""SPTT, DMT's semantic-preserving tower transform (Luo et al., MLSys 2024, arXiv 2403.00877),
on TorchRec's EmbeddingTowerCollection; and the flat DLRM it is measured against.

:class:`TowerDLRM` is the DLRM of :mod:`hirex.models.dlrm` (bottom MLP, pairwise dots of all
feature vectors, top MLP) with its embedding lookups in TorchRec modules:

- ``towers=None`` (flat): one ``EmbeddingBagCollection`` of all feature tables, sharded over
  all ranks (table-wise or row-wise): one global all-to-all of ids and of pooled embeddings.
- ``towers`` given (SPTT): an ``EmbeddingTowerCollection`` with one tower per host. Each rank
  sends the ids of tower t to its peer (same local rank) on host t; the tower's tables are
  sharded row-wise inside host t (table-row-wise), so the lookups' all-to-all stays inside
  the host; the tower module runs there (in DDP over the host) and only its output crosses
  hosts, back to the sample's rank. With :class:`~hirex.distributed.towers.IdentityTower`
  the output is that of the flat model, with tower modules
  (:class:`~hirex.distributed.towers.TowerInteraction`) the top model interacts over the
  towers' compressed outputs instead.

The same module runs unsharded in one process (the quality runs) and inside
``DistributedModelParallel`` (:func:`shard_model`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
import torch.distributed as dist
import torchrec.distributed.embedding_tower_sharding as _ets
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.distributed.embedding_tower_sharding import EmbeddingTowerCollectionSharder
from torchrec.distributed.types import LazyAwaitable
from torchrec.modules.embedding_tower import EmbeddingTower, EmbeddingTowerCollection

from hirex.distributed.towers import IdentityTower, TowerInteraction, keyed_values, pairwise_dots
from hirex.models.dlrm import mlp

__all__ = [
    "CpuEmbeddingTowerCollectionSharder",
    "FlatSharding",
    "TowerDLRM",
    "feature_name",
    "full_tables",
    "load_tables",
    "shard_model",
    "sharding_plan",
    "sparse_to_kjt",
    "table_name",
]

FlatSharding = Literal["table_wise", "row_wise"]


def feature_name(f: int) -> str:
    return f"f{f}"


def table_name(f: int) -> str:
    return f"t{f}"


def _ebc(features: Sequence[int], table_sizes: Sequence[int], dim: int) -> EmbeddingBagCollection:
    configs = [
        EmbeddingBagConfig(
            name=table_name(f),
            embedding_dim=dim,
            num_embeddings=table_sizes[f],
            feature_names=[feature_name(f)],
        )
        for f in features
    ]
    return EmbeddingBagCollection(tables=configs, device=torch.device("cpu"))


def sparse_to_kjt(sparse: torch.Tensor) -> KeyedJaggedTensor:
    """sparse: (B, F) int64, one id per feature and sample -> a KJT with keys f0..f{F-1}."""
    b, f = sparse.shape
    return KeyedJaggedTensor(
        keys=[feature_name(i) for i in range(f)],
        values=sparse.t().reshape(-1).contiguous(),
        lengths=torch.ones(b * f, dtype=torch.int32),
    )


class TowerDLRM(nn.Module):
    """table_sizes: rows per feature; n_dense: dense features (>= 1); dim: embedding width;
    towers: None (flat) or a partition of the features into towers (SPTT; one tower per host
    when sharded); tower_width: None for identity towers, else each tower module's output
    width (a multiple of dim; the compression is ``F_t * dim / tower_width``)."""

    def __init__(
        self,
        table_sizes: Sequence[int],
        n_dense: int,
        dim: int = 16,
        towers: Sequence[Sequence[int]] | None = None,
        tower_width: int | None = None,
        bottom: Sequence[int] = (32,),
        top: Sequence[int] = (64, 32),
    ) -> None:
        super().__init__()
        n = len(table_sizes)
        if n_dense < 1:
            raise ValueError("TowerDLRM needs at least one dense feature")
        self.n_features, self.dim = n, dim
        self.bottom = mlp([n_dense, *bottom, dim], last_act=True)
        if towers is None:
            if tower_width is not None:
                raise ValueError("tower_width needs towers")
            self.towers: list[list[int]] | None = None
            self.sparse: nn.Module = _ebc(range(n), table_sizes, dim)
            n_vec = n + 1
        else:
            self.towers = [sorted(int(f) for f in t) for t in towers]
            flat = sorted(f for t in self.towers for f in t)
            if flat != list(range(n)) or any(not t for t in self.towers):
                raise ValueError(
                    f"towers {towers} must be non-empty and partition the features 0..{n - 1}"
                )
            mods = [
                IdentityTower(len(t), dim, [feature_name(f) for f in t])
                if tower_width is None
                else TowerInteraction(len(t), dim, tower_width, [feature_name(f) for f in t])
                for t in self.towers
            ]
            self.sparse = EmbeddingTowerCollection(
                [
                    EmbeddingTower(_ebc(t, table_sizes, dim), m)
                    for t, m in zip(self.towers, mods, strict=True)
                ]
            )
            n_vec = 1 + sum(m.width for m in mods) // dim
        self.tower_width = tower_width
        self._keys = [feature_name(f) for f in range(n)] if towers is None else None
        self._table_shapes = {table_name(f): (int(table_sizes[f]), dim) for f in range(n)}
        # identity towers: the tower outputs concatenated are the features in tower order
        order = [f for t in self.towers for f in t] if self.towers else list(range(n))
        self.register_buffer("_inverse", torch.argsort(torch.tensor(order)), persistent=False)
        n_pairs = n_vec * (n_vec - 1) // 2
        extra = 0 if tower_width is None else n_vec * dim - dim  # tower outputs themselves
        self.top = mlp([dim + n_pairs + extra, *top, 1], last_act=False)
        for p in self._table_weights():
            nn.init.normal_(p, std=dim**-0.5)

    def _table_weights(self) -> Iterator[torch.Tensor]:
        for name, p in self.sparse.named_parameters():
            if "embedding_bags" in name:
                yield p

    def forward(
        self, dense: torch.Tensor, sparse: torch.Tensor | KeyedJaggedTensor
    ) -> torch.Tensor:
        """dense: (B, n_dense) float; sparse: (B, F) int64 ids or their KJT -> (B,) logits."""
        kjt = sparse_to_kjt(sparse) if isinstance(sparse, torch.Tensor) else sparse
        d = self.bottom(dense)  # (B, D)
        out = self.sparse(kjt)
        if isinstance(out, LazyAwaitable):  # sharded modules return awaitables
            out = out.wait()
        # (B, F * D) pooled embeddings (flat) or (B, sum of widths) tower outputs (SPTT)
        x = keyed_values(out, self._keys, self.dim)
        if self.tower_width is None:
            vecs = x.view(len(x), self.n_features, self.dim)[:, self._inverse]
            vecs = torch.cat([d.unsqueeze(1), vecs], dim=1)
            feats = [d, pairwise_dots(vecs)]
        else:
            # local interactions happened in the towers; here the global one over their outputs
            vecs = torch.cat([d.unsqueeze(1), x.view(len(x), -1, self.dim)], dim=1)
            feats = [d, x, pairwise_dots(vecs)]
        return self.top(torch.cat(feats, dim=1)).squeeze(-1)

    def table_sizes(self) -> dict[str, tuple[int, int]]:
        """Table name -> (rows, dim) (recorded before sharding replaces ``sparse``)."""
        return dict(self._table_shapes)


# -- sharding ----------------------------------------------------------------------------


class _NoDdp(nn.Module):
    """Stands in for DDP around a tower module without parameters (DDP refuses those)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        return self.module(*args, **kwargs)


def _cpu_ddp(module: nn.Module, device_ids=None, **kwargs) -> nn.Module:  # noqa: ANN001
    from torch.nn.parallel import DistributedDataParallel

    if not any(p.requires_grad for p in module.parameters()):
        return _NoDdp(module)
    if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
        device_ids = None  # DDP takes device_ids only for CUDA modules
    return DistributedDataParallel(module, device_ids=device_ids, **kwargs)


class CpuEmbeddingTowerCollectionSharder(EmbeddingTowerCollectionSharder):
    """TorchRec's EmbeddingTowerCollection sharder, usable on CPU: TorchRec wraps each tower
    module in DDP with ``device_ids=[device]``, which DDP refuses for CPU modules, and DDP
    refuses modules without parameters (identity towers). While sharding, this builds the
    DDP without ``device_ids`` on CPU, and a plain pass-through for parameter-free towers."""

    def shard(self, module, params, env, device=None, module_fqn=None):  # noqa: ANN001, ANN201
        with _patched(_ets, "DistributedDataParallel", _cpu_ddp):
            return super().shard(module, params, env, device, module_fqn)


@contextlib.contextmanager
def _patched(mod: object, name: str, value: object) -> Iterator[None]:
    old = getattr(mod, name)
    setattr(mod, name, value)
    try:
        yield
    finally:
        setattr(mod, name, old)


def sharding_plan(
    model: TowerDLRM,
    world_size: int,
    local_size: int,
    flat: FlatSharding = "table_wise",
):  # noqa: ANN201
    """The explicit TorchRec ShardingPlan for ``model.sparse`` (module path ``"sparse"``).

    flat model: ``table_wise`` puts table f on rank ``f % world_size``, ``row_wise`` splits
    every table over all ranks. SPTT: tower t's tables are table-row-wise on host t (one tower
    per host: ``len(model.towers)`` must equal ``world_size / local_size``)."""
    from torchrec.distributed.sharding_plan import (
        construct_module_sharding_plan,
        row_wise,
        table_row_wise,
        table_wise,
    )
    from torchrec.distributed.types import ShardingPlan

    if world_size % local_size:
        raise ValueError(f"world size {world_size} is not a multiple of local size {local_size}")
    kw = {"local_size": local_size, "world_size": world_size, "device_type": "cpu"}
    if model.towers is None:
        n = model.n_features
        if flat == "table_wise":
            per = {
                table_name(f): table_wise(rank=f % world_size, compute_kernel="dense")
                for f in range(n)
            }
        elif flat == "row_wise":
            per = {table_name(f): row_wise(compute_kernel="dense") for f in range(n)}
        else:
            raise ValueError(f"flat sharding {flat!r}; choose 'table_wise' or 'row_wise'")
        plan = construct_module_sharding_plan(model.sparse, per, **kw)
    else:
        nnodes = world_size // local_size
        if len(model.towers) != nnodes:
            raise ValueError(
                f"{len(model.towers)} towers on {nnodes} hosts: SPTT here puts one tower per host"
            )
        per = {
            table_name(f): table_row_wise(host_index=h)
            for h, t in enumerate(model.towers)
            for f in t
        }
        plan = construct_module_sharding_plan(
            model.sparse, per, sharder=CpuEmbeddingTowerCollectionSharder(), **kw
        )
        for ps in plan.values():
            ps.compute_kernel = "dense"
    return ShardingPlan({"sparse": plan})


def shard_model(
    model: TowerDLRM, world_size: int, local_size: int, flat: FlatSharding = "table_wise"
) -> nn.Module:
    """``model`` inside TorchRec's DistributedModelParallel on CPU with :func:`sharding_plan`
    (dense parts in DDP over all ranks). Every rank must call it with identically initialised
    models."""
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.types import ShardingEnv

    plan = sharding_plan(model, world_size, local_size, flat)
    return DistributedModelParallel(
        model,
        env=ShardingEnv.from_process_group(dist.group.WORLD),
        device=torch.device("cpu"),
        plan=plan,
        sharders=[CpuEmbeddingTowerCollectionSharder(), EmbeddingBagCollectionSharder()],
    )


def _table_shards(dmp: nn.Module) -> Iterator[tuple[str, torch.Tensor, tuple[int, int]]]:
    """(table name, local shard tensor (a view of the parameter), (row, col) offset)."""
    for key, v in dmp.state_dict().items():
        if "embedding_bags." not in key or not hasattr(v, "local_shards"):
            continue
        name = key.split("embedding_bags.")[1].split(".")[0]
        for shard in v.local_shards():
            off = shard.metadata.shard_offsets
            yield name, shard.tensor, (int(off[0]), int(off[1]))


def load_tables(dmp: nn.Module, tables: dict[str, torch.Tensor]) -> None:
    """Copy full tables (name -> (rows, dim)) into this rank's shards of them."""
    with torch.no_grad():
        for name, t, (r, c) in _table_shards(dmp):
            t.copy_(tables[name][r : r + t.shape[0], c : c + t.shape[1]])


def full_tables(dmp: nn.Module, sizes: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Every table in full on every rank (shards summed over all ranks; a collective)."""
    out = {name: torch.zeros(shape) for name, shape in sorted(sizes.items())}
    with torch.no_grad():
        for name, t, (r, c) in _table_shards(dmp):
            out[name][r : r + t.shape[0], c : c + t.shape[1]] += t
    for name in sorted(out):
        dist.all_reduce(out[name])
    return out
