"""Load on `hirex serve` over loopback: retrievals mixed with live item updates from concurrent
clients, then a check that no acknowledged update was lost (before and after a kill -9 and
restart), beside the latency of the same retrievals as in-process library calls.

    python benchmarks/serve_load.py [--run runs/bench-serve-gowalla] [--requests 4000]
        [--clients 8] [--update-share 0.1]

Without a finished run at --run it trains configs/serve-gowalla.toml there first (Gowalla,
mixture of logits, post-hoc index).  The load is bounded: a fixed number of requests, and the
clients stop by themselves at --time-limit seconds.  Each client owns its own new item ids, so its
updates of an item happen in the order it sent them; the final state of every item a client
changed is checked against what the server acknowledged.

Writes benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from common import SHARED_DATA, command_line, machine, write_result

from hirex.config import apply_overrides, load_config
from hirex.index.files import load_index
from hirex.index.search import beam_search
from hirex.runs import INDEX_DIR, dataset_from_config, load_run, train_run

TOKEN = "load-benchmark"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    ms = np.asarray(seconds) * 1000
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)}


def ensure_run(run: Path, config: str, data_dir: str) -> None:
    if (run / "metrics.json").exists() and (run / INDEX_DIR / "manifest.json").exists():
        return
    cfg = apply_overrides(load_config(config), [f'data.data_dir="{data_dir}"'])
    print(f"training {config} into {run} (no finished run there)")
    train_run(cfg, dataset_from_config(cfg.data), run, restart=False, progress=True)


class Server:
    def __init__(self, run: Path, state: Path, threads: int, log: Path) -> None:
        self.run, self.state, self.threads, self.log = run, state, threads, log
        self.proc: subprocess.Popen | None = None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        """Start and wait until /healthz answers; returns the seconds that took."""
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "hirex.cli.main", "serve", "--run", str(self.run)]
        cmd += ["--state", str(self.state), "--port", str(self.port)]
        cmd += ["--threads", str(self.threads)]
        env = {**os.environ, "HIREX_SERVE_TOKEN": TOKEN}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        while time.perf_counter() - t0 < 300:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                time.sleep(0.2)
        raise SystemExit("server did not become ready in 300 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)


def plan(
    client: int,
    n: int,
    n_users: int,
    update_share: float,
    item_emb: np.ndarray,
    rng: np.random.Generator,
) -> list[tuple]:
    """One client's requests: retrievals of random users, and updates of its own new items
    (add, re-embed, delete), each a perturbed copy of a trained item's embedding."""
    ops, mine = [], []
    for _ in range(n):
        if rng.random() >= update_share:
            ops.append(("retrieve", int(rng.integers(n_users))))
            continue
        choice = rng.random()
        if not mine or choice < 0.5:
            item = 10_000_000 + client * 1_000_000 + len(mine)
            mine.append(item)
            kind = "put"
        elif choice < 0.75:
            item, kind = mine[int(rng.integers(len(mine)))], "put"
        else:
            item, kind = mine[int(rng.integers(len(mine)))], "delete"
        src = item_emb[int(rng.integers(len(item_emb)))]
        emb = (src + 0.05 * rng.standard_normal(src.shape)).astype(np.float32)
        ops.append((kind, item, emb.tolist() if kind == "put" else None))
    return ops


def client_loop(url: str, ops: list[tuple], k: int, deadline: float, out: dict) -> None:
    lat: dict[str, list[float]] = {"retrieve": [], "put": [], "delete": []}
    errors: list[str] = []
    acked: dict[int, list | None] = {}  # item -> last acknowledged embedding (None: deleted)
    with httpx.Client(timeout=30) as c:
        for op in ops:
            if time.perf_counter() > deadline:
                break
            t0 = time.perf_counter()
            try:
                if op[0] == "retrieve":
                    r = c.post(f"{url}/v1/retrieve", json={"user": op[1], "k": k})
                elif op[0] == "put":
                    r = c.put(f"{url}/v1/items/{op[1]}", json={"embedding": op[2]}, headers=AUTH)
                else:
                    r = c.delete(f"{url}/v1/items/{op[1]}", headers=AUTH)
            except httpx.HTTPError as err:
                errors.append(f"{op[0]}: {err!r}")
                continue
            lat[op[0]].append(time.perf_counter() - t0)
            if r.status_code == 404 and op[0] == "delete" and acked.get(op[1], 0) is None:
                continue  # deleting an item this client already deleted: expected
            if r.status_code != 200:
                errors.append(f"{op[0]} {r.status_code}: {r.text[:200]}")
            elif op[0] != "retrieve":
                acked[op[1]] = op[2]
    out.update(latency=lat, errors=errors, acked=acked)


def verify(url: str, acked: dict[int, list | None]) -> list[str]:
    """Items whose state on the server is not the last acknowledged one."""
    lost = []
    with httpx.Client(timeout=30) as c:
        for item, emb in acked.items():
            r = c.get(f"{url}/v1/items/{item}", params={"embedding": "true"})
            if emb is None:
                if r.status_code != 404:
                    lost.append(f"{item}: deleted, but the server has it")
            elif r.status_code != 200 or not np.allclose(r.json()["embedding"], [emb]):
                lost.append(f"{item}: acknowledged embedding not served ({r.status_code})")
    return lost


def in_process(run: Path, users: np.ndarray, k: int, beam, threads: int) -> dict[str, float]:
    """The same retrievals as single library calls (beam_search) in this process."""
    torch.set_num_threads(threads)
    r = load_run(run, "cpu")
    model, index = load_index(run / INDEX_DIR)
    hist = r.dataset.history("test")
    for u in users[:20]:  # warm-up (caches)
        beam_search(model, index, np.array([u]), hist, k, beam, exclude=hist)
    times = []
    for u in users:
        t0 = time.perf_counter()
        beam_search(model, index, np.array([u]), hist, k, beam, exclude=hist)
        times.append(time.perf_counter() - t0)
    return {"calls": len(times), **percentiles(times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", default="runs/bench-serve-gowalla")
    p.add_argument("--config", default="configs/serve-gowalla.toml")
    p.add_argument("--data-dir", default=str(SHARED_DATA))
    p.add_argument("--requests", type=int, default=4000, help="in all, over every client")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--update-share", type=float, default=0.1, help="share of item updates")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--server-threads", type=int, default=1, help="torch threads in the server")
    p.add_argument("--time-limit", type=float, default=110.0, help="clients stop after this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sequential", type=int, default=200, help="retrievals from one client alone, first"
    )
    p.add_argument("--output", default="serve_load")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    run = Path(args.run)
    ensure_run(run, args.config, args.data_dir)
    cfg = load_config(run / "config.toml")
    _, index = load_index(run / INDEX_DIR)
    n_users = load_run(run, "cpu").dataset.n_users
    item_emb = index.item_emb.numpy()

    rng = np.random.default_rng(args.seed)
    per_client = args.requests // args.clients
    plans = [
        plan(c, per_client, n_users, args.update_share, item_emb, rng) for c in range(args.clients)
    ]
    work = Path(tempfile.mkdtemp(prefix="hirex-serve-load-"))
    server = Server(run, work / "state", args.server_threads, work / "server.log")
    try:
        startup = server.start()
        print(f"server ready in {startup:.1f}s on {server.url}")
        # Warm-up, not counted: the first searches fill the scorer's caches.  Then one client
        # alone, one request at a time: the HTTP overhead without queueing.
        sequential = []
        with httpx.Client(timeout=60) as c:
            for u in range(20):
                c.post(f"{server.url}/v1/retrieve", json={"user": u, "k": args.k})
            for u in rng.integers(n_users, size=args.sequential):
                t = time.perf_counter()
                r = c.post(f"{server.url}/v1/retrieve", json={"user": int(u), "k": args.k})
                sequential.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
        outs = [{} for _ in plans]
        t0 = time.perf_counter()
        deadline = t0 + args.time_limit
        threads = [
            threading.Thread(target=client_loop, args=(server.url, ops, args.k, deadline, out))
            for ops, out in zip(plans, outs, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        lat = {kind: [s for o in outs for s in o["latency"][kind]] for kind in outs[0]["latency"]}
        errors = [e for o in outs for e in o["errors"]]
        acked = {item: e for o in outs for item, e in o["acked"].items()}
        done = sum(len(v) for v in lat.values())
        lost = verify(server.url, acked)
        metrics_text = httpx.get(f"{server.url}/metrics", timeout=30).text
        # kill -9 and restart: every acknowledged update must still be there.
        server.kill()
        restart = server.start()
        lost_after_restart = verify(server.url, acked)
    finally:
        server.kill()
    shutil.rmtree(work, ignore_errors=True)
    retrieve_users = np.array([op[1] for ops in plans for op in ops if op[0] == "retrieve"])
    library = in_process(
        run,
        retrieve_users[: min(1000, len(retrieve_users))],
        args.k,
        cfg.index.beam,
        args.server_threads,
    )
    result = {
        "run": str(run),
        "dataset": load_run(run, "cpu").dataset.summary(),
        "model": f"{cfg.model.scorer}, dim {cfg.model.dim}",
        "index": {"levels": list(cfg.index.levels), "beam": list(cfg.index.beam)},
        "clients": args.clients,
        "requests_planned": per_client * args.clients,
        "requests": done,
        "errors": len(errors),
        "error_examples": errors[:5],
        "wall_seconds": round(wall, 2),
        "requests_per_second": round(done / wall, 1),
        "retrievals_per_second": round(len(lat["retrieve"]) / wall, 1),
        "by_kind": {kind: {"requests": len(v), **percentiles(v)} for kind, v in lat.items()},
        "http": {"requests": done, **percentiles([s for v in lat.values() for s in v])},
        "http_one_client_sequential": {"requests": len(sequential), **percentiles(sequential)},
        "in_process_library": library,
        "updates_acknowledged": sum(len(lat[k]) for k in ("put", "delete")),
        "items_changed": len(acked),
        "lost_acknowledged_updates": len(lost),
        "lost_after_kill_9_restart": len(lost_after_restart),
        "lost_examples": (lost + lost_after_restart)[:5],
        "server_startup_seconds": round(startup, 1),
        "restart_seconds": round(restart, 1),
        "server_threads": args.server_threads,
        "server_metrics_sample": [
            line for line in metrics_text.splitlines() if line.startswith("hirex_index_")
        ],
        "command": command_line(),
        "machine": machine(),
    }
    write_result(args.output, result)
    print(
        f"{done} requests in {wall:.1f}s ({result['requests_per_second']} req/s), "
        f"{len(errors)} errors; retrieve p50/p95/p99 "
        f"{result['by_kind']['retrieve']['p50_ms']}/{result['by_kind']['retrieve']['p95_ms']}/"
        f"{result['by_kind']['retrieve']['p99_ms']} ms over HTTP vs "
        f"{library['p50_ms']}/{library['p95_ms']}/{library['p99_ms']} ms in process "
        f"(one HTTP client alone: {result['http_one_client_sequential']['p50_ms']} ms p50); "
        f"lost updates {len(lost)} (after kill -9: {len(lost_after_restart)})"
    )


if __name__ == "__main__":
    main()
