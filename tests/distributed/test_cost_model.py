"""The topology cost model on hand-computed cases."""

from __future__ import annotations

import pytest

from hirex.distributed.cost_model import (
    CommTerm,
    Profile,
    Topology,
    profile_from_counts,
    scale_batch,
    speedups,
    step_time,
    term_bytes,
)

TOPO = Topology(intra_bw=100.0, inter_bw=10.0, intra_latency=1.0, inter_latency=2.0, local_size=8)


def test_world_all_to_all_keeps_its_payload_and_spreads_it_over_hosts():
    # measured at W = 4 (2 hosts of 2): 100 bytes within, 200 across -> payload V = 300 * 4 / 3
    p = profile_from_counts(
        {"0,1,2,3/all_to_all_single": {"within_host": 100, "cross_host": 200, "calls": 1}}, 4, 2
    )
    (term,) = p.terms
    assert term.scope == "world" and term.size == pytest.approx(400)
    # W = 16, 8 per host: sends 400 * 15 / 16 = 375, 8 of its 15 peers on the other host
    within, cross = term_bytes(term, 16, 8)
    assert cross == pytest.approx(200) and within == pytest.approx(175)
    # time: max(7 peers * 1 + 175 / 100, 8 peers * 2 + 200 / 10) = 36, plus compute 5
    t = step_time(Profile(p.terms, compute_s=5.0), 16, TOPO)
    assert t["comm"] == pytest.approx(36.0) and t["step"] == pytest.approx(41.0)


def test_ring_all_reduce_and_per_peer_reduce_scatter():
    counts = {
        "0,1,2,3/all_reduce": {"within_host": 10, "cross_host": 20, "calls": 1},
        "0,1/reduce_scatter_tensor": {"within_host": 50, "cross_host": 0, "calls": 1},
    }
    p = profile_from_counts(counts, 4, 2)
    ring = next(t for t in p.terms if t.op == "all_reduce")
    rs = next(t for t in p.terms if t.op == "reduce_scatter_tensor")
    assert ring.size == pytest.approx(30 * 4 / 6)  # the all-reduced bytes G = 20
    assert rs.scope == "intra" and rs.size == pytest.approx(50)  # bytes per peer
    # W = 16: ring of 16 over the inter-host links: 2 * 15 * 2 + 2 * 15 / 16 * 20 / 10
    assert step_time(Profile((ring,)), 16, TOPO)["comm"] == pytest.approx(60 + 3.75)
    # the host's reduce-scatter: 7 peers of 50 bytes: 7 * 1 + 350 / 100
    assert term_bytes(rs, 16, 8) == (pytest.approx(350), 0.0)
    assert step_time(Profile((rs,)), 16, TOPO)["comm"] == pytest.approx(7 + 3.5)


def test_cross_scope_talks_to_one_peer_per_other_host():
    p = profile_from_counts(
        {"0,2/all_to_all_single": {"within_host": 0, "cross_host": 4888, "calls": 5}}, 4, 2
    )
    (term,) = p.terms
    assert term.scope == "cross" and term.size == pytest.approx(9776)
    # 64 ranks = 8 hosts: 7 peers, payload * 7 / 8 across hosts
    assert term_bytes(term, 64, 8) == (0.0, pytest.approx(9776 * 7 / 8))
    t = step_time(Profile((term,)), 64, TOPO)["comm"]
    assert t == pytest.approx(5 * 7 * 2 + 9776 * 7 / 8 / 10)


def test_flat_global_all_to_all_loses_to_peer_exchange_at_scale():
    flat = Profile((CommTerm("all_to_all_single", "world", 4, 1e6),))
    dmt = Profile(
        (
            CommTerm("all_to_all_single", "cross", 4, 1e6),
            CommTerm("reduce_scatter_tensor", "intra", 1, 1e4),
        )
    )
    topo = Topology()
    rows = speedups(flat, dmt, [16, 64, 512], topo)
    assert [r["gpus"] for r in rows] == [16, 64, 512]
    assert all(r["speedup"] > 1 for r in rows)
    assert rows[-1]["speedup"] > rows[0]["speedup"]  # the gap grows with the peers


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="multiple of 8"):
        step_time(Profile(()), 12, Topology())
    with pytest.raises(ValueError, match="no scaling law"):
        profile_from_counts(
            {"0,1,2,3/gather": {"within_host": 1, "cross_host": 1, "calls": 1}}, 4, 2
        )
    with pytest.raises(ValueError, match="bandwidths"):
        Topology(inter_bw=0)


def test_scale_batch_grows_per_sample_bytes_not_gradients():
    p = Profile(
        (
            CommTerm("all_to_all_single", "world", 2, 100.0),
            CommTerm("all_reduce", "world", 1, 50.0),
        ),
        compute_s=0.5,
    )
    q = scale_batch(p, 4)
    assert [t.size for t in q.terms] == [400.0, 50.0]
    assert [t.calls for t in q.terms] == [2, 1] and q.compute_s == 2.0
    with pytest.raises(ValueError, match="must be > 0"):
        scale_batch(p, 0)
