"""The tower partitioner: planted groups recovered, balance kept, bad inputs refused."""

from __future__ import annotations

import numpy as np
import pytest

from hirex.data.ctr import SyntheticCtrConfig, make_synthetic_ctr
from hirex.distributed.partitioner import interaction_affinity, partition_towers


def block_affinity(groups, n, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    a = noise * rng.random((n, n))
    for g in groups:
        for i in g:
            for j in g:
                a[i, j] += 1.0
    a = (a + a.T) / 2
    np.fill_diagonal(a, 0)
    return a


def as_sets(groups):
    return sorted(sorted(g) for g in groups)


def test_recovers_planted_blocks_from_a_shuffled_order():
    rng = np.random.default_rng(1)
    perm = rng.permutation(12)
    groups = [perm[0:3].tolist(), perm[3:6].tolist(), perm[6:9].tolist(), perm[9:12].tolist()]
    a = block_affinity(groups, 12)
    plan = partition_towers(a, 4, imbalance=0.0)
    assert as_sets(plan.groups()) == as_sets(groups)
    planted_kept = sum(a[np.ix_(g, g)].sum() for g in groups) / a.sum()
    assert plan.kept == pytest.approx(planted_kept)


def test_balance_is_kept_when_it_conflicts_with_affinity():
    # one big group of 6 and two of 3, into 3 towers of equal size: the big group must split
    groups = [list(range(6)), [6, 7, 8], [9, 10, 11]]
    plan = partition_towers(block_affinity(groups, 12), 3, imbalance=0.0)
    assert np.all(plan.loads <= plan.bound + 1e-9)
    assert sorted(len(g) for g in plan.groups()) == [4, 4, 4]
    # the two small groups stay whole
    assert any({6, 7, 8} <= set(g) for g in plan.groups())
    assert any({9, 10, 11} <= set(g) for g in plan.groups())


def test_two_costs_bytes_and_lookups():
    groups = [[0, 1], [2, 3], [4, 5], [6, 7]]
    costs = np.array([[8, 1], [8, 1], [1, 4], [1, 4], [2, 2], [2, 2], [4, 1], [4, 1]], float)
    plan = partition_towers(block_affinity(groups, 8), 2, costs=costs, imbalance=0.25)
    assert np.all(plan.loads <= plan.bound + 1e-9)
    assert plan.loads.shape == (2, 2)
    for g in groups:  # pairs are never split when balance allows keeping them
        assert len({int(plan.towers[i]) for i in g}) == 1


def test_recovers_groups_from_the_synthetic_task_with_true_embeddings():
    cfg = SyntheticCtrConfig(n_samples=6000, n_tables=12, n_groups=3, group_size=3, seed=2)
    data, latent = make_synthetic_ctr(cfg)
    emb = latent[np.arange(cfg.n_tables), data.sparse]  # (N, F, r): the known answer
    aff = interaction_affinity(emb, data.labels)
    planted = [list(g) for g in data.planted_groups]
    inside = np.mean([aff[i, j] for g in planted for i in g for j in g if i != j])
    outside = np.mean(
        [aff[i, j] for i in range(12) for j in range(12) if i != j
         and not any(i in g and j in g for g in planted)]
    )  # fmt: skip
    assert inside > 5 * outside
    # 3 planted groups of 3 plus 3 distractors, into 3 towers of 4
    plan = partition_towers(aff, 3, imbalance=0.0)
    for g in planted:
        assert len({int(plan.towers[i]) for i in g}) == 1


def test_deterministic_and_bad_inputs():
    a = block_affinity([[0, 1], [2, 3]], 4)
    p1, p2 = partition_towers(a, 2, seed=3), partition_towers(a, 2, seed=3)
    assert np.array_equal(p1.towers, p2.towers)
    with pytest.raises(ValueError, match="square"):
        partition_towers(np.ones((2, 3)), 1)
    with pytest.raises(ValueError, match="n_towers = 5"):
        partition_towers(a, 5)
    with pytest.raises(ValueError, match="finite and >= 0"):
        partition_towers(np.full((2, 2), np.nan), 1)
    with pytest.raises(ValueError, match="labels are constant"):
        interaction_affinity(np.ones((5, 2, 3)), np.zeros(5))


@pytest.mark.parametrize("seed", [1, 4])
def test_recovers_groups_from_learned_dlrm_embeddings(seed):
    """End to end: train the DLRM on the synthetic task, read the affinity off its learned
    embeddings on held-out samples, partition: the planted groups share towers."""
    import torch

    from hirex.models.dlrm import DlrmTrainConfig, ctr_metrics, train_dlrm

    cfg = SyntheticCtrConfig(
        n_samples=200_000, n_tables=12, n_groups=3, group_size=3, table_size=200, seed=seed
    )
    data, _ = make_synthetic_ctr(cfg)
    train, held = data.split(0.2)
    model = train_dlrm(train, DlrmTrainConfig(epochs=1, dim=8, lr=0.01))
    assert ctr_metrics(model, held)["ne"] < 0.95
    with torch.no_grad():
        emb = model.embed(torch.from_numpy(held.sparse)).numpy()
    plan = partition_towers(interaction_affinity(emb, held.labels), 3, imbalance=0.0)
    for g in data.planted_groups:
        assert len({int(plan.towers[i]) for i in g}) == 1
