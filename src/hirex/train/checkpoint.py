"""Training checkpoints: model, optimizer and loop state in one safetensors file, atomically.

Optimizer state is flattened into named tensors and its structure into JSON metadata, so a
checkpoint never needs pickle.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from hirex.atomic_files import atomic_write_bytes
from hirex.models.retrieval_model import read_safetensors, safetensors_bytes

CHECKPOINT_FORMAT = "hirex-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> None:
    write_checkpoint(path, model.state_dict(), optimizer.state_dict(), state)


def write_checkpoint(
    path: str | os.PathLike,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    state: dict[str, Any],
) -> None:
    """Write a model's and an optimizer's state dicts (as ``state_dict()`` returns them) and
    the loop ``state`` to one file, atomically."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    opt_meta: dict[str, Any] = {"param_groups": optimizer_state["param_groups"], "state": {}}
    for pid, pstate in optimizer_state["state"].items():
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
    atomic_write_bytes(path, safetensors_bytes(tensors, meta))


def read_checkpoint(
    path: str | os.PathLike,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """-> (model state dict, optimizer state dict, loop state) of a checkpoint file, on CPU."""
    tensors, meta = read_safetensors(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)
    try:
        model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        opt_meta = json.loads(meta["optimizer"])
        opt_state: dict[str, Any] = {"param_groups": opt_meta["param_groups"], "state": {}}
        for pid, pstate in opt_meta["state"].items():
            opt_state["state"][int(pid)] = {
                name: tensors[f"optim.{pid}.{name}"] if value == "tensor" else value
                for name, value in pstate.items()
            }
        return model_state, opt_state, json.loads(meta["state"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: checkpoint metadata is damaged ({err}); train into a new output folder "
            "or pass --restart"
        ) from err


def load_checkpoint(
    path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore model and optimizer in place; returns the loop state saved with them."""
    model_state, opt_state, state = read_checkpoint(path)
    device = next(model.parameters()).device
    try:
        model.load_state_dict(model_state, strict=True)
        for pstate in opt_state["state"].values():
            for name, value in pstate.items():
                if torch.is_tensor(value):
                    pstate[name] = value.to(device)
        optimizer.load_state_dict(opt_state)
        return state
    except (KeyError, RuntimeError, ValueError) as err:
        raise ValueError(
            f"{path}: checkpoint does not match this model and config ({err}); "
            "train into a new output folder or pass --restart"
        ) from err
