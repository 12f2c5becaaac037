import math

import torch

from hirex.train.losses import (
    cosine_contrastive_loss,
    full_softmax_loss,
    sampled_softmax_loss,
)


def test_sampled_softmax_over_all_items_is_the_full_softmax():
    torch.manual_seed(0)
    scores = torch.randn(4, 6)
    pos = torch.tensor([0, 3, 5, 3])
    full = full_softmax_loss(scores, pos)
    sampled = sampled_softmax_loss(scores, torch.arange(6), pos, pos, torch.zeros(6))
    assert torch.allclose(full, sampled)


def test_accidental_hits_are_masked_and_log_q_shifts_logits():
    # Row 0's positive (item 7) also appears as candidate column 2: not a negative.
    scores = torch.tensor([[2.0, 0.0, 5.0]])
    cands = torch.tensor([7, 1, 7])
    loss = sampled_softmax_loss(scores, cands, torch.tensor([0]), torch.tensor([7]), torch.zeros(3))
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))
    assert abs(loss.item() - expected) < 1e-5
    log_q = torch.tensor([0.0, math.log(2.0), 0.0])
    cands = torch.tensor([7, 1, 3])
    loss = sampled_softmax_loss(scores, cands, torch.tensor([0]), torch.tensor([7]), log_q)
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) / 2 + math.exp(5)))
    assert abs(loss.item() - expected) < 1e-5


def test_cosine_contrastive_loss_by_hand():
    cos = torch.tensor([[0.9, 0.85, 0.1, 0.95]])
    cands = torch.tensor([3, 4, 5, 3])  # column 3 repeats the positive: ignored
    loss = cosine_contrastive_loss(cos, cands, torch.tensor([0]), torch.tensor([3]), 0.8, 2.0)
    # 1 - 0.9 + 2 * mean(relu(0.85 - 0.8), relu(0.1 - 0.8)) = 0.1 + 2 * 0.025
    assert abs(loss.item() - 0.15) < 1e-6


def test_full_softmax_with_rows_equals_repeated_rows():
    torch.manual_seed(0)
    scores = torch.randn(3, 8)
    rows = torch.tensor([0, 0, 2, 1, 2])
    pos = torch.tensor([1, 5, 0, 7, 3])
    w = torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15])
    a = full_softmax_loss(scores, pos, w, rows)
    b = full_softmax_loss(scores[rows], pos, w)
    assert torch.allclose(a, b)
