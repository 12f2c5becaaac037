"""Chat backends: any OpenAI-compatible endpoint through the ``openai`` client.

vLLM, the llama.cpp server (and hirex's local one, :mod:`hirex.label.llama_server`), Ollama and
hosted APIs all speak this API. Decoding is greedy (temperature 0) and, where the server
supports it, constrained to the answer's JSON schema; a server that refuses ``response_format``
is asked again without it, once, and the parser copes with the free text.

Failures: timeouts, refused connections, 429 and 5xx answers and malformed response bodies
are retried with exponential backoff (a server's ``Retry-After`` is honoured, up to a bound);
when the retries run out :class:`BackendError` names the URL and the last cause. Nothing here
hangs: every request has a timeout.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

__all__ = ["BackendError", "Completion", "OpenAIBackend"]

log = logging.getLogger(__name__)


class BackendError(RuntimeError):
    """The endpoint did not answer usefully after the retries; the message names it."""


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    logprobs: list[tuple[str, dict[str, float]]] | None = None
    """Per generated token: (token, {alternative: log-probability}) when the server sends
    them, else None."""


class OpenAIBackend:
    """Chat completions at ``base_url`` (e.g. ``http://127.0.0.1:8080/v1``).

    timeout: seconds per request; max_retries: further attempts after the first;
    backoff: the first retry's delay in seconds, doubled each time (with jitter).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "none",
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_tokens: int = 64,
        json_schema: bool = True,
        logprobs: bool = True,
    ) -> None:
        import openai

        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base URL {base_url!r} must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_tokens = max_tokens
        self.json_schema = json_schema
        self.logprobs = logprobs
        self._openai = openai
        self._client = openai.OpenAI(
            base_url=self.base_url, api_key=api_key or "none", timeout=timeout, max_retries=0
        )

    def check_reachable(self, timeout: float = 10.0) -> None:
        """Fail fast, naming the URL, when nothing answers there (any HTTP answer will do)."""
        import urllib.error
        import urllib.request

        url = f"{self.base_url}/models"
        try:
            urllib.request.urlopen(url, timeout=timeout).close()
        except urllib.error.HTTPError:
            pass  # it answered
        except (OSError, ValueError) as err:
            raise BackendError(
                f"cannot reach the labelling endpoint {self.base_url} ({type(err).__name__}: "
                f"{err}); start the server or pass the right --base-url"
            ) from None

    def complete(self, messages: list[dict[str, str]], schema: dict | None = None) -> Completion:
        o = self._openai
        retryable = (
            o.APITimeoutError,
            o.APIConnectionError,
            o.RateLimitError,
            o.InternalServerError,
            o.APIResponseValidationError,
            ValueError,  # a body that is not JSON
        )
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            sent_schema, sent_logprobs = schema is not None and self.json_schema, self.logprobs
            try:
                return self._once(messages, schema, attempt + 1)
            except o.BadRequestError as err:
                if sent_schema and "response_format" in str(err):
                    log.warning("%s refuses response_format; asking without it", self.base_url)
                    self.json_schema = False
                    continue
                if sent_logprobs and "logprobs" in str(err):
                    log.warning("%s refuses logprobs; asking without them", self.base_url)
                    self.logprobs = False
                    continue
                raise BackendError(f"{self.base_url} refused the request: {err}") from None
            except (o.AuthenticationError, o.PermissionDeniedError, o.NotFoundError) as err:
                raise BackendError(
                    f"{self.base_url} answered {err.status_code}: {err.message}; check the "
                    "API key, the model name and the base URL"
                ) from None
            except retryable as err:
                last = err
                if attempt == self.max_retries:
                    break
                delay = self._delay(attempt, err)
                log.info("%s: %s; retry %d in %.1fs", self.base_url, _why(err), attempt + 1, delay)
                time.sleep(delay)
        raise BackendError(
            f"{self.base_url} failed {self.max_retries + 1} times; last: {_why(last)}"
        )

    def _once(self, messages, schema, attempt: int) -> Completion:  # noqa: ANN001
        extra = {}
        if schema is not None and self.json_schema:
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "relevance", "schema": schema, "strict": True},
            }
        r = self._client.chat.completions.create(
            model=self.model,
            messages=messages,
            temperature=0,
            max_tokens=self.max_tokens,
            **({"logprobs": True, "top_logprobs": 10} if self.logprobs else {}),
            **extra,
        )
        if not getattr(r, "choices", None):
            raise ValueError("response without choices")
        usage = r.usage
        lp = getattr(r.choices[0], "logprobs", None)
        tokens = None
        if lp is not None and getattr(lp, "content", None):
            tokens = [
                (t.token, {a.token: a.logprob for a in (t.top_logprobs or [])}) for t in lp.content
            ]
        return Completion(
            text=r.choices[0].message.content or "",
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            attempts=attempt,
            logprobs=tokens,
        )

    def _delay(self, attempt: int, err: Exception) -> float:
        delay = self.backoff * 2**attempt * (0.5 + random.random())
        response = getattr(err, "response", None)
        if response is not None:
            try:
                delay = max(delay, float(response.headers.get("retry-after", 0)))
            except (TypeError, ValueError):
                pass
        return min(delay, 60.0)


def _why(err: Exception | None) -> str:
    if err is None:
        return "no answer"
    status = getattr(err, "status_code", None)
    return f"{type(err).__name__}" + (f" {status}" if status else "") + f": {err}"
