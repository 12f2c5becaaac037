"""Counting the bytes a rank sends in collectives, where the collectives run, split into
within-host and cross-host by destination rank and kept per process group and operation.

``CommCounter`` is a context manager that wraps torch.distributed's collectives while it is
open (and only then): ``all_to_all_single``, ``all_to_all``, ``all_reduce``, ``all_gather``,
``all_gather_into_tensor``, ``reduce_scatter``, ``reduce_scatter_tensor``, ``broadcast`` and
the functional ``all_to_all_single``. These are the calls TorchRec 1.8 makes
(``torchrec/distributed/comm_ops.py`` and ``dist_data.py``, with the default asynchronous
collectives: ``dist.all_to_all_single`` for the id and pooled-embedding all-to-alls,
``dist.reduce_scatter_tensor`` / ``reduce_scatter`` for row-wise pooling,
``dist.all_gather_into_tensor`` / ``all_gather`` in their backward and for split sizes).
TorchRec's synchronous mode (``torchrec_use_sync_collectives``) issues
``torch.ops._c10d_functional`` ops that no Python wrapper sees, so the counter refuses to
open in it. DistributedDataParallel's gradient all-reduce runs in C++, out of Python's sight:
:meth:`CommCounter.watch_ddp` gives each DDP module the standard averaging all-reduce hook
(the same arithmetic as DDP's built-in reduction), which calls ``dist.all_reduce`` and is
counted.

What a call sends, per destination rank of its group (the direct algorithm, self excluded):

- all-to-all: the input chunk addressed to each destination;
- all-gather: the whole input to every other rank;
- reduce-scatter: the chunk reduced on each destination;
- all-reduce: ``2 * nbytes / W`` to every other rank (reduce-scatter then all-gather: the
  volume of a ring, ``2 (W - 1) / W * nbytes``, spread over all peers);
- broadcast: the tensor to every other rank, from the source only.

A destination on this rank's host (``global_rank // local_world_size``) is within-host,
any other is cross-host.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["CommCounter", "CommTotals", "host_of"]

_WRAPPED = (
    "all_to_all_single",
    "all_to_all",
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "broadcast",
)


def host_of(global_rank: int, local_world_size: int) -> int:
    return global_rank // local_world_size


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass
class CommTotals:
    """Bytes sent by one rank: within_host and cross_host in total, and per
    ``"group/op"`` key (group: the group's global ranks, e.g. ``"0,1"``) as
    ``[within, cross, calls]``."""

    within_host: int = 0
    cross_host: int = 0
    by_key: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))

    def as_dict(self, steps: int = 1) -> dict:
        """Per step (totals divided by ``steps``)."""
        return {
            "within_host": self.within_host / steps,
            "cross_host": self.cross_host / steps,
            "by_group_op": {
                k: {"within_host": w / steps, "cross_host": c / steps, "calls": n / steps}
                for k, (w, c, n) in sorted(self.by_key.items())
            },
        }


class CommCounter:
    """Counts this rank's sent bytes while open::

    with CommCounter(local_world_size) as counter:
        loss = model(batch).sum(); loss.backward()
    counter.totals.cross_host
    """

    def __init__(self, local_world_size: int) -> None:
        if local_world_size < 1:
            raise ValueError(f"local_world_size = {local_world_size}; must be >= 1")
        self.local_world_size = local_world_size
        self.totals = CommTotals()
        self._saved: list[tuple[object, str, object]] = []

    # -- attribution ------------------------------------------------------------------

    def _record(self, op: str, group: dist.ProcessGroup | None, per_dest: Sequence[int]) -> None:
        """per_dest[j]: bytes sent to the group's rank j (this rank's own entry ignored)."""
        ranks = _group_ranks(group)
        if len(per_dest) != len(ranks):
            raise AssertionError(f"{op}: {len(per_dest)} destinations for a group of {len(ranks)}")
        me = dist.get_rank()
        my_host = host_of(me, self.local_world_size)
        within = cross = 0
        for r, b in zip(ranks, per_dest, strict=True):
            if r == me:
                continue
            if host_of(r, self.local_world_size) == my_host:
                within += int(b)
            else:
                cross += int(b)
        key = f"{','.join(map(str, ranks))}/{op}"
        entry = self.totals.by_key[key]
        entry[0] += within
        entry[1] += cross
        entry[2] += 1
        self.totals.within_host += within
        self.totals.cross_host += cross

    def _count(self, name: str, args: tuple, kwargs: dict) -> None:
        group = kwargs.get("group")
        if name == "all_to_all_single":
            inp = kwargs.get("input", args[1] if len(args) > 1 else None)
            splits = kwargs.get("input_split_sizes", args[3] if len(args) > 3 else None)
            if group is None and len(args) > 4:
                group = args[4]
            w = _group_size(group)
            rows = inp.shape[0] if inp.dim() else 1
            row_bytes = _nbytes(inp) // max(rows, 1)
            sizes = list(splits) if splits else [rows // w] * w
            self._record(name, group, [s * row_bytes for s in sizes])
        elif name == "all_to_all":
            inputs = kwargs.get("input_tensor_list", args[1] if len(args) > 1 else None)
            group = group if group is not None or len(args) <= 2 else args[2]
            self._record(name, group, [_nbytes(t) for t in inputs])
        elif name == "all_reduce":
            t = kwargs.get("tensor", args[0] if args else None)
            group = group if group is not None or len(args) <= 2 else args[2]
            w = _group_size(group)
            self._record(name, group, [2 * _nbytes(t) // w] * w)
        elif name in ("all_gather", "all_gather_into_tensor"):
            t = kwargs.get("tensor", kwargs.get("input_tensor", args[1] if len(args) > 1 else None))
            group = group if group is not None or len(args) <= 2 else args[2]
            self._record(name, group, [_nbytes(t)] * _group_size(group))
        elif name == "reduce_scatter":
            inputs = kwargs.get("input_list", args[1] if len(args) > 1 else None)
            group = group if group is not None or len(args) <= 3 else args[3]
            self._record(name, group, [_nbytes(t) for t in inputs])
        elif name == "reduce_scatter_tensor":
            t = kwargs.get("input", args[1] if len(args) > 1 else None)
            group = group if group is not None or len(args) <= 3 else args[3]
            w = _group_size(group)
            self._record(name, group, [_nbytes(t) // w] * w)
        elif name == "broadcast":
            t = kwargs.get("tensor", args[0] if args else None)
            src = kwargs.get("src", args[1] if len(args) > 1 else None)
            group = group if group is not None or len(args) <= 2 else args[2]
            w = _group_size(group)
            if src == dist.get_rank():
                self._record(name, group, [_nbytes(t)] * w)

    def _count_functional_a2a(self, args: tuple, kwargs: dict) -> None:
        # _functional_collectives.all_to_all_single(input, output_split_sizes,
        # input_split_sizes, group)
        inp = args[0]
        splits = kwargs.get("input_split_sizes", args[2] if len(args) > 2 else None)
        group = kwargs.get("group", args[3] if len(args) > 3 else None)
        if isinstance(group, str):
            group = dist.distributed_c10d._resolve_process_group(group)
        w = _group_size(group)
        rows = inp.shape[0]
        row_bytes = _nbytes(inp) // max(rows, 1)
        sizes = list(splits) if splits else [rows // w] * w
        self._record("functional_all_to_all_single", group, [s * row_bytes for s in sizes])

    # -- patching ---------------------------------------------------------------------

    def __enter__(self) -> CommCounter:
        if not dist.is_initialized():
            raise RuntimeError("CommCounter needs an initialised process group")
        with contextlib.suppress(ImportError):
            from torchrec.distributed.comm_ops import get_use_sync_collectives

            if get_use_sync_collectives():
                raise RuntimeError(
                    "TorchRec's synchronous collectives run as _c10d_functional ops that "
                    "CommCounter cannot see; count outside torchrec_use_sync_collectives()"
                )
        import torch.distributed._functional_collectives as fc
        import torch.distributed.distributed_c10d as c10d

        for name in _WRAPPED:
            original = getattr(c10d, name)
            wrapper = self._wrap(name, original)
            for mod in (dist, c10d):
                self._saved.append((mod, name, getattr(mod, name)))
                setattr(mod, name, wrapper)
        original_fc = fc.all_to_all_single

        def fc_wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self._count_functional_a2a(args, kwargs)
            return original_fc(*args, **kwargs)

        self._saved.append((fc, "all_to_all_single", original_fc))
        fc.all_to_all_single = fc_wrapper
        return self

    def __exit__(self, *exc: object) -> None:
        while self._saved:
            mod, name, original = self._saved.pop()
            setattr(mod, name, original)

    def _wrap(self, name: str, original):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self._count(name, args, kwargs)
            return original(*args, **kwargs)

        wrapper.__wrapped__ = original
        return wrapper

    @staticmethod
    def watch_ddp(model: nn.Module) -> int:
        """Give every DistributedDataParallel module inside ``model`` (found through
        ``modules()`` and TorchRec's sharded towers' ``interactions``) the averaging
        all-reduce hook, so its gradient all-reduce goes through ``dist.all_reduce`` and can
        be counted. Call before the first backward. Returns the number of DDP modules."""
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        from torch.nn.parallel import DistributedDataParallel

        found = []
        for m in _all_modules(model):
            if isinstance(m, DistributedDataParallel) and all(m is not f for f in found):
                found.append(m)
        for m in found:
            m.register_comm_hook(m.process_group, allreduce_hook)
        return len(found)


def _all_modules(model: nn.Module) -> Iterator[nn.Module]:
    # TorchRec's sharded modules hide their children from named_modules(); walk _modules
    stack = [model]
    seen: set[int] = set()
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        yield m
        stack.extend(c for c in m._modules.values() if c is not None)


def _group_ranks(group: dist.ProcessGroup | None) -> list[int]:
    if group is None or group is dist.GroupMember.WORLD:
        return list(range(dist.get_world_size()))
    return list(dist.get_process_group_ranks(group))


def _group_size(group: dist.ProcessGroup | None) -> int:
    return dist.get_world_size(group)
