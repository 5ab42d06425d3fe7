"""An engine that dies is a state the server reports, through the real HTTP server: the
requests in flight end with an error (500 envelope; error frame then [DONE] when streaming),
new ones get 503 with Retry-After, /health says why, and stop()/start() brings it back."""

from __future__ import annotations

import threading

import httpx

from dvai_bridge.backends.fake import FakeBackend
from dvai_bridge.backends.registry import register_backend
from tests.reliability.conftest import cfg, events, user


class Died(BaseException):
    """Not an ``Exception``: what a backend dying under the engine looks like to Python."""


class DiesOnCue(FakeBackend):
    """Dies mid-decode (after a few tokens) when the prompt says "die"; otherwise echoes."""

    def generate(self, request, cancel):
        die = b"die" in bytes(t for t in request.prompt_tokens if t < 256)
        for i, choice in enumerate(super().generate(request, cancel)):
            if die and i == 5:
                raise Died("the device went away")
            yield choice


register_backend("rel-dies", lambda c, p: DiesOnCue(token_delay=0.02))


def test_an_engine_that_dies_is_reported_and_a_restart_recovers(bridge):
    server = bridge.start_blocking(cfg(backend="rel-dies", max_batch_size=1))
    root = server.base_url.removesuffix("/v1")
    c = httpx.Client(base_url=server.base_url, timeout=30)
    streamed: list = []

    def stream() -> None:
        with c.stream(
            "POST", "/chat/completions", json=user("x" * 60, stream=True, max_tokens=200)
        ) as r:
            streamed.extend(events(r.iter_lines()))

    t = threading.Thread(target=stream)  # a bystander stream, running when the engine dies...
    t.start()
    while not httpx.get(root + "/health").json()["running"]:
        pass
    # ...behind it (serial: max_batch 1) the request that kills the engine, then a third
    dying = threading.Thread(
        target=lambda: streamed.append(
            c.post("/chat/completions", json=user("die now", max_tokens=50))
        )
    )
    dying.start()
    t.join(20)
    dying.join(20)
    assert not t.is_alive() and not dying.is_alive(), "a request never finished"
    frames = [e for e in streamed if not isinstance(e, httpx.Response)]
    assert frames[-1] == "[DONE]"
    assert frames[-2]["choices"][0]["finish_reason"] == "stop"  # the bystander ran to its end
    died = next(e for e in streamed if isinstance(e, httpx.Response))
    assert died.status_code == 500
    assert died.json()["error"]["code"] == "backend_error"
    assert "went away" in died.json()["error"]["message"]

    h = httpx.get(root + "/health")
    assert h.status_code == 503 and h.headers["retry-after"] == "1"
    assert h.json()["status"] == "error" and "went away" in h.json()["reason"]
    refused = c.post("/chat/completions", json=user("hi"))
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "engine_failed"
    with c.stream("POST", "/chat/completions", json=user("hi", stream=True)) as r:
        assert r.status_code == 503

    bridge.stop()
    server = bridge.start_blocking(cfg(backend="rel-dies", max_batch_size=1))
    h = httpx.get(server.base_url.removesuffix("/v1") + "/health")
    assert h.status_code == 200 and h.json()["status"] == "ok"
    r = httpx.post(server.base_url + "/chat/completions", json=user("hi again"), timeout=30)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "echo: hi again"


def test_a_stream_running_when_the_engine_dies_ends_with_an_error_frame(bridge):
    server = bridge.start_blocking(cfg(backend="rel-dies", max_batch_size=4))
    with httpx.stream(
        "POST",
        server.base_url + "/chat/completions",
        timeout=30,
        json=user("die while streaming", stream=True, max_tokens=50),
    ) as r:
        assert r.status_code == 200
        frames = events(r.iter_lines())
    assert frames[-1] == "[DONE]"
    assert frames[-2]["error"]["code"] == "backend_error"
    assert "went away" in frames[-2]["error"]["message"]
