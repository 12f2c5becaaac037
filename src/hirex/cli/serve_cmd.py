"""``hirex serve``: the retrieval service over a trained run and its index."""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)

TOKEN_ENV = "HIREX_SERVE_TOKEN"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve retrieval over HTTP, with live item updates",
        description="Load a run's model and hierarchical index and serve POST /v1/retrieve, "
        "PUT/DELETE/GET /v1/items/{id}, GET /healthz and GET /metrics (Prometheus). Item changes "
        "are journaled (fsynced) before they are acknowledged and survive a restart or kill -9; "
        "the index is loaded and the journal replayed before the port opens. API docs: "
        "http://HOST:PORT/docs.",
    )
    p.add_argument("--run", required=True, help="run folder written by `hirex train`")
    p.add_argument("--index", metavar="DIR", help="the index to serve (default: <run>/index)")
    p.add_argument(
        "--state",
        metavar="DIR",
        help="where item changes are kept: journal and snapshots (default: <run>/serving)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--beam",
        help="default nodes kept per level, e.g. 16 or 8,32 (default: the run's index.beam)",
    )
    p.add_argument("--k", type=int, default=20, help="default items per query (default: 20)")
    p.add_argument("--max-k", type=int, default=1000, help="largest k a query may ask (1000)")
    p.add_argument(
        "--max-batch", type=int, default=256, help="most queries in one request (default: 256)"
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=1 << 20,
        help="largest request body; larger ones get 413 (default: 1048576)",
    )
    p.add_argument(
        "--token-file",
        help=f"file holding the bearer token for item changes (default: ${TOKEN_ENV}; neither: "
        "item changes are open, which is only for trusted networks)",
    )
    p.add_argument(
        "--protect-retrieve",
        action="store_true",
        help="ask for the token on retrieval and item reads too (default: open)",
    )
    p.add_argument(
        "--snapshot-every",
        type=int,
        default=1000,
        help="save the index and empty the journal after this many changes (default: 1000)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.set_defaults(func=run)


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
        if not token:
            raise ValueError(f"--token-file {args.token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def run(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from hirex.serve.app import create_app
    from hirex.serve.service import RetrievalService

    for name in ("k", "max_k", "max_batch", "max_body_bytes", "snapshot_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if not 1 <= args.k <= args.max_k:
        raise ValueError(f"--k {args.k} must lie in 1..--max-k ({args.max_k})")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port} is not a port number")
    if not 0 <= args.threads <= 1024:
        raise ValueError(f"--threads must lie in 0..1024 (0: torch's default), got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    token = _token(args)
    sock = _listen(args.host, args.port)  # before anything is loaded or logged
    service = RetrievalService.open(
        args.run,
        index=args.index,
        state_dir=args.state,
        device=args.device,
        beam=args.beam,
        max_k=args.max_k,
        max_batch=args.max_batch,
        snapshot_every=args.snapshot_every,
    )
    app = create_app(
        service,
        token=token,
        protect_retrieve=args.protect_retrieve,
        max_body_bytes=args.max_body_bytes,
        default_k=args.k,
    )
    stats = service.stats()
    log.info(
        "serving %d items (%d changes applied) on http://%s:%d%s",
        stats["items_active"],
        stats["applied_seq"],
        args.host,
        sock.getsockname()[1],
        "" if token else " (item changes are open: no token configured)",
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or a clear error when it cannot be (port in use, an
    address this machine does not have)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ValueError(f"--host {host!r} cannot be resolved: {err.strerror}") from err
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise ValueError(
            f"cannot listen on {host}:{port}: {err.strerror}; choose another --port (or stop "
            "the program that holds it)"
        ) from err
    sock.set_inheritable(True)
    return sock
