"""The OpenAPI request schemas of one service: the ids, k, beams and embeddings it accepts.

Written from the service (its id tables, its index's levels and embedding shape, its limits), so
that a request that fits the schema is one the service accepts, and a client generated from the
document (or a fuzzer such as schemathesis) sends valid requests.  Ids are described exactly
where that is short: integer ids 0..n-1 as a range, up to ``MAX_ENUM`` other ids as a list;
beyond that as their type only (an unknown id is then a 422 naming it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hirex.serve.service import MAX_ABS, MAX_BEAM

if TYPE_CHECKING:
    from hirex.serve.service import IdTable, RetrievalService

MAX_ENUM = 1000
"""Ids listed in the schema at most."""
ITEM_ID_PATTERN = "^[0-9]{1,18}$"
"""Integer item ids in a URL: digits, small enough for int64."""


def id_schema(table: IdTable) -> dict[str, Any]:
    """The JSON schema of one id of ``table`` (its ids at the time the app is made)."""
    raw = table.raw
    if table.integer:
        if raw == list(range(len(raw))):
            return {"type": "integer", "minimum": 0, "maximum": max(len(raw) - 1, 0)}
        if len(raw) <= MAX_ENUM:
            return {"type": "integer", "enum": sorted(raw)}
        return {"type": "integer", "minimum": 0}
    if len(raw) <= MAX_ENUM:
        return {"type": "string", "enum": sorted(raw)}
    return {"type": "string", "minLength": 1}


def item_id_path_schema(service: RetrievalService) -> dict[str, Any]:
    """The ``{item_id}`` of the item URLs: any id of the data's type (PUT adds new ones)."""
    if service.items.integer:
        return {"type": "string", "pattern": ITEM_ID_PATTERN, "examples": ["0"]}
    return {"type": "string", "minLength": 1, "examples": [str(service.items.raw[0])]}


def retrieve_schema(service: RetrievalService) -> dict[str, Any]:
    """POST /v1/retrieve: one query (a user or a history) or a batch of them."""
    levels = len(service.index.sizes)
    item = id_schema(service.items)
    width = {"type": "integer", "minimum": 1, "maximum": MAX_BEAM}
    options = {  # null: the service's default
        "k": _nullable({"type": "integer", "minimum": 1, "maximum": service.max_k}),
        "beam": {
            "anyOf": [
                width,
                {"type": "array", "items": width, "minItems": 1, "maxItems": 1},  # every level
                {"type": "array", "items": width, "minItems": levels, "maxItems": levels},
                {"type": "null"},
            ]
        },
        "exclude": _nullable({"type": "array", "items": item}),
        "keep_seen": _nullable({"type": "boolean"}),
    }
    query = {
        "type": "object",
        "properties": {
            "user": id_schema(service.users),
            "history": {"type": "array", "items": item, "minItems": 1},
            **options,
        },
        "additionalProperties": False,
        "oneOf": [{"required": ["user"]}, {"required": ["history"]}],
    }
    batch = {
        "type": "object",
        "properties": {
            "queries": {
                "type": "array",
                "items": query,
                "minItems": 1,
                "maxItems": service.max_batch,
            },
            **options,
        },
        "required": ["queries"],
        "additionalProperties": False,
    }
    examples = [{"user": service.users.raw[0], "k": 10}]
    examples.append({"history": service.items.raw[:3], "k": 5})
    return {"oneOf": [query, batch], "examples": examples}


def item_schema(service: RetrievalService) -> dict[str, Any]:
    """PUT /v1/items/{item_id}: the item's embedding (flat or Q lists of D), or its text."""
    q, d = service.index.item_emb.shape[1:]
    number = {"type": "number", "minimum": -MAX_ABS, "maximum": MAX_ABS}
    flat = {"type": "array", "items": number, "minItems": q * d, "maxItems": q * d}
    nested = {
        "type": "array",
        "items": {"type": "array", "items": number, "minItems": d, "maxItems": d},
        "minItems": q,
        "maxItems": q,
    }
    properties: dict[str, Any] = {"embedding": {"oneOf": [flat, nested]}}
    one_of = [{"required": ["embedding"]}]
    if service.model.cfg.item_text:
        properties["text"] = {"type": "string", "pattern": "[A-Za-z0-9]"}
        one_of.append({"required": ["text"]})
    return {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "oneOf": one_of,
        "examples": [{"embedding": [0.0] * (q * d)}],
    }


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def request_body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for an endpoint that parses its own JSON body."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
