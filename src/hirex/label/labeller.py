"""Label (query, result) pairs through a backend, with the cache in front of it.

Pairs already in the cache are never sent again; the rest go to the backend with at most
``concurrency`` requests in flight. Each answer is stored the moment it arrives, so a run
stopped at any point (Ctrl-C, ``kill -9``, a crash) resumes where it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from hirex.config import LabelConfig
from hirex.label.backends import BackendError, OpenAIBackend
from hirex.label.cache import CachedLabel, LabelCache
from hirex.label.llama_server import DEFAULT_LOCAL_MODEL, LOCAL_MODELS, LocalServer
from hirex.label.parse import expected_grade, parse_answer
from hirex.label.prompts import Pair, Prompt, load_template

__all__ = ["LabelRun", "Labeller", "label_key", "open_labeller"]

log = logging.getLogger(__name__)

MAX_FAILURES_IN_A_ROW = 3
"""After this many pairs in a row fail (each after its retries), the rest are not sent."""


def label_key(prompt: Prompt, model: str, messages: list[dict], max_tokens: int) -> str:
    """SHA-256 over everything that decides the answer (see :mod:`hirex.label.cache`)."""
    blob = json.dumps(
        {
            "template": prompt.template.id,
            "variant": prompt.variant,
            "judges": prompt.n_scores,
            "model": model,
            "messages": messages,
            "temperature": 0,
            "max_tokens": max_tokens,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class LabelRun:
    """The labels of one call, aligned with its pairs (None where the backend failed)."""

    labels: list[CachedLabel | None]
    cache_hits: int = 0
    requested: int = 0
    failed: int = 0
    seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def unparsed(self) -> int:
        return sum(1 for lab in self.labels if lab is not None and not lab.ok)

    @property
    def labels_per_hour(self) -> float:
        """Newly requested labels per hour of this call's wall time (cache hits excluded)."""
        return 3600.0 * self.requested / self.seconds if self.seconds > 0 else 0.0


class Labeller:
    """prompt: the template and variant; backend: where to ask; cache: where labels live;
    model: the model's name as recorded in the cache key (a GGUF's name, or the remote
    model); price_prompt / price_completion: cost per million tokens (0 for local)."""

    def __init__(
        self,
        prompt: Prompt,
        backend: OpenAIBackend,
        cache: LabelCache,
        model: str,
        concurrency: int = 1,
        price_prompt: float = 0.0,
        price_completion: float = 0.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency = {concurrency}; need at least 1")
        self.prompt, self.backend, self.cache, self.model = prompt, backend, cache, model
        self.concurrency = concurrency
        self.price = (price_prompt, price_completion)

    def label(self, pairs: Sequence[Pair], progress: bool = True) -> LabelRun:
        t0 = time.perf_counter()
        messages = [self.prompt.messages(p) for p in pairs]  # validates every pair first
        keys = [label_key(self.prompt, self.model, m, self.backend.max_tokens) for m in messages]
        cached = self.cache.get_many(sorted(set(keys)))
        run = LabelRun(labels=[cached.get(k) for k in keys])
        run.cache_hits = sum(lab is not None for lab in run.labels)
        pending: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            if k not in cached:
                pending.setdefault(k, []).append(i)
        if pending:
            self.backend.check_reachable()
        bar = tqdm(
            total=len(pairs),
            initial=run.cache_hits,
            disable=not progress,
            unit="pair",
            desc=f"labelling ({self.prompt.name}, {self.model})",
        )
        lock = threading.Lock()
        started = time.perf_counter()
        schema = self.prompt.json_schema()
        give_up = threading.Event()  # set after MAX_FAILURES_IN_A_ROW backend failures
        failures_in_a_row = [0]

        def one(key: str, i: int) -> CachedLabel | None:
            pair = pairs[i]
            if give_up.is_set():
                with lock:
                    run.failed += len(pending[key])
                return None
            rid = self.cache.begin_request(key)
            t = time.perf_counter()
            try:
                c = self.backend.complete(messages[i], schema)
            except BackendError as err:
                self.cache.end_request(rid, "error")
                with lock:
                    run.failed += len(pending[key])
                    run.errors.append(str(err))
                    failures_in_a_row[0] += 1
                    if failures_in_a_row[0] >= MAX_FAILURES_IN_A_ROW:
                        give_up.set()
                return None
            with lock:
                failures_in_a_row[0] = 0
            parsed = parse_answer(
                c.text, self.prompt.scale, self.prompt.n_scores, aspects="A" in self.prompt.variant
            )
            lab = CachedLabel(
                key=key,
                qid=pair.qid,
                docid=pair.docid,
                status="ok" if parsed.ok else "unparsed",
                label=parsed.label,
                grade=parsed.grade,
                expected=expected_grade(c.logprobs, self.prompt.scale, self.prompt.n_scores)
                if parsed.ok
                else None,
                aspects=parsed.aspects,
                reason=parsed.reason,
                raw=c.text,
                prompt_tokens=c.prompt_tokens,
                completion_tokens=c.completion_tokens,
                cost=(c.prompt_tokens * self.price[0] + c.completion_tokens * self.price[1]) / 1e6,
                seconds=time.perf_counter() - t,
            )
            meta = {
                "template": self.prompt.template.id,
                "variant": self.prompt.variant,
                "model": self.model,
                "input_hash": hashlib.sha256(
                    f"{pair.query}\x00{pair.document}".encode()
                ).hexdigest(),
            }
            self.cache.store(rid, lab, meta)
            return lab

        try:
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                futures = {pool.submit(one, k, idx[0]): k for k, idx in pending.items()}
                for fut in as_completed(futures):
                    key = futures[fut]
                    lab = fut.result()
                    with lock:
                        for i in pending[key]:
                            run.labels[i] = lab
                        if lab is not None:
                            run.requested += 1
                            run.prompt_tokens += lab.prompt_tokens
                            run.completion_tokens += lab.completion_tokens
                        elapsed = time.perf_counter() - started
                        bar.set_postfix(
                            {
                                "pairs/s": f"{run.requested / max(elapsed, 1e-9):.2f}",
                                "hits": run.cache_hits,
                                "tokens": run.prompt_tokens + run.completion_tokens,
                                "failed": run.failed,
                            },
                            refresh=False,
                        )
                        bar.update(len(pending[key]))
        finally:
            bar.close()
        run.seconds = time.perf_counter() - t0 if pending else 0.0
        if run.errors:
            log.warning("%d pairs failed; first error: %s", run.failed, run.errors[0])
        return run


@contextmanager
def open_labeller(cfg: LabelConfig) -> Iterator[Labeller]:
    """A Labeller for ``cfg`` (the ``[label]`` config section); with ``backend = "local"``
    the llama.cpp server runs for the duration of the ``with`` block."""
    prompt = Prompt.build(load_template(cfg.template), cfg.variant or None, judges=cfg.judges)
    cache_path = cfg.cache or Path.home() / ".cache" / "hirex" / "labels.sqlite"
    # everything is checked before the cache file is created
    if cfg.backend == "local":
        model = cfg.model or os.environ.get("HIREX_LABEL_MODEL") or DEFAULT_LOCAL_MODEL
        server = LocalServer(model, threads=cfg.threads, ctx=cfg.ctx, parallel=cfg.concurrency)
        name = model if model in LOCAL_MODELS else server.gguf.name  # the cache key's model
        cache = LabelCache(cache_path)
        with server:
            backend = OpenAIBackend(
                server.base_url,
                name,
                timeout=cfg.timeout,
                max_retries=cfg.max_retries,
                max_tokens=cfg.max_tokens,
            )
            yield Labeller(prompt, backend, cache, name, cfg.concurrency)
        return
    base_url = (
        cfg.base_url
        or os.environ.get("HIREX_LABEL_BASE_URL")
        or os.environ.get("OPENAI_BASE_URL")
        or ""
    )
    if not base_url:
        raise ValueError(
            "label.backend = 'openai' needs an endpoint: --base-url URL (or label.base_url, "
            "or $HIREX_LABEL_BASE_URL / $OPENAI_BASE_URL), e.g. http://127.0.0.1:8000/v1"
        )
    model = cfg.model or os.environ.get("HIREX_LABEL_MODEL") or ""
    if not model:
        raise ValueError("label.backend = 'openai' needs a model name: --model NAME")
    backend = OpenAIBackend(
        base_url,
        model,
        api_key=os.environ.get(cfg.api_key_env, "none"),
        timeout=cfg.timeout,
        max_retries=cfg.max_retries,
        max_tokens=cfg.max_tokens,
    )
    yield Labeller(
        prompt,
        backend,
        LabelCache(cache_path),
        model,
        cfg.concurrency,
        cfg.price_prompt,
        cfg.price_completion,
    )
