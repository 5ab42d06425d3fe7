"""Faults through the real server: a backend failing mid-stream, a full queue, a dead engine.

(A model that fails to load is tests/test_bridge.py's
``test_a_failed_model_load_is_typed_and_start_can_be_called_again``.)
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from .conftest import cfg, events, health, text_of, user


def test_backend_failing_mid_stream_sends_an_error_frame_then_done(bridge):
    server = bridge.start_blocking(cfg(backend="rel-boom"))
    url = server.base_url + "/chat/completions"
    with httpx.stream("POST", url, json=user("boom now", stream=True), timeout=10) as r:
        assert r.status_code == 200
        got = events(r.iter_lines())
    assert got[-1] == "[DONE]"
    assert got[-2]["error"]["code"] == "backend_error" and "boom" in got[-2]["error"]["message"]
    assert text_of(got[:-2]) == "ech"
    r = httpx.post(url, json=user("boom"), timeout=10)  # the same fault, not streamed: a 500
    assert r.status_code == 500 and r.json()["error"]["code"] == "backend_error"
    r = httpx.post(url, json=user("fine"), timeout=10)
    assert r.json()["choices"][0]["message"]["content"] == "echo: fine"
    with httpx.stream("POST", url, json=user("fine again", stream=True), timeout=10) as r:
        assert text_of(events(r.iter_lines())) == "echo: fine again"
    assert (health(server.base_url)["running"], health(server.base_url)["queued"]) == (0, 0)


@pytest.mark.parametrize("batch", [1, 8])
def test_a_failing_stream_beside_others_ends_every_stream_cleanly(bridge, batch):
    """Serial: only the failing stream fails. Batched: a failed batch step fails the sequences
    in that batch (the engine cannot tell whose fault a step's failure is), each with an error
    frame after a prefix of its own answer; none hangs, none gets another's text."""
    server = bridge.start_blocking(cfg(backend="rel-boom", max_batch_size=batch))
    url = server.base_url + "/chat/completions"

    async def one(c: httpx.AsyncClient, content: str) -> list:
        async with c.stream("POST", url, json=user(content, stream=True)) as r:
            return events([line async for line in r.aiter_lines()])

    async def run() -> list[list]:
        async with httpx.AsyncClient(timeout=30) as c:
            return await asyncio.gather(
                *(one(c, "boom" if i == 2 else f"calm {i}") for i in range(6))
            )

    results = asyncio.run(run())
    for i, got in enumerate(results):
        assert got[-1] == "[DONE]"
        own = "echo: boom" if i == 2 else f"echo: calm {i}"
        failed = isinstance(got[-2], dict) and "error" in got[-2]
        assert failed or text_of(got) == own
        assert own.startswith(text_of(got))
        if batch == 1:
            assert failed is (i == 2)
    assert health(server.base_url)["running"] == 0
    r = httpx.post(url, json=user("after"), timeout=10)
    assert r.json()["choices"][0]["message"]["content"] == "echo: after"


def test_queue_overflow_is_429_at_once_not_a_hang(bridge):
    server = bridge.start_blocking(cfg(backend="rel-slow", max_queued=2, max_batch_size=2))
    url = server.base_url + "/chat/completions"

    async def one(c: httpx.AsyncClient, i: int) -> tuple[int, float, str]:
        t0 = time.monotonic()
        r = await c.post(url, json=user(f"queue {i} " + "q" * 30))
        body = r.json()
        text = (
            body["choices"][0]["message"]["content"]
            if r.status_code == 200
            else body["error"]["code"]
        )
        return r.status_code, time.monotonic() - t0, text

    async def run() -> list[tuple[int, float, str]]:
        async with httpx.AsyncClient(timeout=60) as c:
            return await asyncio.gather(*(one(c, i) for i in range(12)))

    results = asyncio.run(run())
    busy = [r for r in results if r[0] == 429]
    served = [r for r in results if r[0] == 200]
    assert busy and served and len(busy) + len(served) == 12
    assert all(code == "server_busy" for _, _, code in busy)
    assert max(t for _, t, _ in busy) < min(t for _, t, _ in served)  # refused before served
    for i, (status, _, text) in enumerate(results):
        if status == 200:
            assert text == f"echo: queue {i} " + "q" * 30
    assert (health(server.base_url)["running"], health(server.base_url)["queued"]) == (0, 0)


def test_a_fault_in_token_handling_fails_that_request_only(bridge):
    server = bridge.start_blocking(cfg(backend="rel-bad-decode"))
    url = server.base_url + "/chat/completions"
    r = httpx.post(url, json=user("tilde ~ here"), timeout=5)
    assert r.status_code == 500 and r.json()["error"]["code"] == "backend_error"
    r = httpx.post(url, json=user("plain"), timeout=5)  # today: ReadTimeout, engine gone
    assert r.json()["choices"][0]["message"]["content"] == "echo: plain"
