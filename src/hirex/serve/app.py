"""The HTTP API of ``hirex serve`` (FastAPI), over a ``RetrievalService``.

    POST   /v1/retrieve      {"user": ID} or {"history": [ITEM, ...]}, "k", "beam", "exclude",
                             "keep_seen"; or {"queries": [...]} for a batch (top-level fields are
                             the batch's defaults)
    PUT    /v1/items/{id}    {"embedding": [...]} or {"text": "..."}: add or update an item
    DELETE /v1/items/{id}    remove an item
    GET    /v1/items/{id}    the item's path in the index (?embedding=true for its embedding)
    GET    /healthz          200 once the index is loaded
    GET    /metrics          Prometheus text format

Every refused request gets a JSON body {"error": "..."} naming the problem: 400 bad JSON,
401 a missing or wrong bearer token, 404 an unknown item in the URL, 413 a body over the limit,
422 wrong types, unknown ids or values out of range.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request, Response, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hirex.serve.schema import item_id_path_schema, item_schema, request_body, retrieve_schema
from hirex.serve.service import Query, RetrievalService, ServiceError

log = logging.getLogger(__name__)


def _whole(value: Any) -> Any:
    """A JSON number with no fraction (17.0) as the integer it is: JSON Schema's "integer"."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


WholeInt = Annotated[StrictInt, BeforeValidator(_whole)]
Id = WholeInt | StrictStr
NOT_NULL = ("user", "history", "queries", "embedding", "text")
"""Fields that are left out rather than null (which of them is given decides the request)."""
B = TypeVar("B", bound=BaseModel)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class QueryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: Id | None = None
    history: list[Id] | None = None
    k: WholeInt | None = None
    beam: WholeInt | list[WholeInt] | None = None
    exclude: list[Id] | None = None
    keep_seen: StrictBool | None = None


class RetrieveBody(QueryBody):
    """The body the service parses (lenient: nulls mean absent); the schema clients see is
    ``hirex.serve.schema.retrieve_schema``."""

    queries: list[QueryBody] | None = None


class ItemBody(BaseModel):
    """The body of PUT (schema: ``hirex.serve.schema.item_schema``)."""

    model_config = ConfigDict(extra="forbid")
    embedding: list[StrictFloat | StrictInt] | list[list[StrictFloat | StrictInt]] | None = None
    text: StrictStr | None = None


MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def json_depth(body: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest (brackets inside strings do not
    count); malformed text gets a number too, and the parser reports the rest."""
    if b"[" not in body and b"{" not in body:
        return 0
    codes = np.frombuffer(_JSON_STRING.sub(b'""', body), np.uint8)
    step = np.isin(codes, (ord("["), ord("{"))).astype(np.int64)
    step -= np.isin(codes, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, by Content-Length or as they
    stream in (a chunked request has no length).  The body is read here, before any route
    runs, and handed on whole: bodies are small and a route never sees a partial one."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = JSONResponse(
            {"error": f"request body over the limit of {self.limit} bytes"}, 413
        )
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await too_large(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await too_large(scope, receive, send)
                return
        body, sent = b"".join(chunks), False
        depth = json_depth(body)
        if depth > MAX_JSON_DEPTH:
            # The JSON parser would recurse that deep (a RecursionError, a 500) before any
            # validation could say what is wrong.
            await JSONResponse(
                {"error": f"request body nested {depth} levels deep; at most {MAX_JSON_DEPTH}"},
                400,
            )(scope, receive, send)
            return

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # after the body: wait for the disconnect
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class Observe:
    """Count requests by route and status and time them (a plain ASGI wrapper: no task groups
    between the route and the server)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self, service: RetrievalService) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "hirex_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "hirex_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.items_scored = Histogram(
            "hirex_items_scored",
            "items scored by the full model per query",
            buckets=(10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000, 300000, 1000000),
            registry=r,
        )
        self.nodes_scored = Histogram(
            "hirex_nodes_scored",
            "index nodes scored per query",
            buckets=(10, 30, 100, 300, 1000, 3000, 10000, 30000),
            registry=r,
        )
        self.updates = Counter(
            "hirex_item_updates", "acknowledged item changes", ["op"], registry=r
        )
        stats = service.stats
        for name, doc in (
            ("items_active", "items the index can return"),
            ("item_slots", "item slots in the index (active or removed)"),
            ("journal_records", "journaled changes since the last snapshot"),
        ):
            Gauge(f"hirex_index_{name}", doc, registry=r).set_function(
                lambda name=name: stats()[name]
            )


def _local_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc from the assets the fastapi-offline package ships, instead
    of FastAPI's default CDN links, which leave the pages blank without internet access."""
    from importlib.resources import files

    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    assets = files("fastapi_offline") / "static"
    app.mount("/docs-assets", StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - docs",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url="/docs-assets/redoc.standalone.js",
            redoc_favicon_url="/docs-assets/favicon.png",
        )


def create_app(
    service: RetrievalService,
    *,
    token: str | None = None,
    protect_retrieve: bool = False,
    max_body_bytes: int = 1 << 20,
    default_k: int = 20,
) -> FastAPI:
    """The FastAPI app.  ``token``: bearer token for the item endpoints (and for retrieval too
    with ``protect_retrieve``); None leaves them open.  The service is closed (a snapshot of
    pending changes) when the app shuts down."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        yield
        await run_in_threadpool(service.close)

    app = FastAPI(
        title="hirex retrieval service",
        description="Top-k retrieval through a learned hierarchical index, ranked by the full "
        "model, with live item updates.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served below from local assets: /docs works offline
        redoc_url=None,
    )
    _local_docs(app)
    metrics = Metrics(service)
    app.state.service, app.state.metrics = service, metrics

    def auth(
        request: Request,
        _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,  # the scheme
    ) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip(), token):
            raise HTTPException(401, "this endpoint needs the header 'Authorization: Bearer TOKEN'")

    retrieve_auth = [Depends(auth)] if protect_retrieve else []
    locked = {401: _error_doc("no or wrong 'Authorization: Bearer TOKEN'")}
    read_locked = locked if protect_retrieve else {}
    with_body = {
        400: _error_doc("the body is missing, not JSON, or nested too deeply"),
        413: _error_doc("the body is over --max-body-bytes"),
        422: _error_doc("a field does not fit: unknown ids, wrong types, k or beam out of range"),
    }
    id_doc = {422: _error_doc("the item id does not fit this data (e.g. not an integer)")}

    # ---- errors ------------------------------------------------------------------------------
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, err: ServiceError) -> JSONResponse:
        return JSONResponse({"error": err.message}, err.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        headers = dict(err.headers or {})
        if err.status_code == 405:  # every method of the path, not only the first route's
            headers["Allow"] = ", ".join(_allowed(app, request.scope))
        if err.status_code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse({"error": str(err.detail)}, err.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _describe_all(err.errors())}, 422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error ({type(err).__name__}); see the log"}, 500)

    # ---- endpoints ---------------------------------------------------------------------------
    @app.post(
        "/v1/retrieve",
        dependencies=retrieve_auth,
        openapi_extra=request_body(retrieve_schema(service)),
        responses={**with_body, **read_locked},
    )
    async def retrieve(request: Request) -> dict[str, Any]:
        """Top-k items for one query or a batch."""
        body = await _parse(request, RetrieveBody)
        top = body.model_dump(exclude={"queries"}, exclude_none=True)
        if body.queries is None:
            queries, single = [_query(top, default_k)], True
        else:
            if {"user", "history"} & top.keys():
                raise ServiceError(422, "a batch gives user or history inside each query")
            queries = [
                _query({**top, **q.model_dump(exclude_none=True)}, default_k) for q in body.queries
            ]
            single = False
        results = await run_in_threadpool(service.retrieve, queries)
        for r in results:
            metrics.items_scored.observe(r.items_scored)
            metrics.nodes_scored.observe(r.nodes_scored)
        rows = [_result(r) for r in results]
        return rows[0] if single else {"results": rows}

    @app.put(
        "/v1/items/{item_id}",
        dependencies=[Depends(auth)],
        openapi_extra=request_body(item_schema(service)),
        responses={**with_body, **locked},
    )
    async def put_item(item_id: ItemId, request: Request) -> dict[str, Any]:
        """Add an item, or update it, from its embedding or its text."""
        body = await _parse(request, ItemBody)
        out = await run_in_threadpool(service.put_item, item_id, body.embedding, body.text)
        metrics.updates.labels("put").inc()
        return out

    @app.delete(
        "/v1/items/{item_id}",
        dependencies=[Depends(auth)],
        responses={**locked, 404: _error_doc("the item is not in the index"), **id_doc},
    )
    async def delete_item(item_id: ItemId) -> dict[str, Any]:
        out = await run_in_threadpool(service.delete_item, item_id)
        metrics.updates.labels("delete").inc()
        return out

    @app.get(
        "/v1/items/{item_id}",
        dependencies=retrieve_auth,
        responses={**read_locked, 404: _error_doc("the item is not in the index"), **id_doc},
    )
    async def get_item(item_id: ItemId, embedding: bool = False) -> dict[str, Any]:
        return await run_in_threadpool(service.item, item_id, embedding)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", **service.stats()}

    @app.get("/metrics", response_class=PrometheusText)
    async def prometheus() -> Response:
        """Prometheus metrics, in its text format."""
        return PrometheusText(generate_latest(metrics.registry))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = FastAPI.openapi(app)
            for operations in doc["paths"].values():
                for operation in operations.values():
                    for param in operation.get("parameters", []):
                        if param["name"] == "item_id":
                            param["schema"] = item_id_path_schema(service)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_middleware(Observe, metrics=metrics)  # outermost: sees the 413s too
    return app


BEARER = HTTPBearer(auto_error=False, description="the token of `hirex serve --token-file`")
ItemId = Annotated[str, PathParam(description="the item's original id", examples=["0"])]


class ErrorBody(BaseModel):
    """What every error response holds."""

    error: str


class PrometheusText(Response):
    media_type = CONTENT_TYPE_LATEST


def _error_doc(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


def _allowed(app: FastAPI, scope: Scope) -> list[str]:
    """The methods of all the routes matching this request's path."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**scope, "method": ""})
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


async def _parse(request: Request, model: type[B]) -> B:
    """The request body as ``model``, whatever the Content-Type says: 400 when it is not JSON,
    422 naming each field that does not fit."""
    raw = await request.body()
    if not raw.strip():
        raise ServiceError(400, "request body is missing; send a JSON object")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ServiceError(400, f"request body is not valid JSON ({err})") from None
    for fields in [data, *(data.get("queries") or [] if isinstance(data, dict) else [])]:
        if isinstance(fields, dict):
            for name in NOT_NULL:
                if name in fields and fields[name] is None:
                    raise ServiceError(422, f"{name!r} is null; leave it out or give a value")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ServiceError(422, _describe_all(err.errors())) from None


def _query(fields: dict[str, Any], default_k: int) -> Query:
    return Query(
        user=fields.get("user"),
        history=fields.get("history"),
        k=fields.get("k", default_k),
        beam=fields.get("beam"),
        exclude=fields.get("exclude", ()),
        keep_seen=fields.get("keep_seen", False),
    )


def _result(r: Any) -> dict[str, Any]:
    out = {
        "items": r.items,
        "scores": [round(s, 6) for s in r.scores],
        "nodes_scored": r.nodes_scored,
        "items_scored": r.items_scored,
    }
    if r.user is not None:
        out = {"user": r.user, **out}
    if r.history_skipped:
        out["history_skipped"] = r.history_skipped
    return out


def _describe_all(problems: Sequence[Any]) -> str:
    shown = "; ".join(_describe(p) for p in problems[:5])
    return shown + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")


def _describe(problem: Any) -> str:
    loc = ".".join(str(p) for p in problem.get("loc", ()) if p != "body") or "body"
    msg = problem.get("msg", "invalid")
    got = problem.get("input")
    shown = (
        json.dumps(got)[:60] if isinstance(got, str | int | float | bool) else type(got).__name__
    )
    return f"{loc}: {msg} (got {shown})"
