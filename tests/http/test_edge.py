"""The connection edge on a real socket (uvicorn, fake backend): read timeouts, the connection
cap, TCP_NODELAY, accept errors under a low file limit, and the bind race (issue 13 items 4, 5
and 12)."""

from __future__ import annotations

import json
import os
import resource
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from dvai_bridge import Bridge, StartConfig
from dvai_bridge.errors import PortsExhausted
from dvai_bridge.http import connections
from dvai_bridge.http.connections import EdgeLimits, RateLimitedLog
from dvai_bridge.http.listen import bind_port
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
CHAT = b'{"messages": [{"role": "user", "content": "hi"}]}'


def _serve(limits: EdgeLimits):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(connections, "DEFAULT_LIMITS", limits)
        bridge = Bridge()
        server = bridge.start_blocking(
            StartConfig(backend="fake", http_base_port=0, log_level="warning")
        )
    return bridge, server


@pytest.fixture(scope="module")
def quick():
    """Header and body deadlines of 1 s, so that the tests wait little."""
    bridge, server = _serve(EdgeLimits(header_timeout_s=1.0, body_timeout_s=1.0))
    yield SimpleNamespace(port=server.port, base_url=server.base_url, bridge=bridge)
    bridge.stop()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_all(s: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def read_response(s: socket.socket) -> bytes:
    """One response with a Content-Length, from a connection that stays open."""
    out = b""
    while b"\r\n\r\n" not in out:
        out += s.recv(65536)
    head, _, body = out.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def envelope_of(raw: bytes) -> tuple[int, dict, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def post(body: bytes = CHAT, path: str = "/v1/chat/completions") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


# -- item 4: read timeouts --------------------------------------------------------------------
def test_a_request_whose_headers_never_end_gets_408_and_is_closed(quick):
    with connect(quick.port) as s:
        t0 = time.monotonic()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        raw = read_all(s)
        took = time.monotonic() - t0
    status, headers, body = envelope_of(raw)
    assert status == 408 and headers["connection"] == "close"
    assert body["error"]["code"] == "request_timeout" and "headers" in body["error"]["message"]
    assert 0.8 < took < 5


def test_headers_trickled_a_byte_at_a_time_still_meet_the_deadline(quick):
    """Slowloris: a byte every 50 ms resets nothing; the deadline counts from the connection."""
    trickle = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    with connect(quick.port) as s:
        t0 = time.monotonic()
        for byte in trickle:
            if select.select([s], [], [], 0.05)[0]:  # the server answered (and hung up)
                break
            s.sendall(bytes([byte]))
        took = time.monotonic() - t0
        raw = read_all(s)
    assert took < 5, "still trickling after 5 s"
    assert raw.startswith(b"HTTP/1.1 408")


def test_an_idle_connection_is_closed_without_an_answer(quick):
    with connect(quick.port) as s:
        t0 = time.monotonic()
        assert read_all(s) == b""
        assert 0.8 < time.monotonic() - t0 < 5


def test_a_body_that_never_ends_gets_408(quick):
    with connect(quick.port) as s:
        full = post()
        s.sendall(full[:-10])  # Content-Length promises 10 more bytes
        status, headers, body = envelope_of(read_all(s))
    assert status == 408 and headers["connection"] == "close"
    assert body["error"]["code"] == "request_timeout" and "body" in body["error"]["message"]
    assert httpx.get(quick.base_url + "/models", timeout=5).status_code == 200


def test_slow_but_finished_requests_and_keep_alive_reuse_are_served(quick):
    """The deadlines are per request: a body in two parts, then a second request on the same
    connection later than one deadline after the first, are both answered."""
    with connect(quick.port) as s:
        full = post()
        s.sendall(full[:-10])
        time.sleep(0.3)  # the slow body under test (its deadline is 1 s)
        s.sendall(full[-10:])
        first = read_response(s)
        assert first.startswith(b"HTTP/1.1 200") and b"echo: hi" in first
        time.sleep(0.7)  # more than one deadline after the first request began
        s.sendall(post())
        second = read_response(s)
        assert second.startswith(b"HTTP/1.1 200") and b"echo: hi" in second


# -- item 4: the connection cap ---------------------------------------------------------------
def test_connections_over_the_cap_get_a_503_envelope_but_health(monkeypatch):
    bridge, server = _serve(EdgeLimits(header_timeout_s=30, max_connections=16))
    held = []
    try:
        held = [connect(server.port) for _ in range(16)]
        open_ = bridge._running.server.server_state.connections
        wait_until(lambda: len(open_) == 16, "the server to have accepted 16 connections")
        with connect(server.port) as s:
            s.sendall(post())
            status, headers, body = envelope_of(read_all(s))
        assert status == 503 and headers["connection"] == "close"
        assert headers["retry-after"] == "1"
        assert body["error"]["code"] == "too_many_connections"
        r = httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=5)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        for s in held:
            s.close()
        held = []
        wait_until(lambda: not open_, "the server to see the 16 connections closed")
        r = httpx.post(server.base_url + "/chat/completions", json=json.loads(CHAT), timeout=5)
        assert r.status_code == 200
    finally:
        for s in held:
            s.close()
        bridge.stop()


def test_the_cap_stays_under_half_the_file_limit(monkeypatch):
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert EdgeLimits(max_connections=10**9).connection_cap() <= max(16, soft // 2)
    assert EdgeLimits(max_connections=20).connection_cap() <= 20


def test_rate_limited_log_says_how_many_it_dropped(caplog):
    limited = RateLimitedLog(connections.log, period_s=0.2)
    with caplog.at_level("WARNING", logger=connections.log.name):
        assert limited.warning("k", "boom")
        assert not any(limited.warning("k", "boom") for _ in range(50))
        time.sleep(0.25)  # the period under test passes
        assert limited.warning("k", "boom")
    assert [r.getMessage() for r in caplog.records] == [
        "boom",
        "boom (50 more like this in the last 0.2s)",
    ]


_FLOOD_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
import logging
logging.basicConfig(level="WARNING", stream=sys.stderr)
from dvai_bridge import Bridge, StartConfig
bridge = Bridge()
server = bridge.start_blocking(StartConfig(backend="fake", http_base_port=0, log_level="warning"))
print(server.port, flush=True)
sys.stdin.read()
bridge.stop()
"""


def test_running_out_of_descriptors_neither_floods_the_log_nor_holds_health(tmp_path):
    """300 partial requests against a server allowed 128 descriptors: accept fails with EMFILE.
    Before: a traceback per failed accept (49 MB of log in 8 s) and /health never answered."""
    log = tmp_path / "err.log"
    with open(log, "wb") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", _FLOOD_CHILD],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    socks = []
    try:
        port = int(child.stdout.readline())
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            socks.append(s)
        t0 = time.monotonic()
        r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30)
        waited = time.monotonic() - t0
        assert r.status_code == 200
        assert waited < 25  # freed by the over-cap connections' 1 s header deadline
        time.sleep(2)  # under test: two more seconds of failing accepts stay quiet in the log
    finally:
        for s in socks:
            s.close()
        child.stdin.close()
        child.wait(30)
    text = log.read_text(errors="replace")
    assert "cannot accept connections" in text and "Too many open files" in text
    assert log.stat().st_size < 20_000, text[:2000]
    assert "Traceback" not in text


# -- item 5: TCP_NODELAY ------------------------------------------------------------------------
def test_accepted_connections_have_tcp_nodelay(quick):
    """Checked on the server's side of the connection: asyncio sets it only for proto=TCP."""
    with httpx.Client(base_url=quick.base_url, timeout=5) as client:
        assert client.get("/models").status_code == 200
        conns = quick.bridge._running.server.server_state.connections
        flags = [
            c.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            for c in conns
        ]
        assert flags and all(flags), flags


def test_the_listening_socket_is_tcp():
    sock = bind_port("127.0.0.1", 0, 1)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


# -- item 12: the bind race -----------------------------------------------------------------------
def test_a_port_taken_by_a_server_still_loading_is_skipped():
    """bind_port returns a listening socket: a second server started at the same moment moves
    to the next port instead of binding the same one and dying after its model load."""
    first = bind_port("127.0.0.1", 0, 1)
    port = first.getsockname()[1]
    try:
        second = bind_port("127.0.0.1", port, 4)
        try:
            assert second.getsockname()[1] != port
        finally:
            second.close()
        with pytest.raises(PortsExhausted):
            bind_port("127.0.0.1", port, 1).close()
    finally:
        first.close()


def test_two_processes_starting_at_once_get_two_ports(tmp_path):
    code = (
        "import sys, time; from dvai_bridge.http.listen import bind_port; "
        "s = bind_port('127.0.0.1', int(sys.argv[1]), 8); "
        "print(s.getsockname()[1], flush=True); time.sleep(1.5)"  # holds the port meanwhile
    )
    probe = bind_port("127.0.0.1", 0, 1)
    base = probe.getsockname()[1]
    probe.close()
    kids = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(base)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for _ in range(2)
    ]
    ports = [int(k.stdout.readline()) for k in kids]
    for k in kids:
        k.wait(10)
    assert len(set(ports)) == 2, ports
