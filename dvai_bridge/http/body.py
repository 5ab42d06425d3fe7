"""JSON request bodies parsed and validated off the event loop.

FastAPI parses a declared body on the event loop: 3.5 M token lists (14 MB) took 25 s of
``json.loads`` and validation there, and every other client, ``/health`` included, waited
(issue 13 item 2). The routes that take large bodies read the bytes here and hand parsing
and validation to the service's pre-processing pool; what comes back, or the 400, is what
FastAPI would have produced (same content-type rule, same ``RequestValidationError`` shape,
so ``errors.py`` maps it as before). The OpenAPI schema still documents the body.

Off the loop is not enough for ``json.loads``: one call holds the GIL until the whole document
is built (3.5 M lists: ~3 s), and the loop waits for the GIL. So a body is first measured
(``json_size.measure``): more than ``MAX_JSON_VALUES`` array items and object members is a
400 naming the top-level field that holds most of them, before the body is parsed.

For the same reason, bodies over ``LARGE_BODY_BYTES`` are parsed one at a time: parsing holds
the GIL, so two at once finish no sooner, and each one more on a thread is one more contender
the loop waits behind (four 15 MiB bodies at once stalled ``/health`` for ~0.7 s on 2 cores).
"""

from __future__ import annotations

import email.message
import json
import threading
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from ..errors import InvalidRequest
from .json_size import measure

M = TypeVar("M", bound=BaseModel)

MAX_JSON_VALUES = 1 << 18  # 262,144: ~0.25 s of json.loads at worst on a slow core
LARGE_BODY_BYTES = 1 << 20
_one_large = threading.Lock()


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def parse(model: type[M], raw: bytes, content_type: str | None) -> M:
    """``raw`` as ``model``, or the exception FastAPI would raise for it."""
    if len(raw) > LARGE_BODY_BYTES:
        with _one_large:
            return _parse(model, raw, content_type)
    return _parse(model, raw, content_type)


def _parse(model: type[M], raw: bytes, content_type: str | None) -> M:
    if not raw:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    if not _is_json(content_type):
        data: Any = raw
    else:
        values, heaviest = measure(raw, MAX_JSON_VALUES)
        if values > MAX_JSON_VALUES:
            where = f", most of them in '{heaviest}'" if heaviest else ""
            raise InvalidRequest(
                f"The request body holds {values} JSON values (array items and object "
                f"members){where}; at most {MAX_JSON_VALUES} are accepted. Send fewer "
                "prompts, messages or token ids.",
                param=heaviest,
            )
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise RequestValidationError(
                [
                    {
                        "type": "json_invalid",
                        "loc": ("body", e.pos),
                        "msg": "JSON decode error",
                        "input": {},
                        "ctx": {"error": e.msg},
                    }
                ]
            ) from e
        except Exception as e:  # undecodable bytes, nesting too deep: errors.py words them
            raise HTTPException(400, "There was an error parsing the body") from e
    try:
        # strict: JSON types as the schema states them (OpenAI refuses "stream": 0 and
        # "max_tokens": true; pydantic's lax mode would take them as false and 1)
        return model.model_validate(data, strict=True)
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        ) from None


async def parsed_body(request: Request, model: type[M]) -> M:
    raw = await request.body()
    return await request.app.state.service.prep.run(
        parse, model, raw, request.headers.get("content-type")
    )


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting ``model`` as the JSON body (its definitions inlined)."""
    schema = model.model_json_schema()
    body = _inline(schema, schema.get("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}}
