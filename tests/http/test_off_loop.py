"""Heavy requests are parsed, validated and tokenized off the event loop (issue 13 items 2, 3):
while one runs, /health from another client answers in well under a second. A real server
(uvicorn on a socket) over the fake backend; tests/e2e/test_huge_prompts.py does the same on
the real MLX engine with huge prompts and measures memory."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from dvai_bridge import Bridge, StartConfig
from dvai_bridge.backends.fake import FakeBackend
from dvai_bridge.backends.registry import register_backend

HEALTH_BOUND_S = 1.0  # a behaviour check with a wide margin (it answers in milliseconds)


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    register_backend("off-loop-fake", lambda c, p: FakeBackend(context_length=4096))
    bridge = Bridge()
    server = bridge.start_blocking(
        StartConfig(backend="off-loop-fake", http_base_port=0, log_level="warning")
    )
    try:
        yield server.base_url.removesuffix("/v1")
    finally:
        bridge.stop()


def _while_health_polled(root: str, send) -> tuple[httpx.Response, float, int]:
    """Send one request; meanwhile poll /health from another client. Returns the response,
    the slowest /health and how many /health answers came while it ran."""
    done, polling = threading.Event(), threading.Event()
    latencies: list[float] = []

    def poll() -> None:
        with httpx.Client(timeout=30) as c:
            while not done.is_set():
                t = time.monotonic()
                c.get(f"{root}/health").raise_for_status()
                latencies.append(time.monotonic() - t)
                polling.set()
                time.sleep(0.02)  # pacing: a client polling /health, not a flood

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        assert polling.wait(10), "/health never answered"
        with httpx.Client(timeout=120) as c:
            r = send(c)
    finally:
        done.set()
        poller.join()
    return r, max(latencies), len(latencies)


def _post(path: str, body: bytes):
    return lambda c: c.post(path, content=body, headers={"content-type": "application/json"})


CASES = {
    # 3.5 M token lists of [1]: 14 MB. Before: /health waited ~50 s behind json.loads + pydantic.
    "3.5M prompt lists": (
        "/v1/completions",
        b'{"prompt": [' + b",".join([b"[1]"] * 3_500_000) + b"]}",
        "prompt",
    ),
    # 400,000 empty messages (11 MB): 3 s on the loop before. Both are refused from a count of
    # their JSON values (http/body.py), as json.loads would hold the GIL for seconds.
    "400k empty messages": (
        "/v1/chat/completions",
        json.dumps(
            {"messages": [{"role": "user", "content": ""}] * 400_000}, separators=(",", ":")
        ).encode(),
        "messages",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_health_stays_fast_while_a_huge_request_is_processed(root, name):
    path, body, param = CASES[name]
    started = time.monotonic()
    r, slowest, polls = _while_health_polled(root, _post(f"{root}{path}", body))
    took = time.monotonic() - started
    assert slowest < HEALTH_BOUND_S, (name, slowest, polls, took, r.status_code)
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"]["param"] == param
    print(
        f"{name}: answered {r.status_code} in {took:.2f} s; slowest /health {slowest:.3f} s "
        f"over {polls} polls"
    )
