"""Forced tool calls on the real MLX engine (SmolLM2, Hermes prompt): nested pydantic schemas,
no undeclared keys, one call per declared function, cut calls, ``</tool_call>`` in a string.
The checks are shared with the llama suite (tests/forced_call_cases.py)."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from tests.forced_call_cases import CHECKS


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_forced_calls(
    client: openai.OpenAI, model: str, check: Callable[[openai.OpenAI, str], None]
) -> None:
    check(client, model)
