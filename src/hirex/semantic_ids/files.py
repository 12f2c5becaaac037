"""Semantic IDs and generators on disk: safetensors plus a JSON manifest (``hirex.manifest``).

    IDS_DIR/
      manifest.json       format hirex-semantic-ids v1: method, sizes, catalogue fingerprint,
                          text encoder, statistics, sha256 of ids.safetensors
      ids.safetensors     codes (N, P), active (N,), and the assigner's tensors (codebooks,
                          encoder weights) that give new items an ID from their text

    GENERATOR_DIR/
      manifest.json       format hirex-generator v1: architecture, the IDs' fingerprint
      generator.safetensors

A generator names the IDs it was trained on by ``ids_fingerprint`` (sha256 of the codes of the
items it was trained with); loading it beside other IDs is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from hirex.atomic_files import atomic_write_bytes
from hirex.manifest import read_manifest, verify_files, write_artifact
from hirex.semantic_ids.generator import GeneratorShape, SemanticIdGenerator
from hirex.semantic_ids.ids import METHODS, SemanticIds
from hirex.semantic_ids.text_encoder import TfidfEncoder

IDS_FORMAT, IDS_VERSION, IDS_FILE = "hirex-semantic-ids", 1, "ids.safetensors"
GEN_FORMAT, GEN_VERSION, GEN_FILE = "hirex-generator", 1, "generator.safetensors"
IDS_FIX = "re-create the IDs (hirex sid fit)"
GEN_FIX = "retrain the generator (hirex train)"


def ids_fingerprint(ids: SemanticIds, n_items: int | None = None) -> str:
    """sha256 of the first ``n_items`` items' codes and the vocabulary sizes."""
    n = ids.n_items if n_items is None else n_items
    h = hashlib.sha256(np.asarray(ids.sizes, np.int64).tobytes())
    h.update(np.ascontiguousarray(ids.codes[:n]).tobytes())
    return h.hexdigest()


def save_ids(path: str | os.PathLike, ids: SemanticIds) -> Path:
    """Write ``ids`` (with its assigner, when it has one) to the folder ``path``, atomically."""
    tensors = {
        "codes": torch.from_numpy(ids.codes.copy()),
        "active": torch.from_numpy(ids.active.astype(np.uint8)),
    }
    assigner = ids.assigner
    encoder: dict[str, Any] = dict(ids.info.get("encoder", {}))
    if assigner is not None:
        tensors.update(assigner.quantizer.tensors())
        if isinstance(assigner.text, TfidfEncoder):
            tensors.update(assigner.text.tensors())
            encoder["tfidf_vocab"] = assigner.text.vocab

    def write_files(tmp: Path) -> list[str]:
        atomic_write_bytes(tmp / IDS_FILE, save({k: v.contiguous() for k, v in tensors.items()}))
        return [IDS_FILE]

    fields = {
        "method": ids.method,
        "sizes": list(ids.sizes),
        "n_items": ids.n_items,
        "catalogue": ids.catalogue,
        "fingerprint": ids_fingerprint(ids),
        "assigner": None if assigner is None else assigner.quantizer.name,
        "encoder": encoder,
        "info": {k: v for k, v in ids.info.items() if k != "encoder"},
    }
    return write_artifact(
        path, IDS_FORMAT, IDS_VERSION, write_files, fields, what="a hirex semantic-ID folder"
    )


def load_ids(path: str | os.PathLike, catalogue: str | None = None) -> SemanticIds:
    """Read IDs written by ``save_ids``, verifying the checksum first.

    catalogue: the ``catalogue_fingerprint`` of the data they will be used with; IDs fitted on
    another catalogue are refused."""
    from hirex.semantic_ids.assign import Assigner, quantizer_from_tensors

    path = Path(path)
    manifest = read_manifest(path, IDS_FORMAT, IDS_VERSION, what="a hirex semantic-ID", fix=IDS_FIX)
    verify_files(path, manifest, [IDS_FILE], IDS_FIX)
    try:
        method, sizes = manifest["method"], tuple(int(k) for k in manifest["sizes"])
        if method not in METHODS:
            raise ValueError(f"{path}: unknown ID method {method!r}; {IDS_FIX}")
        if catalogue is not None and manifest["catalogue"] != catalogue:
            raise ValueError(
                f"{path}: these semantic IDs were fitted on another catalogue (its item ids "
                "differ from this dataset's); fit IDs for this data with `hirex sid fit`"
            )
        tensors = load_file(str(path / IDS_FILE))
        codes, active = tensors["codes"].numpy(), tensors["active"].numpy().astype(bool)
        if codes.shape != (manifest["n_items"], len(sizes)) or active.shape != (len(codes),):
            raise ValueError(f"{path / IDS_FILE}: codes do not match the manifest; {IDS_FIX}")
        encoder = dict(manifest.get("encoder") or {})
        ids = SemanticIds(
            codes, sizes, method, manifest["catalogue"], active,
            info={**manifest.get("info", {}), "encoder": encoder},
        )  # fmt: skip
        if manifest.get("assigner"):
            text = None
            if encoder.get("name") == "tfidf":
                text = TfidfEncoder.from_tensors(encoder["tfidf_vocab"], tensors)
            quantizer = quantizer_from_tensors(manifest["assigner"], tensors, list(sizes[:-1]))
            ids.assigner = Assigner(encoder.get("name", "minilm"), text, quantizer)
    except (KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"{path}: malformed semantic-ID folder ({err}); {IDS_FIX}") from err
    return ids


def save_generator(
    path: str | os.PathLike, model: SemanticIdGenerator, ids: SemanticIds, info: dict
) -> Path:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}

    def write_files(tmp: Path) -> list[str]:
        atomic_write_bytes(tmp / GEN_FILE, save(tensors))
        return [GEN_FILE]

    fields = {
        "shape": dataclasses.asdict(model.shape),
        "ids_fingerprint": ids_fingerprint(ids),
        "ids_items": ids.n_items,
        "catalogue": ids.catalogue,
        "info": info,
    }
    return write_artifact(
        path, GEN_FORMAT, GEN_VERSION, write_files, fields, what="a hirex generator"
    )


def load_generator(
    path: str | os.PathLike, ids: SemanticIds, device: str | torch.device = "cpu"
) -> SemanticIdGenerator:
    """Read a generator and check that ``ids`` are the IDs it was trained on (items added since
    training are allowed: only the first ``ids_items`` rows are compared)."""
    path = Path(path)
    manifest = read_manifest(path, GEN_FORMAT, GEN_VERSION, what="a hirex generator", fix=GEN_FIX)
    verify_files(path, manifest, [GEN_FILE], GEN_FIX)
    try:
        shape = manifest["shape"]
        shape = GeneratorShape(**{**shape, "sizes": tuple(shape["sizes"])})
        n = int(manifest["ids_items"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: malformed generator manifest ({err}); {GEN_FIX}") from err
    if (
        tuple(ids.sizes) != shape.sizes
        or ids.n_items < n
        or ids_fingerprint(ids, n) != manifest["ids_fingerprint"]
    ):
        raise ValueError(
            f"{path}: this generator was trained on other semantic IDs than the ones given "
            f"({ids.method}, sizes {list(ids.sizes)}); use the IDs of its run folder, or "
            "train a generator on these IDs"
        )
    model = SemanticIdGenerator(shape)
    try:
        model.load_state_dict(load_file(str(path / GEN_FILE)))
    except RuntimeError as err:
        raise ValueError(
            f"{path / GEN_FILE}: weights do not match the manifest; {GEN_FIX}"
        ) from err
    return model.to(device).eval()
