"""CommCounter counts, in the collectives themselves, what each rank sends, within and across
hosts, on hand-computable collectives run by 2 emulated hosts x 2 ranks."""

from __future__ import annotations

import json

import pytest
import torch.distributed as dist

from hirex.distributed.comm_bytes import CommCounter, host_of
from hirex.distributed.launch import LaunchConfig, launch

from .processes import processes_mentioning


@pytest.mark.slow
def test_counts_hand_computed_collectives_by_destination_host(tmp_path):
    out = tmp_path / "count.json"
    rc = launch(
        LaunchConfig(nnodes=2, nproc_per_node=2, timeout_s=60),
        "hirex.distributed.dmt_worker",
        ["count", "--out", str(out)],
        timeout_s=90,
    )
    assert rc == 0
    assert processes_mentioning(str(out)) == []
    per_rank = json.loads(out.read_text())["per_rank"]
    w, local = 4, 2
    for r, got in enumerate(per_rank):
        ops = got["by_group_op"]
        peers = [j for j in range(w) if j != r]
        same = [j for j in peers if host_of(j, local) == host_of(r, local)]
        other = [j for j in peers if j not in same]
        # all-to-all: 12 (j + 1) bytes to rank j
        a2a = ops["0,1,2,3/all_to_all_single"]
        assert a2a["within_host"] == sum(12 * (j + 1) for j in same)
        assert a2a["cross_host"] == sum(12 * (j + 1) for j in other)
        # all-reduce of 64 bytes and DDP's 40 gradient bytes: 2 * nbytes / W per peer
        ar = ops["0,1,2,3/all_reduce"]
        assert ar["calls"] == 2
        assert ar["within_host"] == len(same) * (32 + 20)
        assert ar["cross_host"] == len(other) * (32 + 20)
        ag = ops["0,1,2,3/all_gather_into_tensor"]
        assert (ag["within_host"], ag["cross_host"]) == (40 * len(same), 40 * len(other))
        rs = ops["0,1,2,3/reduce_scatter_tensor"]
        assert (rs["within_host"], rs["cross_host"]) == (16 * len(same), 16 * len(other))
        assert got["within_host"] == sum(v["within_host"] for v in ops.values())
        assert got["cross_host"] == sum(v["cross_host"] for v in ops.values())


def test_counter_restores_the_collectives_and_refuses_without_a_process_group():
    original = dist.all_to_all_single
    with pytest.raises(RuntimeError, match="process group"):
        with CommCounter(2):
            pass
    assert dist.all_to_all_single is original
    with pytest.raises(ValueError, match="local_world_size"):
        CommCounter(0)
