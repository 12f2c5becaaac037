"""Test-time training: mining from the index, fine-tuning, the refreshed index, the CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from hirex.config import RunConfig, apply_overrides
from hirex.data.interactions import Dataset, Interactions
from hirex.index.build import build_index
from hirex.train.trainer import train_model
from hirex.ttt.finetune import test_time_train as run_ttt
from hirex.ttt.finetune import training_pairs
from hirex.ttt.mining import interest_rates, mine

FAST = [
    "train.epochs=2",
    "train.num_negatives=64",
    "model.dim=16",
    "index.method='posthoc'",
    "index.levels=[6,4]",
]


@pytest.fixture(scope="module")
def trained(tiny_set_data):
    ds, _ = tiny_set_data
    cfg = apply_overrides(RunConfig(), FAST)
    torch.manual_seed(0)
    result = train_model(cfg, ds, None, progress=False)
    return cfg, ds, result.model, build_index(result.model, cfg.index)


def _loop(cfg, ds, model, **kwargs):
    """The fine-tuning loop itself, started from ``model``'s weights, on CPU, no checkpoints."""
    from hirex.train.trainer import CHECKPOINT, _Loop

    init = {k: v.clone() for k, v in model.state_dict().items()}
    return _Loop(
        cfg, ds, ds.train, None, CHECKPOINT, torch.device("cpu"), False, init=init, **kwargs
    )


def test_interest_rates_match_a_plain_loop(trained):
    cfg, ds, model, index = trained
    users = np.arange(20)
    level = 2
    keys = index.levels[level - 1].keys
    rng = np.random.default_rng(0)
    nodes = rng.integers(-1, len(keys), size=(20, 5))
    got = interest_rates(index, ds.train, users, nodes, level)
    codes = index.codes.numpy()
    for r, u in enumerate(users):
        items = ds.train.user_items(u)
        for c, node in enumerate(nodes[r]):
            if node < 0:
                assert got[r, c] == 0
                continue
            path = index._keys_to_codes(keys[node : node + 1], level - 1)[0]
            under = sum(np.array_equal(codes[i, :level], path) for i in items)
            assert got[r, c] == pytest.approx(under / len(items))


def test_mining_keeps_pairs_above_the_threshold_on_the_beam_path(trained):
    cfg, ds, model, index = trained
    low = mine(model, index, ds.train, depth=1, threshold=0.2, beam=3)
    high = mine(model, index, ds.train, depth=1, threshold=0.6, beam=3)
    assert len(high.users) < len(low.users) and (high.rates >= 0.6).all()
    assert (low.rates >= 0.2).all() and len(low.users) > 0
    # Each pair's target is its node's representative item, which lies under that node.
    reps = index.levels[0].representative[low.nodes]
    assert np.array_equal(reps, low.items)
    assert np.array_equal(index.codes.numpy()[low.items, 0], index.levels[0].keys[low.nodes])
    # At most beam-width pairs per user, each node once.
    pairs = set(zip(low.users.tolist(), low.nodes.tolist(), strict=True))
    assert len(pairs) == len(low.users)
    assert np.bincount(low.users).max() <= 3
    deep = mine(model, index, ds.train, depth=2, threshold=0.2, beam=3)
    assert deep.pairs_per_level[1] == len(low.users) and deep.depth == 2
    # The node-centred subset: training interactions with representative items only.
    reps_all = np.concatenate([lv.representative for lv in index.levels[:2]])
    assert np.isin(deep.node_centred.items, reps_all).all()
    assert deep.node_centred.nnz <= ds.train.nnz


def test_mining_never_reads_the_test_split(trained):
    cfg, ds, model, index = trained
    rng = np.random.default_rng(1)
    fake_test = Interactions.from_pairs(
        rng.integers(0, ds.n_users, 500), rng.integers(0, ds.n_items, 500), ds.n_users, ds.n_items
    )
    other = dataclasses.replace(ds, test=fake_test)
    assert isinstance(other, Dataset)
    a = mine(model, index, ds.train, 2, 0.2, 3)
    b = mine(model, index, other.train, 2, 0.2, 3)
    assert np.array_equal(a.users, b.users) and np.array_equal(a.items, b.items)
    assert np.array_equal(a.node_centred.items, b.node_centred.items)
    # The node-centred subset is a subset of the training interactions, never test ones.
    train_pairs = set(zip(ds.train.users().tolist(), ds.train.items.tolist(), strict=True))
    centred = zip(a.node_centred.users().tolist(), a.node_centred.items.tolist(), strict=True)
    assert set(centred) <= train_pairs


def test_training_pairs_mix_mined_centred_and_replay(trained):
    cfg, ds, model, index = trained
    mined = mine(model, index, ds.train, 1, 0.3, 3)
    none = training_pairs(mined, ds.train, 0.0, seed=0)
    assert none.nnz == len(mined.users) + mined.node_centred.nnz
    more = training_pairs(mined, ds.train, 2.0, seed=0)
    assert more.nnz == none.nnz + min(2 * none.nnz, ds.train.nnz)
    only = training_pairs(mined, ds.train, 0.0, seed=0, node_centred=False)
    assert only.nnz == len(mined.users)


def test_replay_control_has_as_many_ordinary_training_pairs(trained):
    cfg, ds, model, index = trained
    mined = mine(model, index, ds.train, 1, 0.3, 3)
    for replay in (0.0, 1.0):
        mixed = training_pairs(mined, ds.train, replay, seed=0)
        control = training_pairs(mined, ds.train, replay, seed=0, data="replay")
        assert control.nnz == mixed.nnz
        train_pairs = set(zip(ds.train.users().tolist(), ds.train.items.tolist(), strict=True))
        got = set(zip(control.users().tolist(), control.items.tolist(), strict=True))
        assert got <= train_pairs
    mined_pairs = set(zip(mined.users.tolist(), mined.items.tolist(), strict=True))
    assert not mined_pairs <= train_pairs  # the mined data holds pairs the control cannot


def test_ttt_never_ends_worse_on_validation_and_refreshes_the_index(trained, tmp_path):
    cfg, ds, model, index = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    c = apply_overrides(cfg, ["ttt.threshold=0.2", "ttt.epochs=1", "ttt.lr=0.01"])
    from hirex.eval.protocols import evaluate

    start = evaluate(model, ds, "valid").metrics["recall@20"]
    res = run_ttt(c, ds, model, index, tmp_path, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    assert evaluate(res.model, ds, "valid").metrics["recall@20"] >= start - 1e-9
    res.index.check()
    assert res.index.codebooks is index.codebooks
    for a, b in zip(res.index.node_keys, index.node_keys, strict=True):
        assert np.isin(b, a).all()  # every node survives the refresh


def test_user_side_ttt_keeps_the_items_and_trains_the_users(trained):
    cfg, ds, model, index = trained
    start = {k: v.clone() for k, v in model.state_dict().items()}
    c = apply_overrides(cfg, ["train.lr=0.01"])
    loop = _loop(c, ds, model, frozen=("item_tower.",))
    for step in range(3):  # a few optimiser steps of the fine-tuning loop itself
        loss = loop._loss(0, step)
        loop.optimizer.zero_grad()
        loss.backward()
        loop.optimizer.step()
    tuned = loop.model.state_dict()
    changed = {k for k in start if not torch.equal(start[k], tuned[k])}
    assert changed and all(not k.startswith("item_tower.") for k in changed)
    # Through TTT: the items keep their embeddings and so their paths in the index.
    c2 = apply_overrides(cfg, ["ttt.threshold=0.2", "ttt.epochs=1", "ttt.params='user'"])
    res = run_ttt(c2, ds, model, index, None, progress=False)
    after = res.model.state_dict()
    assert all(torch.equal(start[k], after[k]) for k in start if k.startswith("item_tower."))
    assert torch.equal(res.index.codes, index.codes)


def test_node_target_moves_mined_pairs_off_the_items_and_rate_weights_them(trained):
    from hirex.ttt.finetune import node_targets

    cfg, ds, model, index = trained
    mined = mine(model, index, ds.train, 1, 0.3, 3)
    assert len(mined.users) > 0 and mined.rates.std() > 0
    node = training_pairs(mined, ds.train, 0.0, seed=0, target="node")
    assert node.nnz == mined.node_centred.nnz and node.weights is None
    rated = training_pairs(mined, ds.train, 1.0, seed=0, weight="rate")
    item = training_pairs(mined, ds.train, 1.0, seed=0)
    assert rated.nnz == item.nnz and item.weights is None
    # Each mined pair weighs its rate over the mean rate; the other pairs weigh 1.
    assert rated.weights.sum() == pytest.approx(rated.nnz, rel=1e-5)
    want = np.concatenate([mined.rates / mined.rates.mean(), np.ones(rated.nnz - len(mined.rates))])
    assert np.allclose(np.sort(rated.weights), np.sort(want), rtol=1e-5)
    # Those weights sit on the mined pairs: a pair's weight is its rate over the mean rate.
    rate = dict(
        zip(
            zip(mined.users.tolist(), mined.items.tolist(), strict=True),
            mined.rates / mined.rates.mean(),
            strict=True,
        )
    )
    pairs = zip(rated.users().tolist(), rated.items.tolist(), rated.weights.tolist(), strict=True)
    assert all(w == 1.0 or w == pytest.approx(rate[(u, i)], rel=1e-5) for u, i, w in pairs)
    t = node_targets(mined, index, "rate")
    assert np.array_equal(t.targets, mined.nodes) and t.emb.shape[0] == len(index.levels[0].keys)
    assert t.weights.mean() == pytest.approx(1.0)


def test_node_target_loss_is_the_softmax_over_the_level_nodes(trained):
    from hirex.models.user_batch import UserBatch
    from hirex.ttt.finetune import node_targets

    cfg, ds, model, index = trained
    mined = mine(model, index, ds.train, 1, 0.3, 3)
    targets = node_targets(mined, index, "rate")
    c = apply_overrides(cfg, ["train.lr=0.05", "train.bf16=false", "train.batch_size=64"])
    pairs = training_pairs(mined, ds.train, 1.0, seed=0, target="node")
    loop = _loop(c, ds, model, pairs=pairs, fixed_targets=targets)
    # Every example is in exactly one step of an epoch.
    steps = len(loop.batches)
    assert steps > 1

    # The reference: a plain weighted cross-entropy over the level's node scores, all users.
    def reference(m):
        u = m.encode_users(UserBatch.from_interactions(ds.train, targets.users))
        scores = m.score(index.codebooks.map_user(u, 0), targets.emb).float()
        ce = torch.nn.functional.cross_entropy(
            scores, torch.from_numpy(targets.targets), reduction="none"
        )
        return float(
            (ce * torch.from_numpy(targets.weights)).sum().detach() / targets.weights.sum()
        )

    with torch.no_grad():
        per_step = [float(loop._fixed_loss(0, step)) for step in range(steps)]
    order = np.random.default_rng([c.train.seed + 2, 0]).permutation(len(targets.users))
    per = -(-len(targets.users) // steps)
    chunks = [order[step * per : (step + 1) * per] for step in range(steps)]
    assert np.array_equal(np.sort(np.concatenate(chunks)), np.arange(len(targets.users)))
    w = targets.weights
    total = sum(value * w[chunk].sum() for value, chunk in zip(per_step, chunks, strict=True))
    assert total / w.sum() == pytest.approx(reference(loop.model), rel=1e-4)
    # Training on the node targets alone raises the mined nodes' probability.
    before = reference(loop.model)
    for step in range(steps):
        loss = loop._fixed_loss(0, step)
        loop.optimizer.zero_grad()
        loss.backward()
        loop.optimizer.step()
    assert reference(loop.model) < before - 0.01


def test_weighted_pairs_reduce_to_the_mean_when_weights_are_equal(trained):
    cfg, ds, model, index = trained
    c = apply_overrides(cfg, ["train.bf16=false"])
    pairs = ds.train

    def loss(weights):
        p = Interactions(pairs.n_users, pairs.n_items, pairs.indptr, pairs.items, weights)
        loop = _loop(c, ds, model, pairs=p)
        with torch.no_grad():
            return float(loop._loss(0, 0))

    plain = loss(None)
    assert loss(np.full(pairs.nnz, 3.0, np.float32)) == pytest.approx(plain, rel=1e-5)
    rng = np.random.default_rng(0)
    assert loss(rng.random(pairs.nnz).astype(np.float32)) != pytest.approx(plain, rel=1e-4)
    with pytest.raises(ValueError, match="finite and >= 0"):
        loss(np.full(pairs.nnz, -1.0, np.float32))


def test_ttt_selected_through_the_index_never_ends_worse_there(trained):
    from hirex.eval.protocols import evaluate_index

    cfg, ds, model, index = trained
    c = apply_overrides(
        cfg,
        [
            "ttt.threshold=0.2",
            "ttt.epochs=2",
            "ttt.lr=0.01",
            "ttt.target='node'",
            "ttt.weight='rate'",
            "ttt.select='index'",
            "ttt.select_users=150",
            "index.beam=[2]",
        ],
    )
    start = evaluate_index(model, index, ds, "valid", beam=(2,), max_users=150).metrics
    res = run_ttt(c, ds, model, index, None, progress=False)
    # The mined pairs train against the nodes, on top of the (user, item) pairs.
    assert (
        res.n_pairs
        == len(res.mined.users)
        + training_pairs(res.mined, ds.train, c.ttt.replay, 0, target="node").nnz
    )
    after = evaluate_index(res.model, res.index, ds, "valid", beam=(2,), max_users=150).metrics
    assert after["recall@20"] >= start["recall@20"] - 1e-9
    assert len(res.training.epochs) >= 1


def test_nothing_to_mine_is_a_clear_error(trained):
    cfg, ds, model, index = trained
    empty = dataclasses.replace(ds, train=Interactions.empty(ds.n_users, ds.n_items))
    with pytest.raises(ValueError, match="nothing mined.*lower ttt.threshold"):
        run_ttt(cfg, empty, model, index, progress=False)
    with pytest.raises(ValueError, match="levels 1..2"):
        mine(model, index, ds.train, depth=3, threshold=0.5)


def test_hirex_ttt_writes_a_run_with_its_index(tmp_path, capsys):
    from hirex.cli.main import main

    run = tmp_path / "run"
    small = [
        "--data",
        "synthetic",
        "--quiet",
        "--set",
        "data.synthetic_users=400",
        "--set",
        "data.synthetic_items=200",
    ] + [x for s in FAST for x in ("--set", s)]
    assert main(["train", *small, "--out", str(run)]) == 0
    out = tmp_path / "ttt"
    argv = ["ttt", "--run", str(run), "--out", str(out), "--quiet", "--set", "ttt.threshold=0.2"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "(user, node) pairs" in text and "users covered" in text
    report = json.loads((out / "ttt.json").read_text())
    assert report["mined"]["pairs"] > 0
    assert set(report["after"]) == {"valid", "test"}
    assert main(["eval", "--run", str(out), "--index", "--beam", "2"]) == 0
    assert main(["ttt", "--run", str(run), "--out", str(run)]) == 2
    assert "new folder" in capsys.readouterr().err
    assert main(["ttt", "--run", str(run), "--out", str(out), "--set", "train.lr=1"]) == 2
    assert "only takes [ttt] overrides" in capsys.readouterr().err


def test_refresh_keeps_the_paths_of_items_whose_embedding_did_not_change(trained):
    from hirex.ttt.finetune import refresh_index

    cfg, ds, model, _ = trained
    # Hierarchical k-means paths: descending the nearest centroids does not give every item
    # the path k-means gave it, so re-assigning unchanged items would move some.
    index = build_index(
        model, dataclasses.replace(cfg.index, kmeans="hierarchical", levels=(3, 3, 3))
    )
    assert not torch.equal(index.paths_for(index.item_emb), index.codes)
    same_model = refresh_index(index, model)  # an unchanged model: the same paths, a copy
    assert same_model is not index and torch.equal(same_model.codes, index.codes)
    assert same_model.codes.data_ptr() != index.codes.data_ptr()
    moved = model.__class__(model.cfg, model.n_users, model.n_items)
    moved.load_state_dict(model.state_dict())
    with torch.no_grad():
        w = moved.item_tower.id_emb.weight
        w[5] = w[200]  # item 5 now sits where item 200 is
    fresh = refresh_index(index, moved)
    same = np.ones(ds.n_items, bool)
    same[5] = False
    assert torch.equal(fresh.codes[torch.from_numpy(same)], index.codes[torch.from_numpy(same)])
    assert torch.equal(fresh.codes[5], index.paths_for(fresh.item_emb[5:6])[0])
