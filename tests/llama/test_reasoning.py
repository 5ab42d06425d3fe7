"""Reasoning end to end on llama.cpp (the GGUF of the same model); the cases are in
tests/reasoning_cases.py."""

from __future__ import annotations

import pytest

from tests.reasoning_cases import *  # noqa: F403 (the shared cases are the tests)
from tests.reasoning_cases import start_config

from .conftest import serving


@pytest.fixture(scope="module")
def rclient(gguf_path):
    with serving(start_config(backend="llama", model_path=gguf_path, context_size=2048)) as c:
        yield c
