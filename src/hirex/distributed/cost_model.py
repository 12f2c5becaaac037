"""A topology cost model of one training step, for flat sharding and DMT, from measured
per-step byte counts (DMT, REFERENCES.md section 3).

Input: a :class:`Profile`, the per-rank bytes of each collective kind and process-group
scope counted in a real run at ``(world_size, local_size)`` (``CommCounter``'s
``by_group_op``, scope ``world``, ``intra`` (the host) or ``cross`` (the same local rank on
every host)), and a compute time per step. Output: the step time at another world size, for
a :class:`Topology` of intra- and inter-host bandwidth and latency.

Assumptions (fixed per-rank batch, fixed model, weak scaling):

- **How bytes scale with the world size W = N hosts x L ranks per host.**
  All-to-all (ids, pooled embeddings, their gradients): a rank's payload V is constant (with
  a fixed per-rank batch every rank sends its samples' ids and its tables' outputs once),
  spread evenly over the group's ranks, itself included: it sends ``V (G - 1) / G`` to its
  G - 1 peers. Reduce-scatter and all-gather (row-wise pooling): a constant chunk to each
  peer, so ``u (G - 1)`` in all (row-wise partial sums cover the group's whole batch).
  All-reduce (data-parallel gradients): the gradient bytes are constant. For SPTT the towers
  are one per host and their modules keep a fixed compression ratio, so the cross-host
  payload of a rank stays constant as towers get fewer features. In the ``world`` scope a
  peer is on another host with probability ``(W - L) / (W - 1)``.
- **Time of a collective.** All-to-all, reduce-scatter, all-gather: direct sends, all
  concurrent, ``max(intra, cross)`` with each side ``peers * latency + bytes / bandwidth``
  (per call; bandwidth per rank and direction). All-reduce: a ring over the group, paced by
  its slowest link: ``2 (G - 1) * latency + 2 (G - 1) / G * bytes / bandwidth``.
- **A step** is compute plus every collective one after the other (no overlap of
  communication with compute, the pessimistic case for both schemes alike); compute per
  rank stays constant with W.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "CommTerm",
    "Profile",
    "Topology",
    "profile_from_counts",
    "scale_batch",
    "speedups",
    "step_time",
    "term_bytes",
]

_A2A = ("all_to_all_single", "all_to_all", "functional_all_to_all_single")
_PER_PEER = ("reduce_scatter", "reduce_scatter_tensor", "all_gather", "all_gather_into_tensor")
_RING = ("all_reduce",)


@dataclass(frozen=True)
class Topology:
    """Per-rank bandwidth (bytes/s, one direction) and per-message latency (s) inside a host
    and across hosts; ranks per host."""

    intra_bw: float = 150e9
    inter_bw: float = 25e9
    intra_latency: float = 3e-6
    inter_latency: float = 15e-6
    local_size: int = 8

    def __post_init__(self) -> None:
        if (
            min(self.intra_bw, self.inter_bw) <= 0
            or min(self.intra_latency, self.inter_latency) < 0
        ):
            raise ValueError("bandwidths must be > 0 and latencies >= 0")
        if self.local_size < 1:
            raise ValueError(f"local_size = {self.local_size}; must be >= 1")


@dataclass(frozen=True)
class CommTerm:
    """One collective kind in one scope: op (``all_to_all_single``, ``reduce_scatter_tensor``,
    ``all_gather_into_tensor``, ``all_reduce``, ...), scope (``world``, ``intra``,
    ``cross``), calls per step, and the size measure that stays constant with W: ``V`` (the
    all-to-all payload), ``u`` (bytes per peer) or ``G`` (the all-reduced bytes)."""

    op: str
    scope: str
    calls: float
    size: float


@dataclass(frozen=True)
class Profile:
    """A scheme's measured step: its collectives and the compute seconds per step."""

    terms: tuple[CommTerm, ...]
    compute_s: float = 0.0
    meta: dict = field(default_factory=dict)


def _group_size(scope: str, world: int, local: int) -> int:
    if scope == "world":
        return world
    if scope == "intra":
        return local
    if scope == "cross":
        return world // local
    raise ValueError(f"scope {scope!r}; choose 'world', 'intra' or 'cross'")


def _kind(op: str) -> str:
    if op in _A2A:
        return "a2a"
    if op in _PER_PEER:
        return "per_peer"
    if op in _RING:
        return "ring"
    raise ValueError(f"collective {op!r} has no scaling law; known: {_A2A + _PER_PEER + _RING}")


def profile_from_counts(
    by_group_op: Mapping[str, Mapping[str, float]],
    world_size: int,
    local_size: int,
    compute_s: float = 0.0,
) -> Profile:
    """A Profile from one rank's counted bytes per step (``CommTotals.as_dict()["by_group_op"]``:
    ``"r0,r1,.../op" -> {within_host, cross_host, calls}``), measured at (world_size,
    local_size). A group's scope follows from its ranks: all ranks, one host, or one rank per
    host."""
    terms = []
    for key, c in sorted(by_group_op.items()):
        ranks_s, op = key.rsplit("/", 1)
        ranks = [int(r) for r in ranks_s.split(",")]
        hosts = {r // local_size for r in ranks}
        if len(ranks) == world_size:
            scope = "world"
        elif len(hosts) == 1:
            scope = "intra"
        elif len(hosts) == len(ranks):
            scope = "cross"
        else:
            raise ValueError(f"group {ranks} is neither the world, one host nor one rank per host")
        g = len(ranks)
        sent = float(c["within_host"]) + float(c["cross_host"])
        kind = _kind(op)
        if g == 1:
            continue
        size = {
            "a2a": sent * g / (g - 1),
            "per_peer": sent / (g - 1),
            "ring": sent * g / (2 * (g - 1)),
        }[kind]
        terms.append(CommTerm(op, scope, float(c["calls"]), size))
    meta = {"world_size": world_size, "local_size": local_size}
    return Profile(tuple(terms), compute_s, meta)


def term_bytes(term: CommTerm, world: int, local: int) -> tuple[float, float]:
    """(within-host, cross-host) bytes a rank sends per step for ``term`` at (world, local)."""
    g = _group_size(term.scope, world, local)
    kind = _kind(term.op)
    if g <= 1:
        return 0.0, 0.0
    total = {
        "a2a": term.size * (g - 1) / g,
        "per_peer": term.size * (g - 1),
        "ring": 2 * term.size * (g - 1) / g,
    }[kind]
    if term.scope == "intra":
        return total, 0.0
    if term.scope == "cross":
        return 0.0, total
    cross_share = (world - local) / (world - 1)
    return total * (1 - cross_share), total * cross_share


def _term_time(term: CommTerm, world: int, topo: Topology) -> float:
    local = topo.local_size
    g = _group_size(term.scope, world, local)
    if g <= 1 or term.calls == 0:
        return 0.0
    within, cross = term_bytes(term, world, local)
    calls = term.calls
    if _kind(term.op) == "ring":
        spans_hosts = term.scope != "intra" and world > local
        bw = topo.inter_bw if spans_hosts else topo.intra_bw
        lat = topo.inter_latency if spans_hosts else topo.intra_latency
        return calls * 2 * (g - 1) * lat + (within + cross) / bw
    if term.scope == "world":
        p_intra, p_cross = local - 1, world - local
    elif term.scope == "intra":
        p_intra, p_cross = g - 1, 0
    else:
        p_intra, p_cross = 0, g - 1
    t_intra = calls * p_intra * topo.intra_latency + within / topo.intra_bw
    t_cross = calls * p_cross * topo.inter_latency + cross / topo.inter_bw
    return max(t_intra, t_cross)


def step_time(profile: Profile, world_size: int, topo: Topology) -> dict[str, float]:
    """Modelled seconds per step at ``world_size`` ranks (a multiple of ``topo.local_size``):
    ``{"step", "compute", "comm", "within_host_bytes", "cross_host_bytes"}``."""
    if world_size < topo.local_size or world_size % topo.local_size:
        raise ValueError(
            f"world size {world_size} must be a multiple of {topo.local_size} ranks per host"
        )
    comm = sum(_term_time(t, world_size, topo) for t in profile.terms)
    within = cross = 0.0
    for t in profile.terms:
        w, c = term_bytes(t, world_size, topo.local_size)
        within += w
        cross += c
    return {
        "step": profile.compute_s + comm,
        "compute": profile.compute_s,
        "comm": comm,
        "within_host_bytes": within,
        "cross_host_bytes": cross,
    }


def scale_batch(profile: Profile, factor: float) -> Profile:
    """The profile at ``factor`` times the per-rank batch: all-to-all, reduce-scatter and
    all-gather bytes and the compute time grow in proportion (they are per sample), the
    all-reduced gradient bytes and the number of calls do not."""
    if factor <= 0:
        raise ValueError(f"batch factor {factor}; must be > 0")
    terms = tuple(
        t if _kind(t.op) == "ring" else CommTerm(t.op, t.scope, t.calls, t.size * factor)
        for t in profile.terms
    )
    return Profile(terms, profile.compute_s * factor, {**profile.meta, "batch_factor": factor})


def speedups(
    flat: Profile, dmt: Profile, world_sizes: Sequence[int], topo: Topology
) -> list[dict[str, float]]:
    """Per world size: both modelled step times and flat / DMT."""
    rows = []
    for w in world_sizes:
        a, b = step_time(flat, w, topo), step_time(dmt, w, topo)
        rows.append(
            {
                "gpus": w,
                "flat_step_s": a["step"],
                "dmt_step_s": b["step"],
                "flat_cross_host_bytes": a["cross_host_bytes"],
                "dmt_cross_host_bytes": b["cross_host_bytes"],
                "speedup": a["step"] / b["step"],
            }
        )
    return rows
