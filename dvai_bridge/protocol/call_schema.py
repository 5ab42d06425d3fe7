"""A function's ``parameters`` schema made fit to sit inside a forced-call grammar.

Two things change when ``parameters`` is embedded in the call object
(``{"name": ..., "arguments": <parameters>}``):

- ``rebased``: references are relative to the root of the schema they were written in
  (``#/$defs/Country``, pydantic's nested models); inside the call they point to
  ``#/properties/arguments/$defs/Country``, so every local ``$ref`` gets the path prefixed.
- ``closed``: an object schema without ``additionalProperties`` lets the model invent keys
  until ``max_tokens``. In a forced call undeclared keys are disallowed unless the schema
  allows them, as llama.cpp and vLLM do (``patternProperties``/``unevaluatedProperties`` and
  the branches of ``allOf``, whose siblings add properties, are left as written).
"""

from __future__ import annotations

from typing import Any

_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_ONE = (
    "items",
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "additionalItems",
)
_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")


def rebased(schema: Any, pointer: str) -> Any:
    """``schema`` with every local ``$ref`` (``#...``) prefixed by ``pointer`` (``#/a/b``)."""
    if isinstance(schema, dict):
        out = {}
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#"):
                out[key] = pointer + value[1:]
            elif key in ("const", "enum", "default", "examples"):
                out[key] = value
            else:
                out[key] = rebased(value, pointer)
        return out
    if isinstance(schema, list):
        return [rebased(v, pointer) for v in schema]
    return schema


def _is_object(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return (
        kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in schema
    )


def closed(schema: Any, *, in_all_of: bool = False) -> Any:
    """``schema`` with ``additionalProperties: false`` on object schemas that say nothing."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: closed(v) for k, v in out[key].items()}
    for key in _ONE:
        if isinstance(out.get(key), dict):
            out[key] = closed(out[key])
    for key in _LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed(v, in_all_of=key == "allOf") for v in out[key]]
    if (
        _is_object(out)
        and not in_all_of
        and not {
            "additionalProperties",
            "patternProperties",
            "unevaluatedProperties",
            "allOf",
            "$ref",
        }
        & out.keys()
    ):
        out["additionalProperties"] = False
    return out
