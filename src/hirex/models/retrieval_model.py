"""The foundational retrieval model: user tower, item tower, scorer; saved as safetensors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from hirex.atomic_files import atomic_write_bytes
from hirex.config import ConfigError, ModelConfig
from hirex.models.scorers import DotScorer, MixtureOfLogits
from hirex.models.spectral import SpectralBranch
from hirex.models.towers import CausalTransformer, ItemTower, UserTower
from hirex.models.user_batch import UserBatch

MODEL_FORMAT = "hirex-model"
MODEL_VERSION = 1


class RetrievalModel(nn.Module):
    """score(user, item) = scorer(user_tower(user), item_tower(item)) [/ temperature].

    ``encode_users`` -> (B, P, D), ``encode_items`` -> (N, Q, D), ``score`` -> (B, N).
    """

    def __init__(
        self, cfg: ModelConfig, n_users: int, n_items: int, item_text: list[str] | None = None
    ) -> None:
        super().__init__()
        if cfg.item_text and item_text is None:
            raise ValueError(
                "model.item_text = true but the dataset has no item text; load one with item text "
                "or set model.item_text = false"
            )
        self.cfg, self.n_users, self.n_items = cfg, n_users, n_items
        p, q = (cfg.mol_user_embs, cfg.mol_item_embs) if cfg.scorer == "mol" else (1, 1)
        self.item_tower = ItemTower(
            n_items,
            cfg.dim,
            q,
            item_text if cfg.item_text else None,
            cfg.text_buckets,
            init_std=cfg.init_std,
        )
        if cfg.share_item_embedding and (cfg.user_encoder != "transformer" or q != 1):
            raise ConfigError(
                "model.share_item_embedding ties the transformer's input embeddings to the "
                "item tower: it needs model.user_encoder = 'transformer' and the dot scorer"
            )
        self.user_tower = UserTower(
            n_users,
            n_items,
            cfg.dim,
            p,
            cfg.user_encoder,
            cfg.use_user_id,
            pooling_exponent=cfg.pooling_exponent,
            max_len=cfg.max_history,
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            dropout=cfg.dropout,
            shared_items=self.item_tower.id_emb if cfg.share_item_embedding else None,
            init_std=cfg.init_std,
            user_init_std=cfg.user_init_std,
            history_projection=cfg.history_projection,
        )
        if cfg.scorer == "dot":
            self.scorer: nn.Module = DotScorer()
        elif cfg.scorer == "mol":
            self.scorer = MixtureOfLogits(p, q, cfg.dim, cfg.mol_gate_hidden)
        else:
            raise ValueError(f"unknown scorer {cfg.scorer!r}; choose one of ['dot', 'mol']")
        self.spectral: SpectralBranch | None = None
        if cfg.spectral_rank:
            if cfg.user_encoder != "pooling":
                raise ConfigError(
                    "model.spectral_rank adds a low-pass branch to a pooled-history model: "
                    "it needs model.user_encoder = 'pooling'"
                )
            self.spectral = SpectralBranch(
                n_items, cfg.spectral_rank, cfg.pooling_exponent, cfg.spectral_linear_weight > 0
            )

    @property
    def device(self) -> torch.device:
        return self.item_tower.id_emb.weight.device

    @property
    def embedding_dim(self) -> int:
        """D of ``encode_users`` / ``encode_items``: dim, plus the rank of an attached spectral
        branch."""
        branch = self.spectral
        return self.cfg.dim + (branch.hist.shape[1] if branch is not None and branch.active else 0)

    @property
    def sequential(self) -> bool:
        return isinstance(self.user_tower.history, CausalTransformer)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.cfg.cosine else x

    def encode_users(self, batch: UserBatch) -> torch.Tensor:
        """-> (B, P, D); D = dim, plus spectral_rank once the spectral branch is attached."""
        out = self._normalise(self.user_tower(batch))
        if self.spectral is not None and self.spectral.active:
            # score() divides by the temperature; the branch's scores are already logits.
            scale = self.cfg.temperature if self.cfg.cosine else 1.0
            out = _append_branch(out, self.spectral.users(batch) * scale)
        return out

    def encode_user_positions(self, users: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """Sequence models: users (B,), seq (B, T) left-padded -> (B, T, P, D), one user
        embedding after each position (used to train next-item prediction at every step)."""
        history = self.user_tower.history
        if not isinstance(history, CausalTransformer):
            raise ValueError("encode_user_positions needs model.user_encoder = 'transformer'")
        states = history.forward_positions(seq)
        return self._normalise(self.user_tower.combine(users[:, None].expand(seq.shape), states))

    def encode_items(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """items: (N,) int64 or None for all -> (N, Q, D) (D as in ``encode_users``)"""
        out = self._normalise(self.item_tower(items))
        if self.spectral is not None and self.spectral.active:
            if items is None:
                items = torch.arange(self.n_items, device=out.device)
            out = _append_branch(out, self.spectral(items))
        return out

    def encode_item_text(self, texts: list[str]) -> torch.Tensor:
        """Item embeddings (M, Q, D) from text alone, for items added after training (they have
        no learned id embedding nor interactions, so the spectral part, if any, is zero)."""
        out = self._normalise(self.item_tower.encode_text(texts, self.cfg.text_buckets))
        extra = self.embedding_dim - out.shape[-1]
        return torch.cat([out, out.new_zeros(*out.shape[:-1], extra)], -1) if extra else out

    def score(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """user: (B, P, D), item: (N, Q, D) -> (B, N) scores (logits of the softmax)."""
        if self._branch_apart(user):
            d = self.cfg.dim
            s = self.scorer(user[..., :d], item[..., :d]) + user[:, 0, d:] @ item[:, 0, d:].T
        else:
            s = self.scorer(user, item)
        return s / self.cfg.temperature if self.cfg.cosine else s

    def _branch_apart(self, emb: torch.Tensor) -> bool:
        """Whether ``emb`` carries spectral dimensions that a non-dot scorer must not see: the
        branch is then a separate term of the score, added to the scorer's."""
        return emb.shape[-1] > self.cfg.dim and not isinstance(self.scorer, DotScorer)

    def user_side(self, user: torch.Tensor) -> torch.Tensor | None:
        """user: (B, P, D) -> the scorer's per-user precomputation for ``score_pairs`` (or None)."""
        return self.scorer.user_side(user[..., : self.cfg.dim])

    def item_side(self, item: torch.Tensor) -> torch.Tensor | None:
        """item: (N, Q, D) -> the scorer's per-item precomputation for ``score_pairs`` (or None)."""
        return self.scorer.item_side(item[..., : self.cfg.dim])

    def score_pairs(
        self,
        user: torch.Tensor,
        item: torch.Tensor,
        user_side: torch.Tensor | None = None,
        item_side: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """user: (M, P, D), item: (M, Q, D), sides: the matching rows of ``user_side`` /
        ``item_side`` or None -> (M,) scores of the M (user, item) pairs, equal to the matching
        entries of ``score``."""
        if self._branch_apart(user):
            d = self.cfg.dim
            s = self.scorer.pairs(user[..., :d], item[..., :d], user_side, item_side)
            s = s + (user[:, 0, d:] * item[:, 0, d:]).sum(-1)
        else:
            s = self.scorer.pairs(user, item, user_side, item_side)
        return s / self.cfg.temperature if self.cfg.cosine else s

    # ---- files ---------------------------------------------------------------
    def save(self, path: str | os.PathLike, extra: dict[str, str] | None = None) -> None:
        """Write weights and config to one safetensors file, atomically."""
        meta = {
            "format": MODEL_FORMAT,
            "version": str(MODEL_VERSION),
            "model_config": json.dumps(dataclasses.asdict(self.cfg)),
            "n_users": str(self.n_users),
            "n_items": str(self.n_items),
        }
        meta.update(extra or {})
        atomic_write_bytes(path, safetensors_bytes(self.state_dict(), meta))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> RetrievalModel:
        """Load a model written by ``save``; a bad file gets a ValueError naming the problem."""
        tensors, meta = read_safetensors(path, MODEL_FORMAT, MODEL_VERSION)
        try:
            cfg = ModelConfig(**json.loads(meta["model_config"]))
            n_users, n_items = int(meta["n_users"]), int(meta["n_items"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: model metadata is damaged ({err})") from err
        text = None
        if cfg.item_text:
            # The hashed text lives in buffers; any placeholder of the right length rebuilds them.
            text = [""] * n_items
        model = cls(cfg, n_users, n_items, text)
        if cfg.item_text:
            model.item_tower.text_tokens = tensors["item_tower.text_tokens"]
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{path}: weights do not match the model config ({err})") from err
        return model.to(device).eval()


CHECKSUM_KEY = "tensors_sha256"


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer, not a copy
    return digest.hexdigest()


def safetensors_bytes(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    """A safetensors file of ``tensors`` whose metadata also carries their checksum, which
    ``read_safetensors`` verifies."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return save(tensors, metadata={**meta, CHECKSUM_KEY: tensors_sha256(tensors)})


def read_safetensors(
    path: str | os.PathLike, fmt: str | None, version: int | None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file and check its format name and version (None: no check)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {err}"
        ) from err
    expected = meta.get(CHECKSUM_KEY)  # files written before checksums were added have none
    if expected is not None and tensors_sha256(tensors) != expected:
        raise ValueError(
            f"{path}: checksum mismatch: the tensor data was changed or damaged after it was "
            "written. Restore the file from a copy, or retrain into a new folder."
        )
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"{path}: tensor {name!r} holds {bad} NaN or infinite values: the file is "
                "damaged or was written by a training run that diverged. Retrain into a new "
                "folder (lower train.lr), or restore the file from a copy."
            )
    if fmt is None:
        return tensors, meta
    if meta.get("format") != fmt:
        raise ValueError(f"{path}: expected a {fmt} file, found format {meta.get('format')!r}")
    if meta.get("version") != str(version):
        raise ValueError(
            f"{path}: {fmt} format version {meta.get('version')!r}; this hirex reads version "
            f"{version}. Re-create the file with this version of hirex."
        )
    return tensors, meta


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available; use cpu or auto")
    return device


def _append_branch(out: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """out: (M, P, D), branch: (M, K) -> (M, P, D + K): the branch in the first of the P
    embeddings, zeros in the others (a dot scorer, P = 1, then scores learned + branch; a
    mixture scores its P x Q logits on the first D and adds the first embeddings' branch)."""
    pad = branch.new_zeros(out.shape[0], out.shape[1] - 1, branch.shape[1])
    return torch.cat([out, torch.cat([branch[:, None].to(out.dtype), pad], 1)], dim=-1)
