"""The retrieval model's id embedding tables as TorchRec tables, sharded across processes.

``ShardedTable`` stands in for an ``nn.Embedding`` inside ``RetrievalModel``: it looks rows
up (``forward``) and sums bags of rows (``bag_sum``, what the pooled history encoder needs)
through a one-table TorchRec ``EmbeddingBagCollection``, which ``DistributedModelParallel``
then shards row-wise, so each process holds a contiguous block of rows and lookups travel by
all-to-all. ``shard_tables`` swaps the model's tables for these; ``TABLES`` names them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

from hirex.models.retrieval_model import RetrievalModel

__all__ = ["TABLES", "ShardedTable", "gather_rows", "shard_tables"]

FEATURE = "ids"
TABLE = "t"

# The model's id tables, by their path in RetrievalModel (the weight is PATH.weight).
TABLES = ("item_tower.id_emb", "user_tower.history.emb", "user_tower.id_emb")


class ShardedTable(nn.Module):
    """An (N, D) embedding table in a TorchRec EmbeddingBagCollection (``self.ebc``)."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    name=TABLE,
                    embedding_dim=embedding_dim,
                    num_embeddings=num_embeddings,
                    feature_names=[FEATURE],
                    pooling=PoolingType.SUM,
                )
            ],
            device=torch.device("meta"),
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (...) int64 -> (..., D), like nn.Embedding."""
        flat = ids.reshape(-1)
        lengths = torch.ones_like(flat)
        return self._bags(flat, lengths).reshape(*ids.shape, self.embedding_dim)

    def bag_sum(self, values: torch.Tensor, indptr: torch.Tensor) -> torch.Tensor:
        """values: (nnz,) int64, indptr: (B + 1,) -> (B, D), the sum of each bag's rows (zero
        for an empty bag), like F.embedding_bag(mode="sum")."""
        return self._bags(values, indptr[1:] - indptr[:-1])

    def _bags(self, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=[FEATURE], values=values.long(), lengths=lengths.long()
        )
        return self.ebc(kjt)[FEATURE]

    # ---- the local block of rows, once sharded ---------------------------------------------
    def local_shard(self) -> tuple[int, torch.Tensor, nn.Parameter]:
        """(first row, the local rows (n, D) as stored, the parameter the optimiser steps) of
        this process's block, after ``DistributedModelParallel`` sharded the table row-wise."""
        weight = self.ebc.state_dict()[f"embedding_bags.{TABLE}.weight"]
        shards = weight.local_shards()
        if len(shards) != 1:
            raise RuntimeError(f"expected one row-wise shard per process, found {len(shards)}")
        (param,) = list(self.ebc.parameters())
        return int(shards[0].metadata.shard_offsets[0]), shards[0].tensor, param


def shard_tables(model: RetrievalModel) -> dict[str, ShardedTable]:
    """Replace ``model``'s id tables (those of TABLES it has) by ShardedTables, in place; the
    returned map, by path, keeps the original weights to copy in once sharded."""
    tables: dict[str, ShardedTable] = {}
    for path in TABLES:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        table = getattr(parent, name, None)
        if not isinstance(table, nn.Embedding):
            continue
        sharded = ShardedTable(table.num_embeddings, table.embedding_dim)
        setattr(parent, name, sharded)
        tables[path] = sharded
    return tables


def gather_rows(local: torch.Tensor, first_row: int, n_rows: int) -> torch.Tensor | None:
    """Assemble a row-sharded (n_rows, ...) tensor from every process's block ``local`` (its
    rows first_row .. first_row + len(local)); the whole tensor on rank 0, None elsewhere."""
    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = [torch.zeros(2, dtype=torch.long) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([first_row, local.shape[0]]))
    most = max(int(s[1]) for s in sizes)
    padded = local.new_zeros((most, *local.shape[1:]))
    padded[: local.shape[0]] = local.detach()
    blocks = [torch.empty_like(padded) for _ in range(world)] if rank == 0 else None
    dist.gather(padded, blocks, dst=0)
    if blocks is None:
        return None
    out = local.new_zeros((n_rows, *local.shape[1:]))
    for (start, count), block in zip(sizes, blocks, strict=True):
        out[int(start) : int(start) + int(count)] = block[: int(count)]
    return out
