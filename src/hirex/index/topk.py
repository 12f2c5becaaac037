"""The fixed-shape result of every search."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TopK:
    """scores: (U, K) float32, best first, -inf where there is no result.
    ids: (U, K) int64 dense item ids, -1 where there is no result."""

    scores: torch.Tensor
    ids: torch.Tensor

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def merge_topk(a: TopK, b_scores: torch.Tensor, b_ids: torch.Tensor, k: int) -> TopK:
    """Top k of the union of a running result and a new block of candidates (same rows)."""
    scores = torch.cat([a.scores, b_scores], dim=1)
    ids = torch.cat([a.ids, b_ids], dim=1)
    top, pos = torch.topk(scores, min(k, scores.shape[1]), dim=1)
    return TopK(top, torch.gather(ids, 1, pos))


def empty_topk(n: int, k: int, device: torch.device | str = "cpu") -> TopK:
    return TopK(
        torch.full((n, k), float("-inf"), device=device),
        torch.full((n, k), -1, dtype=torch.int64, device=device),
    )
