"""The OpenAI-compatible backend and the labeller against a fake server process: every
failure mode retried or recorded, never turned into a label, nothing asked twice."""

from __future__ import annotations

import time

import pytest

from hirex.label.backends import BackendError, OpenAIBackend
from hirex.label.cache import LabelCache
from hirex.label.labeller import Labeller
from hirex.label.prompts import Prompt, load_template
from tests.label.conftest import make_pairs


def labeller(url: str, cache_path, **kw) -> Labeller:
    backend = OpenAIBackend(url, "fake", timeout=kw.pop("timeout", 2.0), backoff=0.01, **kw)
    prompt = Prompt.build(load_template("umbrela"), "R")
    return Labeller(prompt, backend, LabelCache(cache_path), "fake", concurrency=2)


def test_labels_are_right_and_cached(fake_server, tmp_path):
    s = fake_server("ok")
    pairs = make_pairs(8)
    lab = labeller(s.url, tmp_path / "c.sqlite")
    run = lab.label(pairs, progress=False)
    assert [r.grade for r in run.labels] == [i % 4 for i in range(8)]
    assert run.requested == 8 and run.cache_hits == 0 and run.prompt_tokens == 800
    again = lab.label(pairs, progress=False)
    assert again.cache_hits == 8 and again.requested == 0
    assert len(s.requests()) == 8  # the second call asked nothing
    assert lab.cache.journal() == {"requests": 8, "duplicates": 0, "reissued": 0, "unfinished": 0}


@pytest.mark.parametrize("mode", ["429", "500", "timeout", "malformed"])
def test_transient_failures_are_retried(fake_server, tmp_path, mode):
    s = fake_server(mode)
    pairs = make_pairs(3)
    run = labeller(s.url, tmp_path / "c.sqlite", timeout=1.0).label(pairs, progress=False)
    assert [r.grade for r in run.labels] == [0, 1, 2]
    assert run.failed == 0
    assert len(s.requests()) == 6  # one failed and one good request per pair


def test_garbage_answer_is_unparsed_not_a_label(fake_server, tmp_path):
    s = fake_server("garbage")
    run = labeller(s.url, tmp_path / "c.sqlite").label(make_pairs(2), progress=False)
    assert all(r.status == "unparsed" and r.grade is None for r in run.labels)
    assert "quite relevant" in run.labels[0].raw
    assert run.unparsed == 2 and len(s.requests()) == 2  # paid for once, kept as unparsed


def test_server_without_response_format(fake_server, tmp_path):
    s = fake_server("no_response_format")
    lab = labeller(s.url, tmp_path / "c.sqlite")
    run = lab.label(make_pairs(3), progress=False)
    assert [r.grade for r in run.labels] == [0, 1, 2]
    assert lab.backend.json_schema is False


def test_persistent_failure_gives_up_and_stores_nothing(fake_server, tmp_path):
    s = fake_server("always500")
    lab = labeller(s.url, tmp_path / "c.sqlite", max_retries=1)
    run = lab.label(make_pairs(9), progress=False)
    assert run.failed == 9 and all(r is None for r in run.labels)
    assert "failed 2 times" in run.errors[0] and s.url in run.errors[0]
    assert lab.cache.count() == 0
    # it stopped asking after three pairs in a row failed, rather than 9 x 2 requests
    assert len(s.requests()) <= 2 * 4


def test_unreachable_endpoint_fails_fast_naming_it(tmp_path):
    from hirex.label.llama_server import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    t = time.monotonic()
    with pytest.raises(BackendError, match=f"cannot reach the labelling endpoint {url}"):
        labeller(url, tmp_path / "c.sqlite").label(make_pairs(2), progress=False)
    assert time.monotonic() - t < 10


def test_bad_base_url():
    with pytest.raises(ValueError, match="must start with http"):
        OpenAIBackend("127.0.0.1:8000", "m")
