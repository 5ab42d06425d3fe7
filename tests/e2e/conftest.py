"""End-to-end fixtures: one real bridge (MLX, the embedded SmolLM2-135M-Instruct) per session.

Every test under tests/e2e is marked ``e2e`` (deselect with ``-m "not e2e"``).

Set ``DVAI_E2E_BASE_URL`` (e.g. ``http://127.0.0.1:38883/v1``) to run the suite against a
server that is already running instead of starting one in-process.

Decoding on a small CPU machine is slow, so the tests keep ``max_tokens`` small and share
greedy results through ``greedy_chat`` (memoized per prompt and ``max_tokens``). The
in-process server gets one BLAS thread unless ``DVAI_BRIDGE_BLAS_THREADS`` or
``OPENBLAS_NUM_THREADS`` says otherwise (see ``e2e_server``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

E2E_DIR = Path(__file__).resolve().parent

# Generous: a request can wait behind others on a busy 2-core machine.
REQUEST_TIMEOUT_S = 180.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@dataclass(frozen=True)
class E2EServer:
    base_url: str  # ".../v1"
    model_id: str

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    def health(self) -> dict[str, Any]:
        r = httpx.get(f"{self.root_url}/health", timeout=10)
        r.raise_for_status()
        return r.json()

    def metrics(self) -> dict[str, float] | None:
        """GET /metrics (Prometheus text) as {"name{labels}": value}; None if not served."""
        r = httpx.get(f"{self.root_url}/metrics", timeout=10)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        out: dict[str, float] = {}
        for line in r.text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def wait_idle(self, timeout_s: float, poll_s: float = 0.05) -> tuple[bool, float, dict]:
        """Poll /health until nothing runs or waits; (idle?, seconds taken, last health)."""
        start = time.monotonic()
        last: dict[str, Any] = {}
        while True:
            last = self.health()
            took = time.monotonic() - start
            if last["running"] == 0 and last["queued"] == 0:
                return True, took, last
            if took > timeout_s:
                return False, took, last
            time.sleep(poll_s)  # the server is another process: /health is all it offers


@pytest.fixture(scope="session")
def e2e_server() -> Iterator[E2EServer]:
    external = os.environ.get("DVAI_E2E_BASE_URL")
    if external:
        base_url = external.rstrip("/")
        models = httpx.get(f"{base_url}/models", timeout=10).json()
        yield E2EServer(base_url, models["data"][0]["id"])
        return

    from dvai_bridge import Bridge, StartConfig

    bridge = Bridge()  # not the process-wide `shared`: other suites start their own

    if not (os.environ.get("DVAI_BRIDGE_BLAS_THREADS") or os.environ.get("OPENBLAS_NUM_THREADS")):
        # One BLAS thread. On this 2-core machine, shared with other CPU-heavy work, the
        # default (one OpenBLAS thread per core) decoded SmolLM2 at ~0.2 tok/s against ~3.6
        # with one thread. Set either variable to test another count.
        os.environ["DVAI_BRIDGE_BLAS_THREADS"] = "1"
    started = time.monotonic()
    bound = bridge.start_blocking(StartConfig(backend="mlx", http_base_port=0, log_level="warning"))
    print(
        f"\n[e2e] serving {bound.model_id} at {bound.base_url} "
        f"(started in {time.monotonic() - started:.1f}s)"
    )
    try:
        yield E2EServer(bound.base_url, bound.model_id)
    finally:
        bridge.stop()


@pytest.fixture(scope="session")
def base_url(e2e_server: E2EServer) -> str:
    return e2e_server.base_url


@pytest.fixture(scope="session")
def model(e2e_server: E2EServer) -> str:
    return e2e_server.model_id


@pytest.fixture(scope="session")
def client(e2e_server: E2EServer) -> Iterator[openai.OpenAI]:
    # max_retries=0: the SDK would otherwise retry 5xx answers (e.g. the 501 from
    # /v1/embeddings) and hide what the server said the first time.
    c = openai.OpenAI(
        base_url=e2e_server.base_url, api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S
    )
    yield c
    c.close()


@pytest.fixture(scope="session")
def greedy_chat(client: openai.OpenAI, model: str) -> Callable[..., Any]:
    """``greedy_chat(prompt, max_tokens)``: a temperature-0 chat completion, made once."""
    cache: dict[tuple[str, int], Any] = {}

    def get(prompt: str, max_tokens: int) -> Any:
        key = (prompt, max_tokens)
        if key not in cache:
            cache[key] = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": prompt}],
                temperature=0,
                max_tokens=max_tokens,
            )
        return cache[key]

    return get


@pytest.fixture(scope="session")
def seeded_chat(client: openai.OpenAI, model: str) -> Callable[..., str]:
    """``seeded_chat(prompt, seed, temperature, max_tokens)``: sampled text, made once."""
    cache: dict[tuple, str] = {}

    def get(prompt: str, seed: int, temperature: float, max_tokens: int) -> str:
        key = (prompt, seed, temperature, max_tokens)
        if key not in cache:
            r = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": prompt}],
                temperature=temperature,
                seed=seed,
                max_tokens=max_tokens,
            )
            cache[key] = r.choices[0].message.content
        return cache[key]

    return get
