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

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save

from hirex.atomic_files import atomic_write_bytes, atomic_write_json
from hirex.index.codebooks import ResidualCodebooks
from hirex.index.hierarchy import HierarchicalIndex
from hirex.models.retrieval_model import RetrievalModel, read_safetensors

INDEX_FORMAT = "hirex-index"
INDEX_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
TENSORS_FILE = "index.safetensors"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    path = Path(path)
    if path.exists() and not (path / MANIFEST).exists():
        raise FileExistsError(
            f"{path} exists and is not a hirex index; choose another folder (nothing was written)"
        )
    if index.item_emb.shape[1:] != (index.codebooks.q, index.codebooks.dim):
        raise ValueError("index item memory and codebooks disagree on the embedding shape")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        model.save(tmp / MODEL_FILE)
        tensors = _index_tensors(index)
        atomic_write_bytes(tmp / TENSORS_FILE, save(tensors))
        manifest = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "levels": index.sizes,
            "q": index.codebooks.q,
            "dim": index.codebooks.dim,
            "n_items": index.n_items,
            "n_active": index.n_active,
            "node_embedding": index.node_embedding,
            "assign": index.assign,
            "tensors": {
                k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                for k, v in tensors.items()
            },
            "files": {
                name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
                for name in (MODEL_FILE, TENSORS_FILE)
            },
            "info": info or {},
        }
        atomic_write_json(tmp / MANIFEST, manifest)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the index folder ``path``, checked for format and version."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is not an index folder (build one with `hirex index build`)"
        )
    mpath = path / MANIFEST
    if not mpath.exists():
        raise ValueError(f"{path}: no {MANIFEST}; not a hirex index, or an interrupted write")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{mpath}: not valid JSON ({err}); rebuild the index") from err
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        raise ValueError(f"{mpath}: not a {INDEX_FORMAT} manifest")
    if manifest.get("version") != INDEX_VERSION:
        raise ValueError(
            f"{mpath}: index format version {manifest.get('version')!r}; this hirex reads "
            f"version {INDEX_VERSION}. Rebuild the index with this version (hirex index build)."
        )
    return manifest


def load_index(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[RetrievalModel, HierarchicalIndex]:
    """Read the model and index written by ``save_index``, verifying every file first."""
    path = Path(path)
    manifest = read_manifest(path)
    try:
        files = manifest["files"]
        for name in (MODEL_FILE, TENSORS_FILE):
            fpath, want = path / name, files[name]
            if not fpath.exists():
                raise ValueError(f"{fpath} is missing; rebuild the index")
            size = fpath.stat().st_size
            if size != want["bytes"]:
                raise ValueError(
                    f"{fpath} has {size} bytes, the manifest says {want['bytes']} (truncated or "
                    "replaced); rebuild the index"
                )
            if _sha256(fpath) != want["sha256"]:
                raise ValueError(
                    f"{fpath} does not match its checksum in the manifest (corrupted or "
                    "modified); rebuild the index"
                )
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
    )
    index.check()  # ValueError naming the inconsistency
    return model, index
