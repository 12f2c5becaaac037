"""Starting and running distributed jobs: torchrun agents on the launching side, the process
group on the worker side.

``launch`` starts ``nnodes`` torchrun agents on this machine (each one stands in for a host,
with ``nproc_per_node`` worker processes) that meet at a c10d rendezvous on 127.0.0.1, or one
agent for this host when a rendezvous endpoint on the real network is given (run the same
command on every host then). When any agent fails (a worker that crashed or was killed), the
others are stopped, so no process is left waiting in a collective.

A worker calls ``init_worker`` first and ``finish_worker`` last.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["LaunchConfig", "Worker", "free_port", "finish_worker", "init_worker", "launch"]


@dataclass(frozen=True)
class LaunchConfig:
    """nnodes: hosts (emulated on this machine when ``rdzv_endpoint`` is None); nproc_per_node:
    worker processes per host; rdzv_endpoint: HOST:PORT of a rendezvous on the network for real
    hosts, or None for 127.0.0.1 on a free port; timeout_s: the process group's collective
    timeout."""

    nnodes: int = 1
    nproc_per_node: int = 2
    rdzv_endpoint: str | None = None
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.nnodes < 1 or self.nproc_per_node < 1:
            raise ValueError(
                f"--nnodes {self.nnodes} and --nproc-per-node {self.nproc_per_node}: both must "
                "be at least 1"
            )
        if self.rdzv_endpoint is not None:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"--rdzv-endpoint {self.rdzv_endpoint!r} must look like HOST:PORT")

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _agent_command(cfg: LaunchConfig, endpoint: str, module: str, args: Sequence[str]) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={cfg.nnodes}",
        f"--nproc-per-node={cfg.nproc_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        "--max-restarts=0",
        "--monitor-interval=0.5",
    ]
    if cfg.rdzv_endpoint is None:
        cmd.append("--local-addr=127.0.0.1")
    return [*cmd, "-m", module, *args]


def launch(
    cfg: LaunchConfig,
    module: str,
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
) -> int:
    """Run ``python -m module *args`` on ``cfg.world_size`` processes; returns 0 when every
    agent succeeded, else the first failing agent's exit status (124 after ``timeout_s``)."""
    endpoint = cfg.rdzv_endpoint or f"127.0.0.1:{free_port()}"
    n_agents = cfg.nnodes if cfg.rdzv_endpoint is None else 1
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("OMP_NUM_THREADS", "1")
    child_env["HIREX_DIST_TIMEOUT_S"] = str(cfg.timeout_s)
    if cfg.rdzv_endpoint is None:
        # Gloo binds to the address the host name resolves to; pin it to the loopback.
        child_env.setdefault("GLOO_SOCKET_IFNAME", _loopback_interface())
    cmd = _agent_command(cfg, endpoint, module, args)
    agents = [subprocess.Popen(cmd, env=child_env, start_new_session=True) for _ in range(n_agents)]
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    status = 0
    try:
        while agents:
            for agent in list(agents):
                rc = agent.poll()
                if rc is None:
                    continue
                agents.remove(agent)
                if rc != 0:
                    status = status or rc
                    _stop(agents)  # the others would wait in a collective until the timeout
                    break
            if deadline is not None and time.monotonic() > deadline and agents:
                status = status or 124
                _stop(agents)
            time.sleep(0.2)
    except BaseException:
        _stop(agents)
        raise
    return status


def _stop(agents: list[subprocess.Popen]) -> None:
    """SIGTERM each agent's process group (the agent and its workers), SIGKILL after 10 s."""
    for agent in agents:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.pid, signal.SIGTERM)
    end = time.monotonic() + 10.0
    for agent in agents:
        try:
            agent.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
    agents.clear()


def _loopback_interface() -> str:
    names = [name for _, name in socket.if_nameindex()]
    return "lo" if "lo" in names else (names[0] if names else "lo")


@dataclass(frozen=True)
class Worker:
    """This process's place in the job: rank of world_size; local_rank of local_world_size on
    host ``node``; device (cuda:local_rank when CUDA is used, else cpu)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def node(self) -> int:
        return self.rank // self.local_world_size

    @property
    def nnodes(self) -> int:
        return self.world_size // self.local_world_size


def init_worker(device: str = "cpu") -> Worker:
    """Join the process group that torchrun set up (gloo on CPU, nccl on CUDA)."""
    if "RANK" not in os.environ:
        raise RuntimeError(
            "not started by torchrun: run through `hirex train --distributed` or "
            "hirex.distributed.launch"
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    timeout = datetime.timedelta(seconds=float(os.environ.get("HIREX_DIST_TIMEOUT_S", 600)))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
    worker = Worker(
        dist.get_rank(),
        dist.get_world_size(),
        local_rank,
        int(os.environ["LOCAL_WORLD_SIZE"]),
        dev,
    )
    if worker.world_size % worker.local_world_size:
        raise RuntimeError("every host must run the same number of processes")
    return worker


def finish_worker(code: int = 0) -> None:
    """Leave the process group and exit at once: a rank sometimes aborts in interpreter
    shutdown after ``destroy_process_group``, which would turn a finished job into a failed
    one, so this flushes the output and ends the process with ``os._exit``. A failing rank
    (``code != 0``) leaves at once: its agent then fails and ``launch`` stops the others."""
    if dist.is_initialized() and code == 0:
        # After a failure the other ranks may be inside another collective: no barrier then.
        with contextlib.suppress(Exception):
            dist.barrier()
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
