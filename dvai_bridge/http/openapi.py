"""The OpenAPI schema says which statuses each route really answers, with the error envelope.

FastAPI documents 200 and its own 422; this server answers validation errors 400 (never 422)
and, depending on the route, 401, 403, 404, 408, 413, 429, 500, 501 and 503, each in the
OpenAI envelope. Schemathesis (and any client generator) checks responses against this.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ENVELOPE = "ErrorEnvelope"

_WHY = {
    "400": "The request is malformed; `param` names the field",
    "401": "Missing or wrong API key (only when the server has keys)",
    "403": "Host or Origin not allowed (DNS rebinding, web pages CORS does not allow)",
    "404": "No such model",
    "408": "The request (headers or body) did not arrive in time",
    "413": "The request body is over the size limit",
    "429": "The queue is full; retry after Retry-After",
    "500": "Internal or backend error",
    "501": "This model does not serve this endpoint",
    "503": "Stopping, engine failed, or too many connections; retry after Retry-After",
}

_INFERENCE = ("400", "403", "408", "413", "429", "500", "501", "503")
_READ = ("403", "500", "503")
_ROUTES: dict[tuple[str, str], tuple[str, ...]] = {
    ("post", "/v1/chat/completions"): (*_INFERENCE, "404"),  # model_not_found
    ("post", "/v1/completions"): (*_INFERENCE, "404"),
    ("post", "/v1/embeddings"): (*_INFERENCE, "404"),
    ("get", "/v1/models"): _READ,
    ("get", "/v1/models/{model_id}"): (*_READ, "404"),
    ("post", "/v1/responses"): (*_INFERENCE, "404"),  # previous_response_id not stored
    ("post", "/v1/responses/input_tokens"): (*_INFERENCE, "404"),
    ("get", "/v1/responses/{response_id}"): (*_READ, "404"),
    ("delete", "/v1/responses/{response_id}"): (*_READ, "404"),
    ("get", "/v1/responses/{response_id}/input_items"): (*_READ, "400", "404"),
    ("post", "/models/load"): (*_INFERENCE, "404"),  # several models: load or unload one
    ("post", "/models/unload"): (*_INFERENCE, "404"),
}
_OPEN = frozenset({"/health"})  # answered without a key
_STREAMING = frozenset(
    {
        ("post", "/v1/chat/completions"),
        ("post", "/v1/completions"),
        ("post", "/v1/responses"),
        ("post", "/v1/messages"),
    }
)

_ENVELOPE_SCHEMA = {
    "title": ENVELOPE,
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "code": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
        }
    },
}

_HEALTH_SCHEMA = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "degraded", "error"]},
        "backend": {"type": "string"},
        "model": {"type": "string"},
        "queued": {"type": "integer"},
        "running": {"type": "integer"},
        "reason": {"type": "string"},
        "models": {
            "type": "array",
            "items": {  # several models: each one's state
                "type": "object",
                "required": ["name", "state"],
                "properties": {
                    "name": {"type": "string"},
                    "state": {
                        "type": "string",
                        "enum": ["unloaded", "loading", "loaded", "unloading", "failed"],
                    },
                    "ready": {"type": "boolean"},  # loaded, its engine sound
                },
            },
        },
    },
}


ANTHROPIC_ENVELOPE = "AnthropicErrorEnvelope"
_ANTHROPIC_SCHEMA = {
    "title": ANTHROPIC_ENVELOPE,
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"type": "string", "enum": ["error"]},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}


def _error(status: str, path: str = "") -> dict[str, Any]:
    name = ANTHROPIC_ENVELOPE if path.startswith("/v1/messages") else ENVELOPE
    return {
        "description": _WHY[status],
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
    }


def document_statuses(schema: dict[str, Any], *, keys: bool) -> dict[str, Any]:
    """``schema`` with 422 replaced by what each operation really answers."""
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas[ENVELOPE], schemas[ANTHROPIC_ENVELOPE] = _ENVELOPE_SCHEMA, _ANTHROPIC_SCHEMA
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            if path == "/health":
                responses["200"] = {
                    "description": "Ready",
                    "content": {"application/json": {"schema": _HEALTH_SCHEMA}},
                }
                responses["503"] = {
                    "description": "Not ready: the engine failed or the server is stopping",
                    "content": {"application/json": {"schema": _HEALTH_SCHEMA}},
                }
                responses["403"] = _error("403")
                continue
            if (method, path) in _STREAMING:  # "stream": true answers server-sent events
                ok = responses.setdefault("200", {"description": "Successful Response"})
                ok.setdefault("content", {}).setdefault(
                    "text/event-stream",
                    {
                        "schema": {
                            "description": "each event's data: a chunk object (or an "
                            "error envelope), then the string [DONE]"
                        }
                    },
                )
            statuses = _ROUTES.get((method, path), _INFERENCE if method == "post" else _READ)
            for status in statuses:
                responses.setdefault(status, _error(status, path))
            if keys and path not in _OPEN:
                responses.setdefault("401", _error("401", path))
    schema.get("components", {}).get("schemas", {}).pop("HTTPValidationError", None)
    schema.get("components", {}).get("schemas", {}).pop("ValidationError", None)
    return schema


def install_openapi(app: FastAPI, *, keys: bool) -> None:
    """Serve the corrected schema at ``/openapi.json`` (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_statuses(
                get_openapi(title=app.title, version=app.version, routes=app.routes), keys=keys
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
