"""Warm start: begin training from the weights of a trained model file.

The use it is made for: train the cheap dot model first, then grow it into a mixture of logits
(MoL) with the same towers and go on training that.  Each of the MoL's P user and Q item
embeddings starts as the dot model's (the copies after the first with 1% multiplicative noise,
so that they can part), and the gate from scratch.  A mixture of equal logits is that logit
whatever the gate, so training starts from the dot model's ranking instead of from noise, and
the expensive mixture only pays for the epochs that improve on it.

A tensor of the same shape is copied as it is; one that is a whole multiple of the source's
along one axis (``item_tower.id_emb``: (N, D) -> (N, Q*D), ``user_tower.proj``: (D, D) ->
(P*D, D)) gets the source tiled along that axis.  A source that ties the transformer's input
embeddings to its item embeddings (``model.share_item_embedding``, SASRec's habit, which a
mixture of several item embeddings cannot keep) gives the untied input table its item
embeddings, so the mixture reads the same histories.  The spectral branch is not copied: it is
fit again on the training data once training ends.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from hirex.config import ConfigError

if TYPE_CHECKING:
    from hirex.models.retrieval_model import RetrievalModel

NOISE = 0.01
"""Relative std of the multiplicative noise on the copies after the first of a tiled tensor."""

TIED_INPUTS = "user_tower.history.emb.weight"
"""The transformer's input embeddings, which a tied source keeps in its item embeddings."""

SKIPPED = ("spectral.",)
"""Prefixes of tensors never copied (refit after training)."""


def warm_start_state(
    path: str | os.PathLike, model: RetrievalModel, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The state dict that starts ``model`` from the model file at ``path`` (a run's
    ``model.safetensors``); a file that does not fit is a ConfigError naming what differs."""
    from hirex.models.retrieval_model import RetrievalModel

    try:
        source = RetrievalModel.load(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"train.init_from: {err}") from err
    if (source.n_users, source.n_items) != (model.n_users, model.n_items):
        raise ConfigError(
            f"train.init_from: {path} holds a model of {source.n_users:,} users and "
            f"{source.n_items:,} items; this dataset has {model.n_users:,} and "
            f"{model.n_items:,}: start from a model trained on the same data"
        )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    source_state = dict(source.state_dict())
    if source.cfg.share_item_embedding and TIED_INPUTS in state and TIED_INPUTS not in source_state:
        source_state[TIED_INPUTS] = source_state["item_tower.id_emb.weight"]
    generator = torch.Generator().manual_seed(seed)
    for name, value in source_state.items():
        if name.startswith(SKIPPED):
            continue
        if name not in state:
            if name.startswith("scorer."):  # a mixture's gate: this model's scorer has none
                continue
            raise ConfigError(
                f"train.init_from: {path} has a tensor {name!r} this model lacks; "
                "start from a model with the same towers (model.user_encoder, "
                "model.use_user_id, model.item_text, ...)"
            )
        state[name] = _fit(name, value, state[name], generator, path)
    return state


def _fit(
    name: str,
    value: torch.Tensor,
    target: torch.Tensor,
    generator: torch.Generator,
    path: str | os.PathLike,
) -> torch.Tensor:
    """``value`` as a tensor of ``target``'s shape: as it is, or tiled along the one axis where
    the target is a whole multiple of it."""
    if value.shape == target.shape:
        return value.to(target.dtype)
    axes = [k for k, (a, b) in enumerate(zip(value.shape, target.shape, strict=False)) if a != b]
    if (
        value.dim() == target.dim()
        and len(axes) == 1
        and target.shape[axes[0]] % value.shape[axes[0]] == 0
    ):
        axis = axes[0]
        copies = target.shape[axis] // value.shape[axis]
        reps = [1] * value.dim()
        reps[axis] = copies
        tiled = value.to(target.dtype).repeat(*reps)
        noise = torch.randn(tiled.shape, generator=generator, dtype=tiled.dtype) * NOISE
        first = [slice(None)] * value.dim()
        first[axis] = slice(0, value.shape[axis])
        noise[tuple(first)] = 0.0  # the first copy is the source exactly
        return tiled * (1.0 + noise)
    raise ConfigError(
        f"train.init_from: {path}: tensor {name!r} has shape {list(value.shape)}, which does "
        f"not fit this model's {list(target.shape)}; start from a model with the same "
        "model.dim and towers"
    )
