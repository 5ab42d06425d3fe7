"""Forced tool calls on the llama backend (SmolLM2 GGUF): the checks the MLX e2e suite runs
(tests/forced_call_cases.py), against one llama server for the module."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from dvai_bridge import Bridge, StartConfig
from tests.forced_call_cases import CHECKS


@pytest.fixture(scope="module")
def client(gguf_path):
    bridge = Bridge()
    bound = bridge.start_blocking(
        StartConfig(backend="llama", model_path=gguf_path, http_base_port=0, context_size=2048)
    )
    c = openai.OpenAI(base_url=bound.base_url, api_key="unused", timeout=300, max_retries=0)
    yield c
    c.close()
    bridge.stop()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_forced_calls(client: openai.OpenAI, check: Callable[[openai.OpenAI, str], None]) -> None:
    check(client, "default")
