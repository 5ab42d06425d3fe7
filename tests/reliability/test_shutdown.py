"""Stopping while requests run: in-flight ones finish (or get an error frame once the grace
period is over), new ones get 503, and the port is released. In-process and through
``dvai-bridge serve`` with SIGTERM / SIGINT."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.test_cli import serving
from tests.waiting import wait_until

from .conftest import cfg, events, text_of, user

LONG = "s" * 150  # ~3 s at 20 ms a token


def stream_in_background(url: str, content: str) -> tuple[threading.Thread, dict]:
    """Start a streamed chat; returns once its first chunk arrived."""
    out: dict = {}
    first = threading.Event()

    def run() -> None:
        lines = []
        try:
            with httpx.stream("POST", url, json=user(content, stream=True), timeout=30) as r:
                out["status"] = r.status_code
                for line in r.iter_lines():
                    lines.append(line)
                    first.set()
        except httpx.HTTPError as exc:
            out["exc"] = exc
        finally:
            out["events"] = events(iter(lines))
            out["ended"] = time.monotonic()
            first.set()

    t = threading.Thread(target=run)
    t.start()
    assert first.wait(10)
    return t, out


def wait_until_refusing(root: str, timeout: float = 5.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(root + "/health", timeout=5)
        if r.status_code == 503:
            return r
        time.sleep(0.02)  # polls what a client sees: /health turns 503 when stopping begins
    raise AssertionError("the server never started refusing new requests")


def assert_port_released(port: int) -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))  # free to bind again


def test_stop_lets_in_flight_streams_finish_and_refuses_new_requests(bridge):
    server = bridge.start_blocking(cfg(backend="rel-slow", shutdown_grace_s=20))
    url, root = server.base_url + "/chat/completions", server.base_url.removesuffix("/v1")
    t, out = stream_in_background(url, LONG)
    stopper = threading.Thread(target=bridge.stop)
    stopper.start()
    r = wait_until_refusing(root)
    assert r.json()["error"]["code"] == "shutting_down"
    r = httpx.post(url, json=user("too late"), timeout=5)
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
    assert r.headers["retry-after"] and r.headers["connection"] == "close"
    t.join(30)
    stopper.join(30)
    assert not stopper.is_alive()
    assert out["status"] == 200 and out["events"][-1] == "[DONE]"
    assert text_of(out["events"]) == "echo: " + LONG  # finished, not cut
    assert out["events"][-2]["choices"][0]["finish_reason"] == "stop"
    assert_port_released(server.port)


def test_past_the_grace_period_streams_get_an_error_frame_and_waiters_a_503(bridge):
    server = bridge.start_blocking(cfg(backend="rel-slow", shutdown_grace_s=0.5))
    url = server.base_url + "/chat/completions"
    very_long = "v" * 2000  # 40 s of generation
    t, out = stream_in_background(url, very_long)
    waiting: dict = {}

    def non_stream() -> None:
        waiting["r"] = httpx.post(url, json=user(very_long), timeout=30)

    w = threading.Thread(target=non_stream)
    w.start()
    root = server.base_url.removesuffix("/v1")
    wait_until(
        lambda: (
            sum(httpx.get(root + "/health", timeout=5).json()[k] for k in ("running", "queued"))
            == 2
        ),
        "both requests to reach the engine",
    )
    t0 = time.monotonic()
    bridge.stop()
    took = time.monotonic() - t0
    t.join(10)
    w.join(10)
    assert took < 0.5 + 3.0
    got = out["events"]
    assert got[-1] == "[DONE]" and got[-2]["error"]["code"] == "shutting_down"
    assert very_long.startswith(text_of(got)[len("echo: ") :])
    assert out["ended"] - t0 < 0.5 + 3.0
    assert waiting["r"].status_code == 503
    assert waiting["r"].json()["error"]["code"] == "shutting_down"
    assert_port_released(server.port)


def test_stop_with_nothing_in_flight_is_quick(bridge):
    server = bridge.start_blocking(cfg(shutdown_grace_s=30))
    assert httpx.post(server.base_url + "/chat/completions", json=user("x")).status_code == 200
    t0 = time.monotonic()
    bridge.stop()
    assert time.monotonic() - t0 < 3
    assert_port_released(server.port)


# -- dvai-bridge serve, stopped by a signal -------------------------------------------------
LAUNCH = (
    "import sys\n"
    "from dvai_bridge.backends.registry import register_backend\n"
    "from dvai_bridge.backends.fake import FakeBackend\n"
    "register_backend('slow', lambda c, p: FakeBackend(token_delay=0.02))\n"
    "from dvai_bridge.cli import main\n"
    "main(sys.argv[1:], prog_name='dvai-bridge')\n"
)


def serve(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "serve", "--port", "0", "--log-level", "warning", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    line = proc.stdout.readline()
    match = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
    if not match:
        proc.kill()
        raise AssertionError(line + proc.stderr.read())
    return proc, match.group(1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_drains_in_flight_streams_then_exits_and_frees_the_port(sig):
    proc, base = serve("--backend", "slow", "--shutdown-grace", "20")
    try:
        url, root = base + "/chat/completions", base.removesuffix("/v1")
        t, out = stream_in_background(url, LONG)
        proc.send_signal(sig)
        r = wait_until_refusing(root)
        assert r.json()["error"]["code"] == "shutting_down"
        assert httpx.post(url, json=user("late"), timeout=5).status_code == 503
        t.join(30)
        assert text_of(out["events"]) == "echo: " + LONG and out["events"][-1] == "[DONE]"
        assert proc.wait(timeout=20) == 0
        assert "Stopped." in proc.stderr.read()
        assert_port_released(int(base.rsplit(":", 1)[1].split("/")[0]))
    finally:
        proc.kill()


def test_a_signal_past_the_grace_period_ends_streams_with_an_error_frame():
    proc, base = serve("--backend", "slow", "--shutdown-grace", "0.5")
    try:
        t, out = stream_in_background(base + "/chat/completions", "w" * 2000)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        t.join(15)
        assert out["ended"] - t0 < 0.5 + 3.0
        got = out["events"]
        assert got[-1] == "[DONE]" and got[-2]["error"]["code"] == "shutting_down"
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()


def test_plain_fake_serve_frees_its_port_on_sigterm():
    with serving() as (proc, base):
        r = httpx.post(base + "/chat/completions", json=user("bye"), timeout=10)
        assert r.json()["choices"][0]["message"]["content"] == "echo: bye"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert_port_released(int(base.rsplit(":", 1)[1].split("/")[0]))
