"""``hirex train --distributed``: 2 emulated hosts x 2 processes on 127.0.0.1 against
single-process training (the reference), a rank killed with SIGKILL then resumed, and the
configs it refuses. Every test starts real torchrun agents and checks none is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hirex.cli.main import main

from .processes import assert_none_left, processes_mentioning

pytestmark = pytest.mark.slow

TINY = [
    "--data",
    "synthetic",
    "--quiet",
    "--set",
    "data.synthetic_users=400",
    "--set",
    "data.synthetic_items=200",
    "--set",
    "train.num_negatives=64",
    "--set",
    "model.dim=16",
    "--set",
    "train.batch_size=256",
]
TWO_HOSTS = ["--distributed", "--nnodes", "2", "--nproc-per-node", "2"]


def _max_diff(a: Path, b: Path) -> float:
    """The largest difference between two files' tensors; for the spectral branch's factors
    (fitted by an SVD after training, values up to about 20, rounded differently on 1 thread
    than on 2), relative to their largest value and counted at a tenth."""
    ta, tb = load_file(str(a)), load_file(str(b))
    assert sorted(ta) == sorted(tb)
    diffs = []
    for k in ta:
        assert ta[k].shape == tb[k].shape, k
        if ta[k].numel() == 0:  # e.g. an unfitted spectral branch in a checkpoint
            continue
        d = float((ta[k].double() - tb[k].double()).abs().max())
        if k.startswith("spectral."):
            d = d / max(1.0, float(ta[k].double().abs().max())) / 10
        diffs.append(d)
    return max(diffs)


@pytest.mark.parametrize(
    "extra",
    [
        [],  # dot scorer, user ids + pooled history: no dense parameters, tables only
        ["--set", "model.scorer=mol", "--set", "train.history_dropout=0.2"],  # DDP'd gate
        # Refit on train + valid: its last batch (2,879 pairs mod 256 = 63 rows) splits
        # unevenly over 4 ranks; then the spectral branch, fitted on rank 0.
        ["--set", "train.refit=true", "--set", "model.spectral_rank=16"],
    ],
    ids=["dot", "mol", "refit-spectral"],
)
def test_four_processes_match_one(tmp_path, extra, capsys):
    args = [*TINY, "--set", "train.epochs=2", *extra]
    assert main(["train", *args, "--out", str(tmp_path / "one")]) == 0
    assert main(["train", *args, *TWO_HOSTS, "--out", str(tmp_path / "four")]) == 0
    out = capsys.readouterr().out
    assert "training on 4 processes (2 host(s) x 2)" in out
    # The same files, with the same weights and optimiser state up to float rounding.
    for name in ("model.safetensors", "checkpoint.safetensors"):
        assert _max_diff(tmp_path / "one" / name, tmp_path / "four" / name) < 1e-5
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    four = json.loads((tmp_path / "four" / "metrics.json").read_text())
    for split in ("valid", "test"):
        for metric, value in one[split].items():
            assert four[split][metric] == pytest.approx(value, abs=1e-4), (split, metric)
    assert_none_left(str(tmp_path))


def load_file_meta(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def _worker_pids(marker: str) -> list[int]:
    return [
        pid
        for pid in processes_mentioning(marker)
        if b"hirex.distributed.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        and b"torch.distributed.run" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


# Long enough (3 epochs of 39 steps) that a kill lands mid-run; a checkpoint every 5 steps.
KILLED = [
    *TINY,
    "--set",
    "train.epochs=3",
    "--set",
    "train.patience=10",
    "--set",
    "train.batch_size=64",
    "--set",
    "train.checkpoint_every=5",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    assert main(["train", *KILLED, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(
    ("first", "resume"),
    [("distributed", "distributed"), ("distributed", "single"), ("single", "distributed")],
)
def test_kill_then_resume(tmp_path, uninterrupted, first, resume):
    run = tmp_path / "run"
    spread = TWO_HOSTS if first == "distributed" else []
    cmd = [sys.executable, "-m", "hirex.cli.main", "train", *KILLED, *spread, "--out", str(run)]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 120
        while not (run / "checkpoint.safetensors").exists() and time.monotonic() < end:
            assert job.poll() is None, job.communicate()
            time.sleep(0.05)
        victims = _worker_pids(str(run)) if first == "distributed" else [job.pid]
        assert len(victims) == (4 if first == "distributed" else 1), victims
        os.kill(victims[-1], signal.SIGKILL)  # one rank of four, or the single process
        _, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    if first == "distributed":
        assert job.returncode == 1, err[-3000:]
        assert "a training process failed" in err and "resumes from it" in err
    else:
        assert job.returncode == -signal.SIGKILL
    assert_none_left(str(run))
    state = json.loads(load_file_meta(run / "checkpoint.safetensors")["state"])
    assert not state["done"] and (state["epoch"], state["step"]) != (0, 0)
    # Rerun: resumes from the checkpoint and ends where the uninterrupted run ended.
    again = [*KILLED, "--out", str(run)] + (TWO_HOSTS if resume == "distributed" else [])
    assert main(["train", *again]) == 0
    assert _max_diff(uninterrupted / "model.safetensors", run / "model.safetensors") < 1e-5
    assert_none_left(str(run))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "model.user_encoder=transformer", *TWO_HOSTS], "transformer user encoder"),
        (["--set", "index.method=joint", *TWO_HOSTS], "index.method = 'joint'"),
        (["--set", "train.examples=users", *TWO_HOSTS], "train.examples = 'users'"),
        (["--nnodes", "2"], "need --distributed"),
        (["--distributed", "--nproc-per-node", "0"], "must be at least 1"),
        (["--distributed", "--rdzv-endpoint", "nohost"], "HOST:PORT"),
        (["--set", "train.init_from='no.safetensors'", *TWO_HOSTS], "train.init_from: no.safe"),
    ],
)
def test_refused_before_anything_starts(tmp_path, extra, message, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not out.exists()


def test_table_lookups_match_nn_embedding():
    """ShardedTable (one process, gloo) against nn.Embedding / F.embedding_bag."""
    code = """
import os, torch, torch.distributed as dist, torch.nn.functional as F
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.sharding_plan import construct_module_sharding_plan, row_wise
from torchrec.distributed.types import ShardingEnv, ShardingPlan
from hirex.distributed.tables import TABLE, ShardedTable, gather_rows
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d", rank=0, world_size=1)
torch.manual_seed(0)
ref = torch.nn.Embedding(7, 3)
wrap = torch.nn.Module(); wrap.t = ShardedTable(7, 3)
plan = construct_module_sharding_plan(
    wrap.t.ebc, per_param_sharding={TABLE: row_wise(compute_kernel="dense")},
    local_size=1, world_size=1, device_type="cpu")
dmp = DistributedModelParallel(
    wrap, device=torch.device("cpu"), plan=ShardingPlan({"t.ebc": plan}),
    env=ShardingEnv.from_process_group(dist.group.WORLD))
first, rows, _ = wrap.t.local_shard()
with torch.no_grad(): rows.copy_(ref.weight[first:first + len(rows)])
ids = torch.tensor([[3, 0], [6, 6]])
assert torch.allclose(wrap.t(ids), ref(ids), atol=1e-6)
values, indptr = torch.tensor([1, 2, 2, 5]), torch.tensor([0, 3, 3, 4])
want = F.embedding_bag(values, ref.weight, indptr[:-1], mode="sum")
assert torch.allclose(wrap.t.bag_sum(values, indptr), want, atol=1e-6)
assert torch.equal(gather_rows(rows, first, 7), ref.weight.detach())
print("ok")
dist.destroy_process_group()
os._exit(0)
"""
    from hirex.distributed.launch import free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code % free_port()],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


def test_shard_tables_takes_every_id_table():
    """A table that shard_tables missed would stay whole on every rank, unsharded."""
    from hirex.config import ModelConfig
    from hirex.distributed.tables import TABLES, ShardedTable, shard_tables
    from hirex.models.retrieval_model import RetrievalModel

    model = RetrievalModel(ModelConfig(dim=4, use_user_id=True), 5, 6)
    tables = shard_tables(model)
    assert sorted(tables) == sorted(TABLES)
    assert not [n for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding)]
    assert all(isinstance(model.get_submodule(p), ShardedTable) for p in TABLES)
    assert tables["user_tower.id_emb"].num_embeddings == 5
