"""Checks on text that arrives in requests."""

from __future__ import annotations

from ..errors import InvalidRequest


def require_encodable(text: str, param: str) -> None:
    """Refuse text that has no UTF-8 form (a lone UTF-16 surrogate, sent as JSON \\ud800)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"{param} contains a lone UTF-16 surrogate at position {exc.start}; send valid "
            "Unicode text.", param=param) from None
