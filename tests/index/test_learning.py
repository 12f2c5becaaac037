"""Learning the index with the model: soft assignment, schedules, joint and EM steps."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from hirex.config import IndexConfig, ModelConfig
from hirex.index.codebooks import ResidualCodebooks
from hirex.index.learning import IndexLearner
from hirex.models.retrieval_model import RetrievalModel
from hirex.models.user_batch import UserBatch


def test_soft_assignment_turns_into_the_hard_paths_as_alpha_grows():
    torch.manual_seed(0)
    items = torch.randn(200, 2, 4)
    cb = ResidualCodebooks([8, 5], 2, 4)
    cb.fit_kmeans(items)
    codes = cb.encode(items)
    soft = cb.soft(items, alpha=1e6)
    for level in range(2):
        hard = cb.decode(codes[:, : level + 1]).reshape(200, -1)
        # All but exact near-ties (distances equal to ~1e-6 of their mean) are one-hot.
        same = torch.isclose(soft.pseudo[level], hard, atol=1e-4).all(1)
        assert same.float().mean() >= 0.99
        assert (soft.probs[level].argmax(1) == codes[:, level]).float().mean() >= 0.99
    # Small alpha: every codeword gets weight (a soft mixture), rows sum to one.
    mild = cb.soft(items, alpha=0.1)
    assert (mild.probs[0] > 0.01).all() and torch.allclose(mild.probs[0].sum(1), torch.ones(200))


def test_encode_matches_a_plain_greedy_loop():
    torch.manual_seed(1)
    items = torch.randn(50, 1, 6)
    cb = ResidualCodebooks([4, 3, 2], 1, 6)
    cb.fit_kmeans(items)
    codes = cb.encode(items, chunk=7)
    for i in range(50):
        r = items[i, 0].clone()
        for level, cw in enumerate(cb.codewords):
            dists = [float(torch.linalg.norm(r - c)) for c in cw.detach()]
            j = int(np.argmin(dists))
            assert codes[i, level] == j
            r = r - cw.detach()[j]


def _learner(method: str, **kw):
    torch.manual_seed(0)
    model = RetrievalModel(ModelConfig(dim=8, scorer="mol"), 30, 60)
    cfg = dataclasses.replace(
        IndexConfig(method=method, levels=(6, 3), start_epoch=1, warmup_steps=4), **kw
    )
    return model, IndexLearner(cfg, model, steps_per_epoch=10, epochs=3, seed=0)


def _step_inputs(model):
    users = UserBatch.from_interactions(
        __import__("hirex.data.interactions", fromlist=["Interactions"]).Interactions.from_pairs(
            np.array([0, 1, 2, 3]), np.array([5, 6, 7, 8]), 30, 60
        ),
        np.arange(4),
    )
    u = model.encode_users(users)
    candidates = torch.arange(20)
    items = model.encode_items(candidates)
    scores = model.score(u, items)
    pos = torch.tensor([0, 1, 2, 3])
    return u, items, scores, candidates, pos


def test_schedules_and_no_index_loss_before_the_start_epoch():
    model, learner = _learner("joint")
    u, items, scores, cands, pos = _step_inputs(model)
    args = (u, None, items, scores, cands, pos, pos, torch.zeros(20), None)
    assert learner.loss(model, 0, 5, *args).item() == 0.0  # epoch 0 < start_epoch
    learner.epoch_start(model, 1)
    weights, alphas = zip(*[learner._t(e, s) for e in (1, 2) for s in range(10)], strict=True)
    assert weights[0] == 0.25 and weights[3:] == (1.0,) * 17  # linear warm-up over 4 steps
    assert alphas[0] == learner.cfg.alpha_min and list(alphas) == sorted(alphas)
    assert alphas[-1] > 0.8 * learner.cfg.alpha_max
    loss = learner.loss(model, 1, 5, *args)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    # Joint: user-side and item-side gradients reach the codewords and the level user maps.
    assert all(
        cw.grad is not None and cw.grad.abs().sum() > 0 for cw in learner.codebooks.codewords
    )
    assert learner.codebooks.user_maps[0].grad.abs().sum() > 0


def test_joint_initialises_once_em_refits_every_epoch():
    model, joint = _learner("joint")
    joint.epoch_start(model, 0)
    assert all(cw.abs().sum() == 0 for cw in joint.codebooks.codewords)  # not started yet
    joint.epoch_start(model, 1)
    first = [cw.detach().clone() for cw in joint.codebooks.codewords]
    with torch.no_grad():
        joint.codebooks.codewords[0].add_(1.0)  # as if training moved them
    joint.epoch_start(model, 2)
    assert torch.equal(joint.codebooks.codewords[0], first[0] + 1.0)  # kept, not refitted

    model, em = _learner("em")
    assert em.parameters() == list(em.codebooks.user_maps)  # codewords come from k-means
    em.epoch_start(model, 1)
    before = em.codebooks.codewords[0].detach().clone()
    with torch.no_grad():
        model.item_tower.id_emb.weight.mul_(-1.0)  # the M-step moved the items
    em.epoch_start(model, 2)
    assert not torch.allclose(em.codebooks.codewords[0], before)


def test_balance_regulariser_is_zero_for_even_use_and_grows_with_collapse():
    model, learner = _learner("joint", level_weight=0.0, align_weight=0.0, recon_weight=0.0)
    learner.epoch_start(model, 1)
    u, items, scores, cands, pos = _step_inputs(model)
    args = (u, None, items, scores, cands, pos, pos, torch.zeros(20), None)
    learner.mass = [torch.full((k,), 1.0 / k) for k in learner.cfg.levels]
    even = learner.loss(model, 2, 5, *args).item()
    learner.mass = [torch.eye(k)[0] for k in learner.cfg.levels]  # everything in node 0
    collapsed = learner.loss(model, 2, 5, *args).item()
    assert collapsed > even + 0.5
