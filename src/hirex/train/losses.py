"""Retrieval losses over a (rows x candidates) score matrix.

Candidates are the positives of the batch (in-batch negatives) and/or items sampled from a known
distribution; the log-Q correction subtracts the log of each candidate's expected count so the
sampled softmax estimates the full softmax (Yi et al., "Sampling-Bias-Corrected Neural Modeling
for Large Corpus Item Recommendations", RecSys 2019).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _reduce(losses: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean, or a weighted sum with weights (M,) that sum to one."""
    return losses.mean() if weights is None else (losses * weights).sum()


def full_softmax_loss(
    scores: torch.Tensor,
    positives: torch.Tensor,
    weights: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy over all items.

    scores: (B, N); positives: (M,) item ids; rows: (M,) the row of ``scores`` of each
    positive (None: M = B, row i for positive i), so a user's softmax is computed once for all
    of its positives; weights: (M,) summing to one, or None for the mean.
    """
    if rows is None:
        return _reduce(F.cross_entropy(scores, positives, reduction="none"), weights)
    log_p = torch.log_softmax(scores, dim=1)
    return _reduce(-log_p[rows, positives], weights)


def sampled_softmax_loss(
    scores: torch.Tensor,
    candidates: torch.Tensor,
    positive_column: torch.Tensor,
    positives: torch.Tensor,
    log_q: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy over sampled candidates with log-Q correction and accidental hits masked.

    scores: (M, C) logits of each row against each candidate; candidates: (C,) item ids;
    positive_column: (M,) column of each row's positive; positives: (M,) item ids;
    log_q: (C,) log expected count of each candidate under its sampling distribution.
    weights: (M,) per-row weights summing to one, or None for the mean.
    """
    logits = scores - log_q[None, :]
    # A candidate that equals the row's positive in another column is not a negative.
    hit = candidates[None, :] == positives[:, None]
    hit[torch.arange(len(positives), device=hit.device), positive_column] = False
    logits = logits.masked_fill(hit, float("-inf"))
    return _reduce(F.cross_entropy(logits, positive_column, reduction="none"), weights)


def cosine_contrastive_loss(
    cosines: torch.Tensor,
    candidates: torch.Tensor,
    positive_column: torch.Tensor,
    positives: torch.Tensor,
    margin: float,
    negative_weight: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """SimpleX's cosine contrastive loss (Mao et al., CIKM 2021).

    (1 - cos(u, pos)) + negative_weight * mean over negatives of relu(cos(u, neg) - margin).
    cosines: (M, C) raw similarities (before any temperature).
    """
    rows = torch.arange(len(positives), device=cosines.device)
    pos = cosines[rows, positive_column]
    neg_mask = candidates[None, :] != positives[:, None]
    neg = F.relu(cosines - margin) * neg_mask
    neg_mean = neg.sum(1) / neg_mask.sum(1).clamp(min=1)
    return _reduce((1.0 - pos) + negative_weight * neg_mean, weights)
