"""Training checkpoints: model, optimizer and loop state in one safetensors file, atomically.

Optimizer state is flattened into named tensors and its structure into JSON metadata, so a
checkpoint never needs pickle.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors.torch import save

from hirex.atomic_files import atomic_write_bytes
from hirex.models.retrieval_model import read_safetensors

CHECKPOINT_FORMAT = "hirex-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    opt_meta: dict[str, Any] = {"param_groups": opt["param_groups"], "state": {}}
    for pid, pstate in opt["state"].items():
        opt_meta["state"][str(pid)] = {}
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{name}"] = value.detach().cpu().contiguous()
                opt_meta["state"][str(pid)][name] = "tensor"
            else:
                opt_meta["state"][str(pid)][name] = value
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": str(CHECKPOINT_VERSION),
        "optimizer": json.dumps(opt_meta),
        "state": json.dumps(state),
    }
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_checkpoint(
    path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore model and optimizer in place; returns the loop state saved with them."""
    tensors, meta = read_safetensors(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)
    device = next(model.parameters()).device
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state, strict=True)
        opt_meta = json.loads(meta["optimizer"])
        opt_state: dict[str, Any] = {"param_groups": opt_meta["param_groups"], "state": {}}
        for pid, pstate in opt_meta["state"].items():
            opt_state["state"][int(pid)] = {
                name: tensors[f"optim.{pid}.{name}"].to(device) if value == "tensor" else value
                for name, value in pstate.items()
            }
        optimizer.load_state_dict(opt_state)
        return json.loads(meta["state"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise ValueError(
            f"{path}: checkpoint does not match this model and config ({err}); "
            "train into a new output folder or pass --restart"
        ) from err
