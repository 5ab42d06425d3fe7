"""Lifecycle of the bridge with a real uvicorn server and the fake backend."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

import dvai_bridge
from dvai_bridge import (
    AlreadyStarted,
    BackendUnavailable,
    Bridge,
    ModelLoadFailed,
    PortsExhausted,
    StartConfig,
)
from dvai_bridge.backends.fake import FakeBackend
from dvai_bridge.backends.registry import register_backend
from tests.waiting import wait_until

register_backend("slow-fake", lambda config, progress: FakeBackend(token_delay=0.02))
register_backend("tiny-queue", lambda config, progress: FakeBackend(token_delay=0.05))


def cfg(**kw) -> StartConfig:
    return StartConfig(**{"backend": "fake", "http_base_port": 0, "log_level": "warning", **kw})


@pytest.fixture
def bridge():
    b = Bridge()
    yield b
    b.stop()


def free_port_block(n: int) -> int:
    """A base port such that base..base+n-1 are currently free."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n < 65535 and all(_free(base + i) for i in range(n)):
            return base
    raise RuntimeError("no free port block")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_start_serves_and_stop_is_idempotent(bridge):
    assert bridge.status().running is False
    bridge.stop()  # never started: fine
    server = bridge.start_blocking(cfg())
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
    assert (server.backend, server.model_id) == ("fake", "fake-model")
    status = bridge.status()
    assert status.running and status.base_url == server.base_url
    r = httpx.post(
        server.base_url + "/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.json()["choices"][0]["message"]["content"] == "echo: hi"
    bridge.stop()
    bridge.stop()
    assert bridge.status().running is False
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{server.port}/health")


def test_second_start_raises_already_started(bridge):
    bridge.start_blocking(cfg())
    with pytest.raises(AlreadyStarted):
        bridge.start_blocking(cfg())


def test_busy_port_falls_back_to_the_next_one(bridge):
    base = free_port_block(3)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", base))
        blocker.listen()
        server = bridge.start_blocking(cfg(http_base_port=base, http_max_port_attempts=3))
        assert server.port == base + 1


def test_all_ports_busy_names_the_range_and_leaves_a_clean_state(bridge):
    base = free_port_block(2)
    blockers = [socket.socket() for _ in range(2)]
    try:
        for i, s in enumerate(blockers):
            s.bind(("127.0.0.1", base + i))
            s.listen()
        with pytest.raises(PortsExhausted) as info:
            bridge.start_blocking(cfg(http_base_port=base, http_max_port_attempts=2))
        assert f"{base} to {base + 1}" in info.value.message
        assert bridge.status().running is False
    finally:
        for s in blockers:
            s.close()
    assert bridge.start_blocking(cfg()).port > 0


def test_a_failed_model_load_is_typed_and_start_can_be_called_again(bridge, tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelLoadFailed):
        bridge.start_blocking(cfg(backend="mlx", model_path=str(missing)))
    assert bridge.progress.last.phase == "error"
    assert bridge.start_blocking(cfg()).model_id == "fake-model"


def test_coreml_off_apple_is_backend_unavailable_naming_the_platform(bridge):
    with pytest.raises(BackendUnavailable, match="Linux"):
        bridge.start_blocking(cfg(backend="coreml"))


def test_context_manager_sync_and_async():
    b = Bridge()
    with b.serving(cfg()) as server:
        assert httpx.get(server.base_url.removesuffix("/v1") + "/health").status_code == 200
    assert b.status().running is False

    async def run() -> None:
        async with b.serving(cfg()) as server, httpx.AsyncClient() as c:
            assert (await c.get(server.base_url + "/models")).status_code == 200
        assert b.status().running is False

    asyncio.run(run())


def test_progress_reaches_listeners_and_the_async_iterator(bridge):
    seen = []
    handle = bridge.progress.add_listener(seen.append)

    async def run() -> list:
        events = []

        async def collect() -> None:
            async for e in bridge.progress.events():
                events.append(e)

        task = asyncio.create_task(collect())
        await asyncio.sleep(0)  # one loop turn: the collector subscribes before start emits
        await bridge.start(cfg())
        await asyncio.wait_for(task, 5)
        return events

    events = asyncio.run(run())
    assert seen[-1].phase == "ready" and events[-1].phase == "ready"
    handle.remove()
    bridge.stop()
    bridge.start_blocking(cfg())
    assert len([e for e in seen if e.phase == "ready"]) == 1


def _health(base: str) -> dict:
    return httpx.get(base.removesuffix("/v1") + "/health").json()


def test_a_client_that_disconnects_stops_its_generation(bridge):
    server = bridge.start_blocking(cfg(backend="slow-fake"))
    long = "x" * 400  # ~8 s of generation at 20 ms a token
    with (
        httpx.Client(timeout=10) as c,
        c.stream(
            "POST",
            server.base_url + "/chat/completions",
            json={"messages": [{"role": "user", "content": long}], "stream": True},
        ) as r,
    ):
        for i, _ in enumerate(r.iter_lines()):
            if i > 4:
                break
    wait_until(lambda: _health(server.base_url)["running"] == 0, "the generation to stop", 2.0)
    r = httpx.post(
        server.base_url + "/chat/completions",
        json={"messages": [{"role": "user", "content": "next"}]},
        timeout=10,
    )
    assert r.json()["choices"][0]["message"]["content"] == "echo: next"


def test_a_non_streaming_client_that_disconnects_stops_its_generation(bridge):
    server = bridge.start_blocking(cfg(backend="slow-fake"))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            server.base_url + "/chat/completions",
            json={"messages": [{"role": "user", "content": "y" * 400}]},
            timeout=0.5,
        )
    wait_until(lambda: _health(server.base_url)["running"] == 0, "the generation to stop", 2.0)


def test_concurrent_clients_each_get_their_own_complete_answer(bridge):
    server = bridge.start_blocking(cfg(backend="slow-fake"))

    async def one(c: httpx.AsyncClient, i: int, stream: bool) -> str:
        payload = {"messages": [{"role": "user", "content": f"request {i}"}], "stream": stream}
        if not stream:
            r = await c.post(server.base_url + "/chat/completions", json=payload)
            return r.json()["choices"][0]["message"]["content"]
        text = ""
        async with c.stream("POST", server.base_url + "/chat/completions", json=payload) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    import json

                    chunk = json.loads(line[6:])
                    text += chunk["choices"][0]["delta"].get("content", "")
        return text

    async def run() -> list[str]:
        async with httpx.AsyncClient(timeout=60) as c:
            return await asyncio.gather(*(one(c, i, i % 2 == 0) for i in range(8)))

    assert asyncio.run(run()) == [f"echo: request {i}" for i in range(8)]


def test_a_full_queue_answers_429_with_retry_after(bridge):
    # one running (a second of tokens), one queued: the other two of four find the queue full
    server = bridge.start_blocking(cfg(backend="tiny-queue", max_queued=1, max_batch_size=1))

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as c:
            payload = {"messages": [{"role": "user", "content": "z" * 20}]}
            return await asyncio.gather(
                *(c.post(server.base_url + "/chat/completions", json=payload) for _ in range(4))
            )

    statuses = sorted(r.status_code for r in asyncio.run(run()))
    assert 429 in statuses and 200 in statuses
    busy = next(r for r in asyncio.run(run()) if r.status_code == 429)
    assert busy.headers["retry-after"] and busy.json()["error"]["code"] == "server_busy"


def test_public_names_are_pinned():
    assert sorted(dvai_bridge.__all__) == sorted(
        [
            "AlreadyStarted",
            "BackendError",
            "BackendUnavailable",
            "BoundServer",
            "Bridge",
            "BridgeError",
            "BridgeStatus",
            "CachedModel",
            "ChecksumMismatch",
            "ConfigurationInvalid",
            "ContextLengthExceeded",
            "DeletePlan",
            "DownloadFailed",
            "InvalidRequest",
            "ListenerHandle",
            "ModelInUse",
            "ModelLoadFailed",
            "ModelNotFound",
            "NotStarted",
            "NotSupported",
            "PortsExhausted",
            "ProgressEvent",
            "ProgressHub",
            "RequestError",
            "ServerBusy",
            "ServiceUnavailable",
            "StartConfig",
            "__version__",
            "delete_cached_model",
            "download_model",
            "list_cached_models",
            "shared",
        ]
    )
    assert isinstance(dvai_bridge.shared, Bridge)
