"""The popular Python client libraries, each driven as its docs show for a custom base URL,
against the real server on the embedded model, with a hard-coded foreign model name: chat,
stream, tools with a result, structured output with a NESTED pydantic model through the
library's default path, and async. The cells judge the protocol (status, shapes, ids,
finish_reason, framing), not the 135M model's answers; see drivers/ for each library's cells.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

# driver -> its cells (what each library's own API offers for the matrix's columns)
FULL = ["chat", "stream", "tools", "structured", "async"]
MATRIX = {
    "openai_sdk": [*FULL, "embeddings_not_retried"],  # openai
    "langchain_driver": FULL,  # langchain-openai
    "litellm_driver": FULL,  # litellm
    "instructor_driver": ["chat", "structured", "stream", "iterable", "async"],  # instructor
    "pydantic_ai_driver": FULL,  # pydantic-ai-slim
    "openai_agents_driver": FULL,  # openai-agents
    "llama_index_driver": FULL,  # llama-index-llms-openai-like
}

CASES = [(driver, cell) for driver, cells in MATRIX.items() for cell in cells]


@pytest.mark.parametrize(("driver", "cell"), CASES, ids=[f"{d}-{c}" for d, c in CASES])
def test_cell(client_results: Callable[[str], dict[str, str]], driver: str, cell: str) -> None:
    result = client_results(driver).get(cell, "FAIL: the driver did not run this cell")
    assert result == "ok", result
