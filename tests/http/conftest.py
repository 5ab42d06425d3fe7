"""HTTP tests on the fake backend, in-process (no sockets)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from dvai_bridge.backends.fake import FakeBackend
from dvai_bridge.engine.async_engine import AsyncEngine
from dvai_bridge.engine.scheduler import Scheduler
from dvai_bridge.http.app import create_app
from dvai_bridge.protocol.service import OpenAIService


def make_app(backend: FakeBackend | None = None, **app_options):
    scheduler = Scheduler(backend or FakeBackend(), max_queued=app_options.pop("max_queued", 64))
    names = {k: app_options.pop(k) for k in ("aliases", "strict_model_names") if k in app_options}
    app = create_app(OpenAIService(AsyncEngine(scheduler), **names), **app_options)
    return app, scheduler


@pytest.fixture
def client_for():
    """Build a TestClient around a given fake backend; everything is closed afterwards."""
    made: list[tuple[TestClient, Scheduler]] = []

    def build(backend: FakeBackend | None = None, **options) -> TestClient:
        app, scheduler = make_app(backend, **options)
        # A loopback base URL: the app refuses other Host names (DNS rebinding guard).
        client = TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)
        made.append((client, scheduler))
        return client

    yield build
    for client, scheduler in made:
        client.close()
        scheduler.close()


@pytest.fixture
def client(client_for) -> TestClient:
    return client_for()


def sse_events(text: str) -> Iterator[dict | str]:
    """Parse an SSE body into JSON objects, and the literal '[DONE]'."""
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        yield data if data == "[DONE]" else json.loads(data)


def chat(content: str = "hello", **extra) -> dict:
    return {"model": "fake-model", "messages": [{"role": "user", "content": content}], **extra}
