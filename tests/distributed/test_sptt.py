"""SPTT on TorchRec's EmbeddingTowerCollection: with identity towers its logits and every
gradient equal the flat model's, on 2 emulated hosts x 2 ranks (real processes, 127.0.0.1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

torchrec = pytest.importorskip("torchrec")

from hirex.distributed.launch import LaunchConfig, launch  # noqa: E402
from hirex.distributed.sptt import TowerDLRM, sharding_plan  # noqa: E402

from .processes import processes_mentioning  # noqa: E402


def run_worker(task: str, out: Path, *args: str) -> dict:
    rc = launch(
        LaunchConfig(nnodes=2, nproc_per_node=2, timeout_s=60),
        "hirex.distributed.dmt_worker",
        [task, "--out", str(out), *args],
        timeout_s=90,
    )
    assert rc == 0
    assert processes_mentioning(str(out)) == []  # no worker or agent left behind
    return json.loads(out.read_text())


@pytest.mark.slow
def test_sptt_with_identity_towers_equals_the_flat_model(tmp_path):
    r = run_worker("exact", tmp_path / "exact.json")
    assert r["world_size"] == 4 and r["local_world_size"] == 2
    # the gradients are large enough for 1e-5 to mean something
    assert r["max_abs_table_grad"] > 1e-3 and r["max_abs_grad"] > 1e-2
    for name in ("flat_table_wise", "flat_row_wise", "sptt"):
        assert r[f"{name}_vs_reference_logits"] <= 1e-5
        assert r[f"{name}_vs_reference_grads"] <= 1e-5
    assert r["sptt_max_abs_diff"] <= 1e-5


def test_unsharded_sptt_with_identity_towers_equals_flat():
    torch.manual_seed(0)
    flat = TowerDLRM((20,) * 6, 3, dim=4)
    sptt = TowerDLRM((20,) * 6, 3, dim=4, towers=[[4, 0, 2], [1, 3, 5]])
    sptt.load_state_dict(
        {k.replace("sparse.embedding_bags", _tower_key(k)): v for k, v in flat.state_dict().items()}
    )
    dense, sparse = torch.randn(7, 3), torch.randint(0, 20, (7, 6))
    torch.testing.assert_close(sptt(dense, sparse), flat(dense, sparse))
    # a different tower split with the same weights is still the same function
    other = TowerDLRM((20,) * 6, 3, dim=4, towers=[[5, 1], [0, 2, 3, 4]])
    other.load_state_dict(
        {
            k.replace("sparse.embedding_bags", _tower_key(k, [[1, 5], [0, 2, 3, 4]])): v
            for k, v in flat.state_dict().items()
        }
    )
    torch.testing.assert_close(other(dense, sparse), flat(dense, sparse))


def _tower_key(key: str, towers=([0, 2, 4], [1, 3, 5])) -> str:
    if "embedding_bags" not in key:
        return "sparse.embedding_bags"
    f = int(key.split("embedding_bags.t")[1].split(".")[0])
    t = next(i for i, g in enumerate(towers) if f in g)
    return f"sparse.towers.{t}.embedding.embedding_bags"


def test_sharding_plan_puts_each_tower_on_its_host_and_refuses_mismatches():
    model = TowerDLRM((16,) * 4, 2, dim=4, towers=[[0, 1], [2, 3]])
    plan = sharding_plan(model, world_size=4, local_size=2).plan["sparse"]
    assert sorted(plan["t0"].ranks) == [0, 1] and sorted(plan["t3"].ranks) == [2, 3]
    assert {p.sharding_type for p in plan.values()} == {"table_row_wise"}
    with pytest.raises(ValueError, match="one tower per host"):
        sharding_plan(model, world_size=8, local_size=2)
    flat = TowerDLRM((16,) * 4, 2, dim=4)
    tw = sharding_plan(flat, world_size=4, local_size=2).plan["sparse"]
    assert [tw[f"t{f}"].ranks for f in range(4)] == [[0], [1], [2], [3]]
    with pytest.raises(ValueError, match="choose"):
        sharding_plan(flat, 4, 2, flat="grid")
    with pytest.raises(ValueError, match="partition"):
        TowerDLRM((16,) * 4, 2, towers=[[0, 1], [1, 2, 3]])
