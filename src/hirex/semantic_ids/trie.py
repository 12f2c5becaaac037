"""The prefix trie over a catalogue's valid semantic IDs, as sorted key arrays.

Depth d holds the sorted mixed-radix keys of every active item's first d codes.  A prefix key
``p`` at depth d may be followed by code ``c`` exactly when ``p * sizes[d] + c`` is a key at depth
d + 1; a full key maps to one item.  Membership is a ``searchsorted`` over all (beam, code)
pairs at once, so constrained beam search stays batched and vectorised; adding or removing items
rebuilds the arrays from ``SemanticIds`` (milliseconds at 100k items).
"""

from __future__ import annotations

import numpy as np
import torch

from hirex.semantic_ids.ids import SemanticIds, prefix_keys


class PrefixTrie:
    def __init__(self, ids: SemanticIds, device: torch.device | str = "cpu") -> None:
        self.sizes = ids.sizes
        self.device = torch.device(device)
        active = np.flatnonzero(ids.active)
        codes = ids.codes[active]
        self.levels: list[torch.Tensor] = []
        for depth in range(1, ids.length + 1):
            keys = np.unique(prefix_keys(codes, ids.sizes, depth))
            self.levels.append(torch.from_numpy(keys).to(self.device))
        full = prefix_keys(codes, ids.sizes, ids.length)
        order = np.argsort(full)
        self.full_keys = torch.from_numpy(full[order]).to(self.device)
        self.full_items = torch.from_numpy(active[order]).to(self.device)

    @property
    def n_items(self) -> int:
        return len(self.full_items)

    def allowed(self, prefix: torch.Tensor, depth: int) -> torch.Tensor:
        """prefix: (...,) keys of depth ``depth`` -> (..., sizes[depth]) bool: which codes extend
        each prefix to a valid one."""
        size = self.sizes[depth]
        cand = prefix[..., None] * size + torch.arange(size, device=prefix.device)
        return _member(self.levels[depth], cand)

    def items_of(self, keys: torch.Tensor) -> torch.Tensor:
        """Full-ID keys -> dense item ids, -1 where a key is no active item."""
        pos = torch.searchsorted(self.full_keys, keys).clamp(max=max(len(self.full_keys) - 1, 0))
        if len(self.full_keys) == 0:
            return torch.full_like(keys, -1)
        hit = self.full_keys[pos] == keys
        return torch.where(hit, self.full_items[pos], torch.full_like(keys, -1))


def _member(sorted_keys: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    if len(sorted_keys) == 0:
        return torch.zeros_like(cand, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, cand.reshape(-1)).clamp(max=len(sorted_keys) - 1)
    return (sorted_keys[pos] == cand.reshape(-1)).reshape(cand.shape)
