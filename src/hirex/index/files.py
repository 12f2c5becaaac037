"""An index on disk, with the model it serves: one folder, replaced atomically.

    INDEX_DIR/
      manifest.json        format name and version, shapes, byte sizes and sha256 of each file
      model.safetensors    the retrieval model (RetrievalModel.save)
      index.safetensors    codewords, per-level user maps, item memory, paths, active flags, nodes

The folder is written beside its destination and renamed into place, so a crash never leaves a
half-written index under the final name.  Loading checks the manifest before anything else: a
truncated, corrupted, tampered or wrong-version file is a ValueError that names the problem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save

from hirex.atomic_files import atomic_write_bytes
from hirex.index.codebooks import ResidualCodebooks
from hirex.index.hierarchy import HierarchicalIndex
from hirex.manifest import MANIFEST, verify_files, write_artifact
from hirex.manifest import read_manifest as read_artifact_manifest
from hirex.models.retrieval_model import RetrievalModel, read_safetensors

INDEX_FORMAT = "hirex-index"
INDEX_VERSION = 1
MODEL_FILE = "model.safetensors"
TENSORS_FILE = "index.safetensors"


def _index_tensors(index: HierarchicalIndex) -> dict[str, torch.Tensor]:
    tensors = {
        "item_emb": index.item_emb.detach().float().cpu().contiguous(),
        "codes": index.codes.cpu().contiguous(),
        "active": torch.from_numpy(index.active.astype(np.uint8)),
    }
    for level, keys in enumerate(index.node_keys):
        tensors[f"node_keys.{level}"] = torch.from_numpy(keys.astype(np.int64))
    for name, value in index.codebooks.state_dict().items():
        tensors[f"codebooks.{name}"] = value.detach().float().cpu().contiguous()
    return tensors


def save_index(
    path: str | os.PathLike,
    index: HierarchicalIndex,
    model: RetrievalModel,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write ``index`` and ``model`` to the folder ``path`` (replacing an index there)."""
    if index.item_emb.shape[1:] != (index.codebooks.q, index.codebooks.dim):
        raise ValueError("index item memory and codebooks disagree on the embedding shape")
    tensors = _index_tensors(index)

    def write_files(tmp: Path) -> list[str]:
        model.save(tmp / MODEL_FILE)
        atomic_write_bytes(tmp / TENSORS_FILE, save(tensors))
        return [MODEL_FILE, TENSORS_FILE]

    fields = {
        "levels": index.sizes,
        "q": index.codebooks.q,
        "dim": index.codebooks.dim,
        "n_items": index.n_items,
        "n_active": index.n_active,
        "node_embedding": index.node_embedding,
        "assign": index.assign,
        "assign_dims": index.assign_dims,
        "tensors": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
            for k, v in tensors.items()
        },
        "info": info or {},
    }
    return write_artifact(
        path, INDEX_FORMAT, INDEX_VERSION, write_files, fields, what="a hirex index"
    )


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the index folder ``path``, checked for format and version."""
    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"{path} is not an index folder (build one with `hirex index build`)"
        )
    return read_artifact_manifest(
        path, INDEX_FORMAT, INDEX_VERSION, what="a hirex index", fix="rebuild the index"
    )


def load_index(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[RetrievalModel, HierarchicalIndex]:
    """Read the model and index written by ``save_index``, verifying every file first."""
    path = Path(path)
    manifest = read_manifest(path)
    verify_files(path, manifest, [MODEL_FILE, TENSORS_FILE], "rebuild the index")
    try:
        sizes, q, dim = (
            [int(k) for k in manifest["levels"]],
            int(manifest["q"]),
            int(manifest["dim"]),
        )
        declared = manifest["tensors"]
        # Indexes written before the choice existed scored codeword sums.
        node_embedding = manifest.get("node_embedding", "codewords")
        if node_embedding not in HierarchicalIndex.NODE_EMBEDDINGS:
            raise ValueError(
                f"{path / MANIFEST}: node_embedding {node_embedding!r} is not one of "
                f"{HierarchicalIndex.NODE_EMBEDDINGS}; rebuild the index"
            )
        assign = manifest.get("assign", "codebooks")
        if assign not in HierarchicalIndex.ASSIGNS:
            raise ValueError(
                f"{path / MANIFEST}: assign {assign!r} is not one of "
                f"{HierarchicalIndex.ASSIGNS}; rebuild the index"
            )
        assign_dims = manifest.get("assign_dims")  # absent before index.kmeans_on existed
        if assign_dims is not None and (
            type(assign_dims) is not int or not 0 < assign_dims <= dim or assign != "centroids"
        ):
            raise ValueError(
                f"{path / MANIFEST}: assign_dims {assign_dims!r} must be 1 to {dim} with "
                "assign 'centroids'; rebuild the index"
            )
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path / MANIFEST}: missing or malformed entry {err}") from err
    model = RetrievalModel.load(path / MODEL_FILE, device=device)
    tensors, _ = read_safetensors(path / TENSORS_FILE, None, None)
    for name, spec in declared.items():
        if name not in tensors or list(tensors[name].shape) != spec["shape"]:
            raise ValueError(f"{path / TENSORS_FILE}: tensor {name} does not match the manifest")
    codebooks = ResidualCodebooks(sizes, q, dim)
    try:
        codebooks.load_state_dict(
            {k[len("codebooks.") :]: v for k, v in tensors.items() if k.startswith("codebooks.")}
        )
    except RuntimeError as err:
        raise ValueError(f"{path}: codebooks do not match the manifest ({err})") from err
    item_emb, codes = tensors["item_emb"], tensors["codes"]
    n = item_emb.shape[0]
    if item_emb.shape[1:] != (q, dim) or codes.shape != (n, len(sizes)):
        raise ValueError(f"{path}: item memory or paths have the wrong shape")
    if (codes < 0).any() or (codes >= torch.tensor(sizes)).any():
        raise ValueError(f"{path}: item paths hold codes outside the codebooks")
    expect_q = model.cfg.mol_item_embs if model.cfg.scorer == "mol" else 1
    if (q, dim) != (expect_q, model.embedding_dim):
        raise ValueError(f"{path}: the index was built for another model (embedding shape)")
    index = HierarchicalIndex(
        codebooks,
        item_emb.to(device),
        codes,
        tensors["active"].numpy().astype(bool),
        extra_nodes=[tensors[f"node_keys.{lv}"].numpy() for lv in range(len(sizes))],
        node_embedding=node_embedding,
        assign=assign,
        assign_dims=assign_dims,
    )
    index.check()  # ValueError naming the inconsistency
    return model, index
