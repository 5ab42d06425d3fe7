"""HEAD and plain OPTIONS, answered from the routes the app really has.

    HeadAsGet     HEAD on a GET route is that GET without its body (was 405)
    PlainOptions  OPTIONS that is not a CORS preflight: 204 with ``Allow`` naming the path's
                  methods, or the 404 envelope for a path the server does not have (was 204
                  for any path)

CORS preflights never get here: ``Cors`` answers them.
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .allow import allow_header, methods_of
from .errors import envelope


class HeadAsGet:
    """Serve HEAD through the GET route, sending the headers (Content-Length included) only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class PlainOptions:
    """OPTIONS that is not a preflight: ``Allow`` for a known path, 404 for an unknown one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "OPTIONS":
            return await self.app(scope, receive, send)
        methods = methods_of(scope)
        response: Response
        if methods is None:
            response = envelope(
                404,
                f"No route {scope['path']!r} on this server.",
                "not_found_error",
                None,
                "not_found",
            )
        else:
            response = Response(status_code=204, headers={"Allow": allow_header(methods)})
        await response(scope, receive, send)
