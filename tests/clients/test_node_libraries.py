"""The AI SDK (ai + @ai-sdk/openai-compatible) and @langchain/openai under Node, against the
package's real server: chat, stream, tools with a result, structured output with a nested
schema, a foreign model name (node/clients.mjs; JavaScript clients are async throughout)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.node_packages import node_with

pytestmark = pytest.mark.node

NODE_DIR = Path(__file__).resolve().parent / "node"
LIBRARIES = {
    "ai-sdk": ["chat", "stream", "tools", "structured"],
    "langchain-js": ["chat", "stream", "tools", "structured"],
}
CASES = [f"{lib}:{cell}" for lib, cells in LIBRARIES.items() for cell in cells]


@pytest.fixture(scope="module")
def node_results(clients_server: tuple[str, str]) -> dict[str, Any]:
    node = node_with(NODE_DIR, "ai", "the Node client libraries")
    done = subprocess.run(
        [node, "clients.mjs", *clients_server],
        cwd=NODE_DIR,
        check=False,
        capture_output=True,
        text=True,
        timeout=400,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert lines, f"clients.mjs printed no results:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(lines[-1].removeprefix("RESULTS "))


@pytest.mark.parametrize("case", CASES)
def test_cell(node_results: dict[str, Any], case: str) -> None:
    result = node_results.get(case, "FAIL: clients.mjs did not run this cell")
    assert result == "ok", result
