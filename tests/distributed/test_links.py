"""RingLinks tells a closed ring connection from a live one, from the kernel's view of the
sockets (MLX's ring may hang instead of raising once a peer is gone)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from dvai_bridge.backends.mlx.distributed.links import RingLinks, hostfile_endpoints

from .conftest import free_ports


def _ring_pair(port: int) -> tuple[socket.socket, socket.socket, socket.socket]:
    """A listener on ``port``, a client connected to it and the accepted end."""
    listener = socket.create_server(("127.0.0.1", port))
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    return listener, client, accepted


def test_hostfile_endpoints_reads_every_rank(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([["127.0.0.1:5000", "127.0.0.1:5001"], ["localhost:6000"]]))
    endpoints = hostfile_endpoints(str(hostfile))
    assert {("127.0.0.1", 5000), ("127.0.0.1", 5001)} <= endpoints
    assert any(port == 6000 for _, port in endpoints)


def test_a_connection_closed_by_its_peer_is_lost() -> None:
    (port,) = free_ports(1)
    listener, client, accepted = _ring_pair(port)
    other = socket.create_server(("127.0.0.1", 0))  # not a ring address: ignored
    outsider = socket.create_connection(other.getsockname())
    try:
        links = RingLinks({("127.0.0.1", port)})
        assert len(links.links) == 2  # both ends live in this process
        assert links.lost() is None
        outsider.close()
        assert links.lost() is None  # not a ring connection
        client.close()  # the peer's end goes away
        why = links.lost()
        assert why is not None and "was closed" in why
    finally:
        for s in (listener, accepted, other):
            s.close()


def test_no_ring_connection_found_means_no_verdict() -> None:
    (port,) = free_ports(1)
    links = RingLinks({("127.0.0.1", port)})
    assert links.links == set() and links.lost() is None


def test_only_the_ring_backend_is_watched(monkeypatch, tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([["127.0.0.1:5000"], ["127.0.0.1:5001"]]))
    monkeypatch.setenv("MLX_HOSTFILE", str(hostfile))
    assert RingLinks.from_env("jaccl") is None
    assert RingLinks.from_env("ring") is not None
    monkeypatch.setenv("MLX_HOSTFILE", str(tmp_path / "missing.json"))
    assert RingLinks.from_env("ring") is None
