"""``response_format`` and forced tool calls as one grammar for constrained decoding.

``json_object`` is any JSON object; ``json_schema`` is its ``schema`` (draft 2020-12 as
llguidance implements it; a keyword it cannot enforce is refused with a 400 naming it rather
than ignored). ``strict`` is accepted either way: the schema is always enforced.
"""

from __future__ import annotations

import json
from typing import Any

from ..core.grammar import (
    JSON_OPTIONS,
    Grammar,
    GrammarError,
    check_grammar,
    json_schema_grammar,
    lark_grammar,
)
from ..errors import InvalidRequest


def response_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema ``response_format`` asks for; None for text."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise InvalidRequest(
                "response_format.json_schema must be an object with a 'schema'.",
                param="response_format.json_schema",
            )
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "response_format.json_schema.schema must be a JSON schema object.",
                param="response_format.json_schema.schema",
            )
        return schema
    raise InvalidRequest(
        f"response_format type {kind!r} is not supported; use 'text', "
        "'json_object' or 'json_schema'.",
        param="response_format.type",
    )


def grammar_text(schema: dict[str, Any] | None, calls_lark: str | None) -> tuple[str, str] | None:
    """(llguidance grammar, the request field it comes from), or None if unconstrained.

    Forced calls alone: the calls grammar. A schema alone: the schema. Both (tool_choice
    'auto' with a response_format): the reply is either calls or a JSON value.
    """
    if calls_lark and schema is not None:
        rules = calls_lark.replace("start:", "calls:", 1)
        schema = {**schema, "x-guidance": JSON_OPTIONS}
        return lark_grammar(
            f"start: calls | answer\n{rules}answer: %json {json.dumps(schema)}\n"
        ), "response_format"
    if calls_lark:
        return lark_grammar(calls_lark), "tools"
    if schema is not None:
        try:  # validated once, for the backend's tokenizer, by compile_grammar
            return json_schema_grammar(schema), "response_format"
        except GrammarError as exc:
            raise InvalidRequest(
                f"response_format schema cannot be enforced: {exc}",
                param="response_format.json_schema.schema",
            ) from None
    return None


def compile_grammar(text: str, param: str, tokenizer: Any) -> Grammar:
    try:
        return Grammar.compile(text, tokenizer)
    except GrammarError as exc:
        raise _unenforceable(param, exc) from None


def check_grammar_text(text: str, param: str) -> None:
    """Validate without a tokenizer (for a backend that cannot constrain: the client still
    learns what is wrong with its schema before it learns that)."""
    try:
        check_grammar(text)
    except GrammarError as exc:
        raise _unenforceable(param, exc) from None


def _unenforceable(param: str, exc: GrammarError) -> InvalidRequest:
    what = "tool parameters" if param == "tools" else "response_format schema"
    return InvalidRequest(
        f"The {what} cannot be enforced: {exc}",
        param="response_format.json_schema.schema" if param == "response_format" else param,
    )
