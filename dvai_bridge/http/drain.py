"""Stopping without dropping anyone: drain, then end what is left with an error frame.

``Bridge.stop`` (another thread) drives it::

    drain.begin()                       # new requests: 503 shutting_down, Connection: close
    if not drain.wait_idle(grace_s):    # in-flight requests run on for the grace period
        drain.abort()                   # then: streams get an error frame and [DONE],
        drain.wait_idle(...)            #       waiting requests a 503 envelope

Only then is the HTTP server told to exit, which closes the listening socket.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..defaults import SHUTDOWN_GRACE_S
from ..errors import ServiceUnavailable
from .errors import error_response
from .sse import DONE, frame

log = logging.getLogger(__name__)

_REFUSED = "The server is shutting down; retry once it is back."
_ABORTED = "The server shut down before this request finished."


class _Exchange:
    """One request's response, as far as it has been sent."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.ended = False
        self.streaming = False
        self.aborted = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            ctype = Headers(raw=message.get("headers", [])).get("content-type", "")
            self.streaming = ctype.startswith("text/event-stream")
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.ended = True
        await self._send(message)

    async def finish(self, scope: Scope, receive: Receive) -> None:
        """End an aborted response the way a client can understand."""
        if not self.started:
            response = error_response(ServiceUnavailable(_ABORTED))
            response.headers["Connection"] = "close"
            await response(scope, receive, self._send)
        elif not self.ended:
            tail = frame(ServiceUnavailable(_ABORTED).to_openai()) + DONE if self.streaming else b""
            await self._send({"type": "http.response.body", "body": tail, "more_body": False})


class Drain:
    """In-flight requests of one app, shared with the thread that stops the server."""

    def __init__(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        self.grace_s = grace_s
        self.draining = False
        self._cond = threading.Condition()
        self._inflight: dict[asyncio.Task[None], tuple[asyncio.AbstractEventLoop, _Exchange]] = {}

    @property
    def inflight(self) -> int:
        with self._cond:
            return len(self._inflight)

    def begin(self) -> None:
        """From now on new requests are refused with 503."""
        with self._cond:
            self.draining = True

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if some still are after ``timeout``."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._inflight, timeout)

    def abort(self) -> None:
        """Cancel every in-flight request; each is ended with an error (see ``_Exchange``)."""
        with self._cond:
            items = list(self._inflight.items())
        for task, (loop, exchange) in items:
            exchange.aborted = True
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # that loop has closed: nothing left to cancel
                pass

    def _add(self, task: asyncio.Task[None], exchange: _Exchange) -> None:
        with self._cond:
            self._inflight[task] = (asyncio.get_running_loop(), exchange)

    def _remove(self, task: asyncio.Task[None]) -> None:
        with self._cond:
            self._inflight.pop(task, None)
            self._cond.notify_all()


class DrainGuard:
    """ASGI middleware: count requests in flight, refuse new ones while draining."""

    def __init__(self, app: ASGIApp, *, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.drain.draining:
            response = error_response(ServiceUnavailable(_REFUSED))
            response.headers["Connection"] = "close"
            return await response(scope, receive, send)
        exchange = _Exchange(send)
        inner = asyncio.ensure_future(self.app(scope, receive, exchange.send))
        self.drain._add(inner, exchange)
        try:
            await inner  # cancelling this task cancels ``inner`` too
        except asyncio.CancelledError:
            current = asyncio.current_task()
            cancelling = getattr(current, "cancelling", None)  # Python 3.11+
            if not (exchange.aborted and inner.cancelled()) or (cancelling and cancelling()):
                raise
            await exchange.finish(scope, receive)
        finally:
            self.drain._remove(inner)
