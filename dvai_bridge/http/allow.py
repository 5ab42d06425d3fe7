"""The methods a path really serves, for ``Allow`` (on 405 and on plain OPTIONS alike)."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.routing import Match
from starlette.types import Scope

_PROBED = ("GET", "POST", "PUT", "PATCH", "DELETE")


def methods_of(scope: Scope) -> set[str] | None:
    """The methods the app serves on this path; None when no route has the path.

    Each method is tried against the routes (nested routers included) as the router would.
    """
    routes = getattr(getattr(scope.get("app"), "router", None), "routes", ())
    allowed = {
        m
        for m in _PROBED
        if any(r.matches({**scope, "method": m})[0] is Match.FULL for r in routes)
    }
    if allowed or any(r.matches(scope)[0] is not Match.NONE for r in routes):
        return allowed
    return None


def allow_header(methods: Iterable[str]) -> str:
    """``Allow``'s value: the methods, HEAD where GET is (``HeadAsGet``), and OPTIONS."""
    names = set(methods) | {"OPTIONS"}
    if "GET" in names:
        names.add("HEAD")
    return ", ".join(sorted(names))
