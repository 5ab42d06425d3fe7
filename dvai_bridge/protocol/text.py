"""Checks on text that arrives in requests."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ..errors import InvalidRequest


def require_encodable(text: str, param: str) -> None:
    """Refuse text that has no UTF-8 form (a lone UTF-16 surrogate, sent as JSON \\ud800)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"{param} contains a lone UTF-16 surrogate at position {exc.start}; send valid "
            "Unicode text.",
            param=param,
        ) from None


def require_text(value: Any, param: str = "") -> None:
    """``require_encodable`` on every string in a request: field values, list items and
    object keys (``stop``, ``name``, ``user``, tool descriptions and arguments as well as
    ``content``); the 400 names the first field that holds a lone surrogate."""
    if isinstance(value, str):
        if not value.isascii():
            require_encodable(value, param or "body")
    elif isinstance(value, BaseModel):
        fields = {**value.__dict__, **(value.model_extra or {})}
        for key, item in fields.items():
            require_text(item, f"{param}.{key}" if param else key)
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{param}.{key}" if param else str(key)
            if isinstance(key, str) and not key.isascii():
                require_encodable(key, param or "body")
            require_text(item, where)
    elif isinstance(value, (list, tuple)):
        if value and isinstance(value[0], (int, float)):
            return  # token ids: validated lists hold one type
        for i, item in enumerate(value):
            require_text(item, f"{param}[{i}]")
