"""Every error leaves as the OpenAI envelope, mapped here and only here, by class."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import BridgeError
from .allow import allow_header, methods_of

log = logging.getLogger(__name__)


def envelope(
    status: int,
    message: str,
    type_: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


_SCALAR_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "none", "any"})


def _field_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` without "body" and without pydantic's union-branch tags.

    pydantic names the branch of a union it tried (``str``, ``list[str]``, ``function-after[...]``)
    and, in a tagged union, the tag value; neither is a field the client sent.
    """
    out: list[Any] = []
    skip_tag = False
    for p in loc:
        if p == "body" and not out:
            continue
        if isinstance(p, str) and (p in _SCALAR_TAGS or ("[" in p and p.endswith("]"))):
            skip_tag = skip_tag or "tagged-union[" in p
            continue
        if skip_tag and isinstance(p, str):
            skip_tag = False  # the discriminator's value, e.g. "text" in content[0].text.text
            continue
        out.append(p)
    return tuple(out)


def _loc(loc: tuple[Any, ...]) -> str | None:
    out = ""
    for p in _field_path(loc):
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or None


def _primary(errors: list[dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """The error to report, and how many errors concern other fields.

    A value that fails a union fails every branch; the branch that got furthest says most
    (``content[0].text`` missing beats "content should be a string"), and a failed constraint
    beats a wrong type. Branches that all failed on type are merged: "a valid string or a
    valid list".
    """
    first = errors[0]
    field = _field_path(tuple(first.get("loc", ())))
    same = [e for e in errors if _field_path(tuple(e.get("loc", ())))[: len(field)] == field]
    depth = max(len(_field_path(tuple(e.get("loc", ())))) for e in same)
    deepest = [e for e in same if len(_field_path(tuple(e.get("loc", ())))) == depth]
    chosen = [e for e in deepest if not str(e.get("type", "")).endswith("_type")] or deepest
    best = dict(chosen[0])
    msgs = list(dict.fromkeys(str(e.get("msg", "")) for e in chosen))
    if len(msgs) > 1 and all(m.startswith("Input should be ") for m in msgs):
        best["msg"] = "Input should be " + " or ".join(m[len("Input should be ") :] for m in msgs)
    return best, len(errors) - len(same)


def _describe(err: dict[str, Any]) -> str:
    where = _loc(tuple(err.get("loc", ())))
    if err.get("type") == "json_invalid":
        ctx = err.get("ctx", {}).get("error", "")
        return (
            f"The request body is not valid JSON ({ctx})."
            if ctx
            else "The request body is not valid JSON."
        )
    if tuple(err.get("loc", ())) == ("body",):
        if isinstance(err.get("input"), (bytes, str)):
            return (
                "The request body must be a JSON object; it was not parsed as JSON "
                "(send it with Content-Type: application/json)."
            )
        return "The request body must be a JSON object."
    if err.get("type") == "missing":
        return f"Missing required field '{where}'."
    return f"Invalid value for '{where}': {err.get('msg')}." if where else str(err.get("msg"))


def error_response(exc: BridgeError) -> JSONResponse:
    """The response for a ``BridgeError``: its status, type, code and param, in the envelope."""
    if exc.status_code >= 500 and exc.status_code not in (501, 503):  # a capability; stopping
        log.error("%s: %s", type(exc).__name__, exc.message)
    headers = {"Retry-After": "1"} if exc.status_code in (429, 503) else None
    if exc.status_code == 501:  # a capability the model lacks: asking again will not help
        headers = {"x-should-retry": "false"}  # honoured by the OpenAI SDKs (and litellm's)
    return envelope(exc.status_code, exc.message, exc.error_type, exc.param, exc.code, headers)


async def _on_bridge_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BridgeError)
    return error_response(exc)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    first, others = _primary(errors) if errors else ({"msg": "invalid request"}, 0)
    if first.get("type") == "json_invalid" or first.get("loc") == ("body",):
        param = None
    else:
        param = _loc(tuple(first.get("loc", ())))
    message = _describe(first)
    if others:
        message += f" ({others} more problem(s) in the request.)"
    return envelope(400, message, "invalid_request_error", param, "invalid_request")


def _body_problem(cause: BaseException | None) -> str | None:
    """Why FastAPI could not parse a body, in words (it says only 'error parsing the body')."""
    if isinstance(cause, UnicodeDecodeError):
        return (
            f"The request body is not valid UTF-8 ({cause.reason} at byte {cause.start}); "
            "send JSON encoded as UTF-8."
        )
    if isinstance(cause, RecursionError):
        return "The request body is nested too deeply to parse as JSON."
    return None


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = _body_problem(exc.__cause__) if exc.status_code == 400 else None
    if message is not None:
        return envelope(400, message, type_, None, "invalid_request")
    if exc.status_code == 404 and exc.detail == "Not Found":  # no route matched
        return envelope(
            404,
            f"No route {request.method} {request.url.path}. This server "
            f"serves: {', '.join(_routes(request))}.",
            type_,
            None,
            "unknown_route",
        )
    headers = dict(exc.headers) if exc.headers else {}
    detail = str(exc.detail)
    if exc.status_code == 405:  # Starlette names the first matching route's methods only
        allowed = allow_header(methods_of(request.scope) or ())
        headers["Allow"] = allowed
        detail = f"Method Not Allowed: {request.method} {request.url.path}; allowed: {allowed}."
    return envelope(exc.status_code, detail, type_, None, None, headers or None)


def _routes(request: Request) -> list[str]:
    """'METHOD /path' of every documented route (the OpenAPI schema's, built once)."""
    paths = request.app.openapi().get("paths", {})
    return [f"{m.upper()} {p}" for p, ops in paths.items() for m in ops]


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return envelope(
        500,
        "Internal server error; the server log has the details.",
        "internal_error",
        None,
        "internal_error",
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(BridgeError, _on_bridge_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(json.JSONDecodeError, _on_validation_json)
    app.add_exception_handler(Exception, _on_unexpected)


async def _on_validation_json(request: Request, exc: Exception) -> JSONResponse:
    return envelope(
        400,
        f"The request body is not valid JSON ({exc}).",
        "invalid_request_error",
        None,
        "invalid_request",
    )
