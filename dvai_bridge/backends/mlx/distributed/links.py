"""Are this rank's ring connections still up? Seen from the kernel, not from MLX.

MLX's ring backend (0.32) runs one thread per peer socket. When a peer dies, the thread that
notices fails the collectives queued on it at that moment and then returns for good; a
collective queued after that waits forever on a thread that no longer exists. Whether the
loss surfaces as an error or as a hang depends on what was queued when the peer died (a
pipeline step evaluated asynchronously, or our next control message): a race. Our watchdog
would still end a hang, but only after ``--group-timeout`` (120 s by default).

The kernel knows at once: a dead peer's sockets are closed (FIN or RST), so ours leave the
ESTABLISHED state. ``RingLinks`` notes this process's connections to the hostfile's addresses
once the group has formed and tells the watchdog when one of them is no longer established,
so a dead rank ends the group within a second, whatever MLX was doing.

Only the ring backend is checked this way; JACCL, NCCL and MPI keep the stall timeout.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import Any

import psutil

log = logging.getLogger(__name__)

Endpoint = tuple[str, int]


def _ip(host: str) -> str:
    return host.removeprefix("::ffff:")  # an IPv4 peer on a dual-stack socket


def hostfile_endpoints(path: str) -> set[Endpoint]:
    """Every ``host:port`` of every rank in an mlx.launch ring hostfile, as (ip, port)."""
    with open(path) as f:
        hosts: list[list[str]] = json.load(f)
    out: set[Endpoint] = set()
    for rank in hosts:
        for address in rank:
            host, _, port = address.rpartition(":")
            host = host.strip("[]")
            try:
                ips = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}  # an IP string
            except OSError:
                ips = {host}
            out |= {(_ip(ip), int(port)) for ip in ips}
    return out


class RingLinks:
    """This process's TCP connections that belong to the ring."""

    def __init__(self, endpoints: set[Endpoint]) -> None:
        self.endpoints = endpoints
        self.process = psutil.Process()
        self.links = self._established()
        if not self.links:
            log.warning(
                "found none of this rank's ring connections; a dead peer is noticed "
                "by the group timeout only"
            )

    @classmethod
    def from_env(cls, backend: str) -> RingLinks | None:
        path = os.environ.get("MLX_HOSTFILE")
        if backend != "ring" or not path:
            return None
        try:
            return cls(hostfile_endpoints(path))
        except (OSError, ValueError, psutil.Error) as exc:
            log.warning(
                "cannot watch the ring's connections (%s); a dead peer is noticed by "
                "the group timeout only",
                exc,
            )
            return None

    def _connections(self) -> list[Any]:
        return [
            c
            for c in self.process.net_connections(kind="tcp")
            if c.raddr
            and (
                (_ip(c.laddr.ip), c.laddr.port) in self.endpoints
                or (_ip(c.raddr.ip), c.raddr.port) in self.endpoints
            )
        ]

    def _established(self) -> set[tuple[Endpoint, Endpoint]]:
        return {
            ((_ip(c.laddr.ip), c.laddr.port), (_ip(c.raddr.ip), c.raddr.port))
            for c in self._connections()
            if c.status == psutil.CONN_ESTABLISHED
        }

    def lost(self) -> str | None:
        """Why the ring is broken (a connection closed by its peer), or None."""
        if not self.links:
            return None
        try:
            gone = self.links - self._established()
        except psutil.Error:
            return None
        if not gone:
            return None
        (_, (ip, port)) = sorted(gone)[0]
        return f"the ring connection to {ip}:{port} was closed"
