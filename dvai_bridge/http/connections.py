"""Connections that never finish a request: read timeouts, a connection cap, quiet accept errors.

uvicorn's h11 protocol closes an idle keep-alive connection (``timeout_keep_alive``) but holds
one that sent part of a request forever: 2,100 such connections used up the file descriptors,
``/health`` timed out for everyone, and asyncio logged a traceback for every failed accept.
``guarded_h11`` subclasses uvicorn's protocol and adds, per connection:

    header timeout   the request line and headers must arrive within ``header_timeout_s`` of
                     the connection opening (or of the previous response ending); else
                     408 in the OpenAI envelope (nothing at all if not a byte came) and close
    body timeout     the body must arrive within ``body_timeout_s`` of the headers; else 408
                     (answered by ``BodyLimit``, which reads the body; the connection is
                     closed ``BODY_GRACE_S`` later if the body still has not ended)
    connection cap   past ``max_connections`` open connections (never more than half the
                     soft file limit), a new connection's request is answered 503
                     ``too_many_connections`` with ``Connection: close`` (``/health`` is
                     still answered); it has ``BUSY_HEADER_TIMEOUT_S`` to send its headers

``serve`` runs the uvicorn server with a loop exception handler that logs accept errors
(EMFILE and the like, which asyncio retries every second) at most once per ``LOG_PERIOD_S``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import envelope
from .security import BODY_TIMEOUT_S

log = logging.getLogger(__name__)

LOG_PERIOD_S = 10.0
BUSY_HEADER_TIMEOUT_S = 1.0  # a connection over the cap gets this long to send its headers
BODY_GRACE_S = 2.0  # after body_timeout_s, BodyLimit has answered 408; then we hang up
_ACCEPT_ERROR = "socket.accept() out of system resource"


@dataclass(frozen=True)
class EdgeLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = BODY_TIMEOUT_S
    max_connections: int = 1000

    def connection_cap(self) -> int:
        """``max_connections``, lowered to half the soft file limit (listeners, model files and
        the engine need descriptors too)."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(16, min(self.max_connections, soft // 2))


class RateLimitedLog:
    """A warning at most once per ``period_s`` per key; the next one says how many were dropped."""

    def __init__(self, logger: logging.Logger, period_s: float = LOG_PERIOD_S) -> None:
        self.logger, self.period_s = logger, period_s
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: Any) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -self.period_s) < self.period_s:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False
        self._last[key] = now
        dropped = self._dropped.pop(key, 0)
        if dropped:
            message += " (%d more like this in the last %gs)"
            args = (*args, dropped, self.period_s)
        self.logger.warning(message, *args)
        return True


_edge_log = RateLimitedLog(log)


def _envelope_bytes(status: int, reason: str, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 response, for a connection that never produced a request to answer."""
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def _busy_app(cap: int, app: Any) -> Any:
    """503 for every route but ``/health``, which stays answerable for monitoring."""

    async def busy(scope: Any, receive: Any, send: Any) -> None:
        if scope.get("path") == "/health":
            return await app(scope, receive, send)
        response = envelope(
            503,
            f"The server has {cap} connections open, its limit; retry shortly.",
            "server_error",
            None,
            "too_many_connections",
            {"Retry-After": "1", "Connection": "close"},
        )
        await response(scope, receive, send)

    return busy


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header and body read timeouts and a connection cap."""

    limits: ClassVar[EdgeLimits] = EdgeLimits()
    cap: ClassVar[int] = EdgeLimits.max_connections  # each server's: guarded_h11()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_for: str | None = None
        self._header_timeout_s = self.limits.header_timeout_s
        super().connection_made(transport)
        if len(self.connections) > self.cap:
            _edge_log.warning(
                "cap",
                "%d connections open, over the cap of %d: answering 503",
                len(self.connections),
                self.cap,
            )
            self.app = _busy_app(self.cap, self.app)
            self._header_timeout_s = min(self.limits.header_timeout_s, BUSY_HEADER_TIMEOUT_S)
        self._rearm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._rearm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._rearm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    # -- the deadline ------------------------------------------------------------------
    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._waiting_for = None, None

    def _rearm(self) -> None:
        """One deadline per phase of the request the client still owes us."""
        state = self.conn.their_state
        waiting_for = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if self.transport.is_closing():
            waiting_for = None
        if waiting_for == self._waiting_for:
            return
        self._cancel()
        if waiting_for is not None:
            delay = (
                self._header_timeout_s
                if waiting_for == "headers"
                else self.limits.body_timeout_s + BODY_GRACE_S
            )
            self._timer = self.loop.call_later(delay, self._expired)
            self._waiting_for = waiting_for

    def _expired(self) -> None:
        waiting_for, self._timer, self._waiting_for = self._waiting_for, None, None
        if self.transport.is_closing():
            return
        if waiting_for == "headers":
            if self.conn.trailing_data[0]:  # part of a request came: say why we hang up
                self.transport.write(
                    _envelope_bytes(
                        408,
                        "Request Timeout",
                        f"The request headers did not arrive within {self._header_timeout_s:g} s.",
                        "request_timeout",
                    )
                )
            self.transport.close()
            return
        # The body: BodyLimit answers 408 at body_timeout_s; past the grace the app is not
        # reading it (a GET with a body, or a response already going out): hang up.
        _edge_log.warning(
            "body",
            "a request body was still arriving %gs after its headers: closing the connection",
            self.limits.body_timeout_s + BODY_GRACE_S,
        )
        self.transport.close()


DEFAULT_LIMITS = EdgeLimits()


def guarded_h11(limits: EdgeLimits | None = None) -> type[GuardedH11Protocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)``."""
    limits = limits or DEFAULT_LIMITS
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"limits": limits, "cap": limits.connection_cap()},
    )


def _on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    if context.get("message") == _ACCEPT_ERROR:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        _edge_log.warning(
            "accept",
            "cannot accept connections: %s (open file limit %d); retrying every second",
            context.get("exception"),
            soft,
        )
        return
    loop.default_exception_handler(context)


async def serve(server: uvicorn.Server, sock: socket.socket) -> None:
    """Run ``server`` on ``sock`` with accept errors logged at most once per LOG_PERIOD_S."""
    asyncio.get_running_loop().set_exception_handler(_on_loop_error)
    await server.serve(sockets=[sock])
