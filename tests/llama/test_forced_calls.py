"""Forced tool calls on the llama backend (SmolLM2 GGUF): the checks the MLX e2e suite runs
(tests/forced_call_cases.py), against one llama server for the module."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from tests.forced_call_cases import CHECKS


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_forced_calls(client: openai.OpenAI, check: Callable[[openai.OpenAI, str], None]) -> None:
    check(client, "default")
