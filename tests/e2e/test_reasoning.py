"""Reasoning end to end on MLX (cases in tests/reasoning_cases.py)."""

from __future__ import annotations

import openai
import pytest

from dvai_bridge import Bridge
from tests.reasoning_cases import *  # noqa: F403 (the shared cases are the tests)
from tests.reasoning_cases import start_config


@pytest.fixture(scope="module")
def rclient():
    bridge = Bridge()
    bound = bridge.start_blocking(start_config(backend="mlx"))
    c = openai.OpenAI(base_url=bound.base_url, api_key="unused", timeout=300, max_retries=0)
    yield c
    c.close()
    bridge.stop()
