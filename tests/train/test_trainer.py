import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hirex.config import ConfigError, RunConfig, apply_overrides, config_to_dict
from hirex.eval.protocols import evaluate, evaluate_ranker
from hirex.models.baselines import Popularity
from hirex.runs import prepare_run_dir
from hirex.train.trainer import same_config, train_model

FAST = [
    "train.epochs=4",
    "train.batch_size=256",
    "train.lr=0.005",
    "train.num_threads=1",
    "model.dim=32",
    "train.num_negatives=128",
]


def _cfg(*extra: str) -> RunConfig:
    return apply_overrides(RunConfig(), FAST + list(extra))


def test_learns_far_better_than_popularity(tiny_set_data):
    ds, _ = tiny_set_data
    result = train_model(_cfg(), ds, progress=False)
    model_recall = evaluate(result.model, ds, "test").metrics["recall@20"]
    pop_recall = evaluate_ranker(Popularity(ds.train), ds, "test").metrics["recall@20"]
    assert model_recall > 2 * pop_recall, (model_recall, pop_recall)
    assert len(result.epochs) >= 1 and "recall@20" in result.best_valid


@pytest.mark.parametrize(
    "extra",
    [
        ['train.loss="softmax"'],
        ['train.loss="ccl"', "train.lr=0.01"],
        ['model.scorer="mol"'],
        ['train.negative_sampling="popularity"', "train.in_batch_negatives=false"],
        ["train.history_dropout=0.2"],
        ['model.user_encoder="none"', "train.epochs=8", "train.lr=0.02"],
    ],
)
def test_every_loss_and_scorer_learns(tiny_set_data, extra):
    ds, _ = tiny_set_data
    result = train_model(_cfg("train.epochs=3", *extra), ds, progress=False)
    pop = evaluate_ranker(Popularity(ds.train), ds, "test").metrics["recall@20"]
    assert evaluate(result.model, ds, "test").metrics["recall@20"] > 1.5 * pop


def test_sequence_model_learns_next_item(tiny_sequence_data):
    ds, _ = tiny_sequence_data
    cfg = _cfg(
        'model.user_encoder="transformer"',
        "model.use_user_id=false",
        "model.max_history=10",
        "train.epochs=4",
        'train.loss="softmax"',
        "train.batch_size=64",
    )
    result = train_model(cfg, ds, progress=False)
    ev = evaluate(result.model, ds, "test")
    pop = evaluate_ranker(Popularity(ds.train), ds, "test")
    assert set(ev.metrics) >= {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    assert ev.metrics["ndcg@10"] > 1.5 * pop.metrics["ndcg@10"]


def test_same_seed_same_model(tiny_set_data):
    ds, _ = tiny_set_data
    a = train_model(_cfg("train.epochs=2"), ds, progress=False)
    b = train_model(_cfg("train.epochs=2"), ds, progress=False)
    c = train_model(_cfg("train.epochs=2", "train.seed=1"), ds, progress=False)
    for name, tensor in a.model.state_dict().items():
        assert (tensor == b.model.state_dict()[name]).all(), name
    assert a.best_valid == b.best_valid and a.best_valid != c.best_valid


def test_refit_trains_on_train_plus_valid(tiny_set_data, tmp_path):
    ds, _ = tiny_set_data
    result = train_model(_cfg("train.epochs=2", "train.refit=true"), ds, tmp_path, progress=False)
    # The validation phase's epochs, then best_epoch + 1 refit epochs without validation.
    assert [("valid" in e) for e in result.epochs] == [True, True] + [False] * (
        result.best_epoch + 1
    )
    assert (tmp_path / "checkpoint-refit.safetensors").exists()


def test_checkpoint_of_another_config_is_refused(tiny_set_data, tmp_path):
    ds, _ = tiny_set_data
    prepare_run_dir(_cfg("train.epochs=1"), tmp_path, restart=False)
    train_model(_cfg("train.epochs=1"), ds, tmp_path, progress=False)
    with pytest.raises(ValueError, match="another config"):
        prepare_run_dir(_cfg("train.epochs=1", "train.lr=0.1"), tmp_path, restart=False)
    with pytest.raises(ConfigError, match="another config"):
        train_model(_cfg("train.epochs=1", "train.lr=0.1"), ds, tmp_path, progress=False)
    prepare_run_dir(_cfg("train.epochs=1", "train.lr=0.1"), tmp_path, restart=True)


def test_checkpoint_config_written_before_a_new_field_still_resumes():
    cfg = _cfg("train.epochs=1")
    saved = config_to_dict(cfg)
    del saved["index"]["node_embedding"]  # as written before the field existed (its default)
    assert same_config(saved, cfg)
    assert not same_config(saved, _cfg("train.epochs=1", 'index.node_embedding="codewords"'))
    assert not same_config({**saved, "unknown_section": {}}, cfg)


def _train_cmd(out: Path, extra: tuple[str, ...] = ()) -> list[str]:
    sets = (
        FAST
        + list(extra)
        + [
            "train.epochs=3",
            "train.checkpoint_every=3",
            "data.synthetic_users=1500",
            "data.synthetic_items=400",
            "train.patience=5",
        ]
    )
    cmd = [
        sys.executable,
        "-m",
        "hirex.cli.main",
        "train",
        "--data",
        "synthetic",
        "--quiet",
        "--out",
        str(out),
    ]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _checkpoint_position(path: Path) -> tuple[int, int]:
    """(epoch, step) of a checkpoint, (0, 0) while it is unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            state = json.loads(f.metadata()["state"])
            return state["epoch"], state["step"]
    except Exception:
        return 0, 0


# The index variant is killed in its second epoch, after the codebooks joined the checkpoint.
@pytest.mark.parametrize(
    "extra, kill_epoch",
    [
        ((), 0),
        (("index.method='joint'", "index.levels=[8,4]", "index.start_epoch=1"), 1),
        (("index.method='em'", "index.levels=[8,4]", "index.start_epoch=1"), 1),
    ],
    ids=["model", "joint-index", "em-index"],
)
def test_kill_minus_nine_mid_epoch_then_resume_matches_uninterrupted(tmp_path, extra, kill_epoch):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    # The uninterrupted reference runs beside the one to be killed: the two start up together.
    log = (tmp_path / "reference.log").open("w")
    reference = subprocess.Popen(
        _train_cmd(full, extra), env=env, stdout=subprocess.DEVNULL, stderr=log
    )
    proc = subprocess.Popen(
        _train_cmd(killed, extra), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt = killed / "checkpoint.safetensors"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        epoch, step = _checkpoint_position(ckpt) if ckpt.exists() else (0, 0)
        if epoch == kill_epoch and step > 0:  # a mid-epoch checkpoint exists
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed mid-epoch"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        reference.wait(timeout=300)
    finally:
        reference.kill()  # a no-op once it has ended
        log.close()
    assert reference.returncode == 0, (tmp_path / "reference.log").read_text()[-3000:]
    assert not (killed / "metrics.json").exists()
    resumed = subprocess.run(_train_cmd(killed, extra), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    assert [e["loss"] for e in a["epochs"]] == pytest.approx([e["loss"] for e in b["epochs"]])
    assert np.isfinite(a["test"]["recall@20"])
    if extra:
        assert a["index"]["test"] == b["index"]["test"]


def test_user_target_batches_split_each_user(tiny_set_data):
    from hirex.train.batches import UserTargetBatches

    ds, _ = tiny_set_data
    batches = UserTargetBatches(ds.train, 50, seed=0, target_fraction=0.5)
    b = batches.batch(epoch=0, step=1)
    users = b.users.users.numpy()
    lengths = b.users.lengths.numpy()
    rows, items = b.target_rows.numpy(), b.target_items.numpy()
    for r, u in enumerate(users):
        inputs = set(
            b.users.hist_items[b.users.hist_indptr[r] : b.users.hist_indptr[r + 1]].tolist()
        )
        targets = set(items[rows == r].tolist())
        assert lengths[r] >= 1 and targets, "each user keeps an input and gets a target"
        assert not inputs & targets and inputs | targets == set(ds.train.user_items(u).tolist())
    again = batches.batch(epoch=0, step=1)
    assert (again.target_items == b.target_items).all(), "batches depend only on (epoch, step)"


@pytest.mark.parametrize("loss", ["softmax", "sampled_softmax"])
def test_user_level_denoising_training_learns(tiny_set_data, loss):
    ds, _ = tiny_set_data
    cfg = _cfg(
        'train.examples="users"',
        f'train.loss="{loss}"',
        "train.batch_size=64",
        "train.bf16=true",
        "model.history_projection=true",
        "model.user_init_std=0.0",
    )
    result = train_model(cfg, ds, progress=False)
    pop = evaluate_ranker(Popularity(ds.train), ds, "test").metrics["recall@20"]
    assert evaluate(result.model, ds, "test").metrics["recall@20"] > 2 * pop


def test_no_validation_targets_is_a_clear_error(tiny_set_data):
    import dataclasses

    from hirex.data.interactions import Interactions

    ds, _ = tiny_set_data
    empty = dataclasses.replace(ds, valid=Interactions.empty(ds.n_users, ds.n_items))
    with pytest.raises(ValueError, match="valid_per_user"):
        train_model(_cfg(), empty, progress=False)


def test_spectral_branch_is_attached_after_training(tiny_set_data, tmp_path):
    ds, _ = tiny_set_data
    cfg = _cfg("train.epochs=1", "model.spectral_rank=16", "model.use_user_id=false")
    result = train_model(cfg, ds, tmp_path, progress=False)
    assert result.model.spectral is not None and result.model.spectral.active
    # The reported validation metrics are those of the model with the branch.
    again = evaluate(result.model, ds, "valid").metrics["recall@20"]
    assert result.best_valid["recall@20"] == pytest.approx(again)
    assert result.best_valid["recall@20"] != result.epochs[result.best_epoch]["valid"]["recall@20"]


def test_a_finished_run_resumed_at_another_branch_weight_only_refits_the_branch(
    tiny_set_data, tmp_path
):
    ds, _ = tiny_set_data
    base = ("train.epochs=1", "model.spectral_rank=16", "model.use_user_id=false")
    first = train_model(_cfg(*base), ds, tmp_path, progress=False)
    items = first.model.spectral.items.clone()
    learned = {k: v.clone() for k, v in first.model.state_dict().items() if "spectral" not in k}
    again = train_model(_cfg(*base, "model.spectral_weight=6.0"), ds, tmp_path, progress=False)
    # Not trained again: the recorded epochs and the same learned weights.
    assert again.epochs == first.epochs and len(again.epochs) == 1
    assert again.train_seconds == pytest.approx(first.train_seconds, abs=0.1)
    for k, v in again.model.state_dict().items():
        if "spectral" not in k:
            assert torch.equal(v, learned[k]), k
    # The branch is scaled linearly in its weight: 6 against the default 3.
    assert torch.allclose(again.model.spectral.items, 2 * items, rtol=1e-5, atol=1e-6)
    assert again.best_valid != first.best_valid
    # Any field that shapes training still refuses the checkpoint.
    with pytest.raises(ConfigError, match="another config"):
        train_model(_cfg(*base, "train.lr=0.001"), ds, tmp_path, progress=False)


def test_fine_tuning_can_resume_the_training_optimizer(tiny_set_data, tmp_path):
    import torch

    from hirex.train.checkpoint import read_checkpoint
    from hirex.train.trainer import CHECKPOINT, _Loop

    ds = tiny_set_data[0]
    cfg = _cfg("train.epochs=2")
    result = train_model(cfg, ds, tmp_path, progress=False)
    _, opt_state, _ = read_checkpoint(tmp_path / CHECKPOINT)
    tuned = apply_overrides(cfg, ["train.lr=0.001"])
    init = {k: v.clone() for k, v in result.model.state_dict().items()}

    def loop_of(cfg, **extra):  # noqa: ANN001, ANN202
        return _Loop(cfg, ds, ds.train, None, "unused", torch.device("cpu"), False, **extra)

    loop = loop_of(tuned, init=init, optimizer_state=opt_state)
    steps = {float(s["step"]) for s in loop.optimizer.state.values()}
    assert steps == {float(opt_state["state"][0]["step"])} and min(steps) > 0  # continued
    assert loop.optimizer.param_groups[0]["lr"] == 0.001  # this config's rate, not the saved
    moment = loop.optimizer.state[next(loop.model.parameters())]["exp_avg_sq"]
    assert torch.equal(moment, opt_state["state"][0]["exp_avg_sq"])
    with pytest.raises(ValueError, match="does not fit this model"):
        loop_of(apply_overrides(tuned, ["model.dim=16"]), optimizer_state=opt_state)


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_native_bfloat16_warns(tiny_set_data, monkeypatch, caplog, native):
    from hirex.train.trainer import CHECKPOINT, _Loop

    ds, _ = tiny_set_data
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    cfg = apply_overrides(RunConfig(), ["train.bf16=true", "model.dim=8"])
    with caplog.at_level(logging.WARNING, logger="hirex.train.trainer"):
        _Loop(cfg, ds, ds.train, None, CHECKPOINT, torch.device("cpu"), False)
    warned = [r.getMessage() for r in caplog.records if "train.bf16" in r.getMessage()]
    assert bool(warned) is not native
    if warned:
        assert "set train.bf16 = false" in warned[0]
