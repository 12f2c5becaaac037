"""``hirex serve`` through a real server process on 127.0.0.1."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest
import torch

from hirex.index.files import load_index
from hirex.index.search import beam_search
from hirex.models.user_batch import UserBatch
from hirex.runs import load_run
from tests.serve.conftest import AUTH


@pytest.fixture(scope="module")
def library(served_run):
    """The same model, index and histories, in this process: what the server must match."""
    run = load_run(served_run, "cpu")
    model, index = load_index(served_run / "index")
    return run, model, index


def post(server, body, **kw):
    return httpx.post(f"{server.url}/v1/retrieve", json=body, timeout=30, **kw)


def test_retrieval_matches_the_library(server, library):
    run, model, index = library
    hist = run.dataset.history("test")
    users = np.array([0, 5, 17, 101, 399])
    want = beam_search(model, index, users, hist, 10, 4, exclude=hist)
    body = {"queries": [{"user": int(u)} for u in users], "k": 10, "beam": 4}
    got = post(server, body).json()["results"]
    for b, row in enumerate(got):
        assert row["user"] == int(users[b])
        assert row["items"] == want.topk.ids[b][want.topk.ids[b] >= 0].tolist()
        assert np.allclose(row["scores"], want.topk.scores[b].numpy(), atol=1e-5)
        assert row["items_scored"] == int(want.items_scored[b])
    # An ad-hoc history: a user the model has not seen, its history excluded.
    history = [3, 8, 40]
    want = beam_search(
        model,
        index,
        UserBatch.from_histories([history]),
        None,
        5,
        8,
        exclude_ids=[np.array(history)],
    )
    one = post(server, {"history": history, "k": 5, "beam": 8}).json()
    assert one["items"] == want.topk.ids[0].tolist() and "user" not in one
    # Per-query k and beam inside a batch equal the single queries.
    batch = post(server, {"queries": [{"user": 5, "k": 3}, {"user": 5, "beam": [8, 32]}]}).json()
    assert batch["results"][0] == post(server, {"user": 5, "k": 3}).json()
    assert batch["results"][1] == post(server, {"user": 5, "beam": [8, 32]}).json()
    assert len(batch["results"][1]["items"]) == 20  # the service's default k
    # exclude and keep_seen
    top = post(server, {"user": 5, "k": 5}).json()["items"]
    assert top[0] not in post(server, {"user": 5, "k": 5, "exclude": [top[0]]}).json()["items"]
    seen = set(hist.items[hist.indptr[5] : hist.indptr[6]].tolist())
    kept = post(server, {"user": 5, "k": 200, "beam": 1000, "keep_seen": True}).json()["items"]
    assert seen <= set(kept)


BIG = b'{"user": 1, "exclude": [' + b",".join([b"1"] * 600_000) + b"]}"


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "message"),
    [
        ("POST", "/v1/retrieve", b'{"user": 1, "k": 5', {}, 400, "not valid JSON"),
        ("POST", "/v1/retrieve", b"", {}, 400, "body is missing"),
        ("POST", "/v1/retrieve", b"[1, 2]", {}, 422, "valid dictionary"),
        ("POST", "/v1/retrieve", b'{"user": 1, "k": "ten"}', {}, 422, "k: Input should be"),
        ("POST", "/v1/retrieve", b'{"user": 1, "k": 0}', {}, 422, "k must be an integer from 1"),
        ("POST", "/v1/retrieve", b'{"user": 1, "k": 1001}', {}, 422, "from 1 to 1000"),
        ("POST", "/v1/retrieve", b'{"user": 1, "topk": 3}', {}, 422, "topk: Extra inputs"),
        ("POST", "/v1/retrieve", b'{"user": 123456}', {}, 422, "unknown user id [123456]"),
        ("POST", "/v1/retrieve", b'{"user": "abc"}', {}, 422, "ids of this data are integers"),
        ("POST", "/v1/retrieve", b'{"user": true}', {}, 422, "user"),
        ("POST", "/v1/retrieve", b'{"history": [1, 99999]}', {}, 422, "unknown history item ids"),
        ("POST", "/v1/retrieve", b'{"history": []}', {}, 422, "history is empty"),
        ("POST", "/v1/retrieve", b'{"user": 1, "history": [2]}', {}, 422, "either a user id"),
        ("POST", "/v1/retrieve", b"{}", {}, 422, "either a user id"),
        ("POST", "/v1/retrieve", b'{"user": 1, "beam": [1, 2, 3]}', {}, 422, "beam needs 2"),
        ("POST", "/v1/retrieve", b'{"user": 1, "beam": 0}', {}, 422, "positive widths"),
        ("POST", "/v1/retrieve", b'{"user": 1, "exclude": [77777]}', {}, 422, "exclude item"),
        ("POST", "/v1/retrieve", b'{"queries": []}', {}, 422, "give 1 to 256 queries"),
        ("POST", "/v1/retrieve", b'{"queries": [{"user": 1}, {"k": 2}]}', {}, 422, "query 1:"),
        ("POST", "/v1/retrieve", BIG, {}, 413, "over the limit of 1048576 bytes"),
        ("PUT", "/v1/items/5", b'{"embedding": [1.0]}', {}, 401, "Authorization: Bearer"),
        ("PUT", "/v1/items/5", b'{"embedding": [1.0]}', {"Authorization": "Bearer no"}, 401, ""),
        ("PUT", "/v1/items/5", b'{"embedding": [1.0]}', AUTH, 422, "must hold 1 x 16 numbers"),
        ("PUT", "/v1/items/5", b'{"embedding": ["a"]}', AUTH, 422, "embedding"),
        ("PUT", "/v1/items/-5", b'{"embedding": [1.0]}', AUTH, 422, "non-negative integers"),
        ("PUT", "/v1/items/5", b'{"text": "red shoes"}', AUTH, 422, "no text features"),
        ("PUT", "/v1/items/5", b"{}", AUTH, 422, "embedding or its text"),
        ("PUT", "/v1/items/x", b'{"embedding": [1.0]}', AUTH, 422, "ids of this data are integers"),
        ("DELETE", "/v1/items/5", b"", {}, 401, "Authorization"),
        ("DELETE", "/v1/items/99999", b"", AUTH, 404, "not in the index"),
        ("GET", "/v1/items/99999", b"", {}, 404, "not in the index"),
        ("GET", "/v1/nothing", b"", {}, 404, ""),
        # 60,000 levels of nesting (120 KB): refused before the JSON parser recurses into it.
        ("POST", "/v1/retrieve", b"[" * 60000 + b"]" * 60000, {}, 400, "nested 60000 levels"),
        ("POST", "/v1/retrieve", b'{"user": ' * 40 + b"1" + b"}" * 40, {}, 400, "at most 32"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_problem(
    server, method, path, body, headers, status, message
):
    r = httpx.request(method, f"{server.url}{path}", content=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    assert message in r.json().get("error", r.json().get("detail", "")), r.text
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # and the server is fine


def test_a_chunked_body_over_the_limit_is_refused_too(server):
    def chunks():
        for _ in range(20):
            yield b" " * 100_000

    r = httpx.post(f"{server.url}/v1/retrieve", content=chunks(), timeout=30)
    assert r.status_code == 413


def test_non_finite_embeddings_are_refused(server):
    body = b'{"embedding": [' + b",".join([b"1e999"] * 16) + b"]}"
    r = httpx.put(f"{server.url}/v1/items/5", content=body, headers=AUTH, timeout=30)
    assert r.status_code == 422 and "NaN or infinite" in r.json()["error"]


def test_metrics_are_prometheus_text(server):
    post(server, {"user": 1})
    text = httpx.get(f"{server.url}/metrics").text
    assert 'hirex_requests_total{route="/v1/retrieve",status="200"}' in text
    assert "hirex_request_seconds_bucket" in text and "hirex_items_scored_count" in text
    assert "hirex_index_items_active 200.0" in text


def embedding_for(library, user: int, scale: float = 30.0) -> list[float]:
    """An item embedding that the model scores far above the rest for ``user``."""
    run, model, _ = library
    batch = UserBatch.from_interactions(run.dataset.history("test"), np.array([user]))
    with torch.no_grad():
        u = model.encode_users(batch)[0, 0]
    return (scale * u / u.norm()).tolist()


def test_updates_are_durable_across_a_restart_and_a_kill_9(served_run, server_factory, library):
    s = server_factory(served_run).start()
    emb = embedding_for(library, 7)
    r = httpx.put(f"{s.url}/v1/items/5000", json={"embedding": emb}, headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.json()["created"] is True
    assert post(s, {"user": 7, "k": 3}).json()["items"][0] == 5000
    gone = post(s, {"user": 7, "k": 3}).json()["items"][1]
    assert httpx.delete(f"{s.url}/v1/items/{gone}", headers=AUTH).status_code == 200
    before = post(s, {"user": 7, "k": 10}).json()
    assert gone not in before["items"]
    assert s.stop() in (0, -15)  # clean shutdown (uvicorn re-raises SIGTERM once it is done)
    s.start()
    health = httpx.get(f"{s.url}/healthz").json()
    assert health["journal_records"] == 0 and health["applied_seq"] == 2  # snapshot at shutdown
    assert post(s, {"user": 7, "k": 10}).json() == before
    assert httpx.get(f"{s.url}/v1/items/{gone}").status_code == 404

    # kill -9 while a client streams updates: every acknowledged one survives.
    acked: dict[int, list[float]] = {}
    rng = np.random.default_rng(0)
    stop = threading.Event()

    def writer():
        with httpx.Client(timeout=10) as c:
            for i in range(10_000):
                if stop.is_set():
                    return
                e = rng.standard_normal(16).astype(np.float32).tolist()
                try:
                    r = c.put(f"{s.url}/v1/items/{6000 + i}", json={"embedding": e}, headers=AUTH)
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 200:
                    acked[6000 + i] = e

    t = threading.Thread(target=writer)
    t.start()
    while len(acked) < 25 and t.is_alive():
        threading.Event().wait(0.01)
    s.kill()
    stop.set()
    t.join(30)
    assert len(acked) >= 25
    s.start()
    with httpx.Client(timeout=10) as c:
        for item, e in acked.items():
            r = c.get(f"{s.url}/v1/items/{item}", params={"embedding": "true"})
            assert r.status_code == 200, f"acknowledged item {item} lost"
            assert np.allclose(r.json()["embedding"], [e])
    assert post(s, {"user": 7, "k": 1}).json()["items"] == [5000]


def test_readers_during_updates_see_the_old_or_the_new_index(served_run, server_factory, library):
    s = server_factory(served_run).start()
    query = {"queries": [{"user": 11, "k": 5}, {"user": 3, "k": 5}]}
    old = post(s, query).json()
    emb = embedding_for(library, 11)
    assert httpx.put(f"{s.url}/v1/items/7000", json={"embedding": emb}, headers=AUTH).is_success
    new = post(s, query).json()
    assert new != old and new["results"][0]["items"][0] == 7000
    seen, errors, stop = [], [], threading.Event()

    def reader():
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                r = c.post(f"{s.url}/v1/retrieve", json=query)
                if r.status_code != 200:
                    errors.append(r.text)
                else:
                    seen.append(r.json())

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for t in readers:
        t.start()
    with httpx.Client(timeout=30) as c:
        for _ in range(15):
            assert c.delete(f"{s.url}/v1/items/7000", headers=AUTH).status_code == 200
            r = c.put(f"{s.url}/v1/items/7000", json={"embedding": emb}, headers=AUTH)
            assert r.status_code == 200
    stop.set()
    for t in readers:
        t.join(30)
    assert not errors
    assert len(seen) > 10

    def items(r):  # concurrent calls are batched together: compare rankings, not float bits
        return [q["items"] for q in r["results"]]

    assert all(items(r) in (items(old), items(new)) for r in seen)


def test_a_corrupt_index_is_a_clear_start_up_error(served_run, server_factory, tmp_path):
    import shutil

    broken = tmp_path / "run"
    shutil.copytree(served_run, broken)
    tensors = broken / "index" / "index.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-10] ^= 0xFF
    tensors.write_bytes(bytes(data))
    s = server_factory(broken).start(wait=False)
    assert s.proc.wait(120) == 2
    assert "does not match its checksum" in s.output()


def test_the_api_is_described_for_openapi_clients(server):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/retrieve", "/v1/items/{item_id}", "/healthz", "/metrics"} <= set(spec["paths"])
    body = spec["paths"]["/v1/retrieve"]["post"]["requestBody"]["content"]["application/json"]
    single, batch = body["schema"]["oneOf"]
    assert single["oneOf"] == [{"required": ["user"]}, {"required": ["history"]}]
    assert batch["required"] == ["queries"]
    assert body["schema"]["examples"][0] == {"user": 0, "k": 10}
    # Ids, k and the embedding's shape are those of this service.
    assert single["properties"]["user"] == {"type": "integer", "minimum": 0, "maximum": 399}
    assert single["properties"]["k"]["anyOf"][0]["maximum"] == 1000
    put = spec["paths"]["/v1/items/{item_id}"]["put"]
    embedding = put["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert set(embedding) == {"embedding"}  # no text: this model has no text features
    assert embedding["embedding"]["oneOf"][0]["minItems"] == 16
    (param,) = put["parameters"]
    assert param["schema"]["pattern"] == "^[0-9]{1,18}$"
    # The status codes the service sends, each with the body it sends: {"error": "..."}.
    paths = spec["paths"]
    codes = {
        ("/v1/retrieve", "post"): {"200", "400", "413", "422"},
        ("/v1/items/{item_id}", "put"): {"200", "400", "401", "413", "422"},
        ("/v1/items/{item_id}", "delete"): {"200", "401", "404", "422"},
        ("/v1/items/{item_id}", "get"): {"200", "404", "422"},
    }
    error = spec["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["error"]
    for (path, method), want in codes.items():
        responses = paths[path][method]["responses"]
        assert set(responses) == want, (path, method, set(responses))
        for code in want - {"200"}:
            schema = responses[code]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, method, code)
    assert "HTTPValidationError" not in str(spec)  # FastAPI's detail-array body: never sent
    assert "text/plain" in str(paths["/metrics"]["get"]["responses"]["200"]["content"])
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert paths["/v1/items/{item_id}"]["put"]["security"] == [{"HTTPBearer": []}]
    # A wrong method is a 405 with the Allow header, in the service's error body.
    r = httpx.request("PATCH", f"{server.url}/v1/retrieve", timeout=30)
    assert r.status_code == 405 and "POST" in r.headers["allow"] and "error" in r.json()
    # ... listing every method of the path, though each has a route of its own.
    r = httpx.request("OPTIONS", f"{server.url}/v1/items/0", timeout=30)
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET, PUT"


def test_a_port_in_use_is_a_clear_error_before_anything_is_served(served_run, capsys, caplog):
    import socket

    from hirex.cli.main import main

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        assert main(["serve", "--run", str(served_run), "--port", str(port)]) == 2
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err
    assert "serving" not in caplog.text


def test_docs_pages_work_offline(server):
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = httpx.get(f"{server.url}{page}", timeout=30)
        assert html.status_code == 200
        assert f"/docs-assets/{asset}" in html.text and "cdn." not in html.text
        js = httpx.get(f"{server.url}/docs-assets/{asset}", timeout=30)
        assert js.status_code == 200 and len(js.content) > 100_000
