"""The listening socket: bound and listening before the model loads, with TCP_NODELAY.

Two things about how the socket is made matter:

- ``bind`` and ``listen`` happen together. On Linux two sockets with SO_REUSEADDR may both
  bind one port as long as neither listens; binding only, then loading the model, let two
  servers started at the same moment both "get" the port, and the loser died after its load.
  A listening socket cannot be bound again, so the second one moves on to the next port.
- The socket is created with ``proto=IPPROTO_TCP``. asyncio sets TCP_NODELAY on accepted
  connections only when the listening socket says so (``sock.proto == IPPROTO_TCP``); with
  proto 0 every keep-alive response after the first waited ~40 ms for a delayed ACK (Nagle),
  and SSE chunks written less than a round trip apart were held back.
"""

from __future__ import annotations

import errno
import socket
import time

from ..errors import ConfigurationInvalid, PortsExhausted

BACKLOG = 2048  # uvicorn's default; uvicorn calls listen() again with its own value
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ListeningSocket(socket.socket):
    """A listening socket that reports running out of descriptors once per accept burst.

    asyncio's accept loop (3.11) tries up to ``backlog`` accepts per wake-up and, for each one
    failing with EMFILE, logs a traceback and schedules its own retry a second later; the
    retries multiply and the log grew tens of MB in seconds. Here only the first failure of a
    burst is an EMFILE (asyncio pauses accepting for a second, once); the rest of that burst
    reads as "no connection waiting", which ends the loop.
    """

    _failed_at = float("-inf")

    def accept(self) -> tuple[socket.socket, object]:
        try:
            return super().accept()
        except OSError as exc:
            if exc.errno not in _OUT_OF_RESOURCES:
                raise
            now = time.monotonic()
            if now - self._failed_at < 0.5:
                raise BlockingIOError(errno.EAGAIN, "accept paused: out of resources") from None
            self._failed_at = now
            raise


def bind_port(host: str, base: int, attempts: int) -> socket.socket:
    """A listening socket on the first free port of base, base+1, ... base+attempts-1."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ports = [0] if base == 0 else range(base, min(base + attempts, 65536))
    for port in ports:
        sock = ListeningSocket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise ConfigurationInvalid(f"Cannot bind {host}:{port}: {exc}", param="host") from None
        sock.set_inheritable(True)
        return sock
    last = base + len(ports) - 1
    raise PortsExhausted(
        f"Every port from {base} to {last} on {host} is busy; free one, or set "
        "http_base_port / http_max_port_attempts.",
        param="http_base_port",
    )
