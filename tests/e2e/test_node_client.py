"""The official ``openai`` npm package (Node) against the bridge: tests/e2e/node/client.mjs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.node_packages import node_with

pytestmark = pytest.mark.node

NODE_DIR = Path(__file__).resolve().parent / "node"
PROMPT = "Say hello."  # the same request as test_openai_sdk's SHORT, so the memo is shared
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def node_client() -> Path:
    node_with(NODE_DIR, "openai", "the Node client test")
    return NODE_DIR / "client.mjs"


@pytest.fixture(scope="module")
def node_result(node_client: Path, base_url: str, model: str) -> dict[str, Any]:
    done = subprocess.run(
        ["node", str(node_client), base_url, model, PROMPT],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
        env={**os.environ, "DVAI_MAX_TOKENS": str(MAX_TOKENS)},
    )
    assert done.returncode == 0, f"client.mjs failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_node_chat(node_result: dict[str, Any], model: str) -> None:
    assert model in node_result["models"]
    chat = node_result["chat"]
    assert chat["object"] == "chat.completion"
    assert chat["model"] == model
    assert chat["role"] == "assistant"
    assert chat["content"].strip()
    assert chat["finish_reason"] in ("stop", "length")
    u = chat["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert 0 < u["completion_tokens"] <= MAX_TOKENS


def test_node_stream(node_result: dict[str, Any]) -> None:
    chat, stream = node_result["chat"], node_result["stream"]
    assert stream["first_role"] == "assistant"
    assert len(stream["ids"]) == 1
    assert stream["finish_reasons"] == [chat["finish_reason"]]
    assert stream["content"] == chat["content"]  # temperature 0: same text either way
    assert stream["usage"]["completion_tokens"] == chat["usage"]["completion_tokens"]
    assert stream["usage"]["prompt_tokens"] == chat["usage"]["prompt_tokens"]


def test_node_matches_python_sdk(node_result: dict[str, Any], greedy_chat: Any) -> None:
    ref = greedy_chat(PROMPT, MAX_TOKENS)
    assert node_result["chat"]["content"] == ref.choices[0].message.content
    assert node_result["chat"]["usage"]["prompt_tokens"] == ref.usage.prompt_tokens


def test_node_forced_tool_call_streamed(node_result: dict[str, Any]) -> None:
    tools = node_result["tools"]
    assert tools["finish_reason"] == "tool_calls"
    assert tools["id"].startswith("call_")
    assert tools["name"] == "get_weather"
    args = json.loads(tools["arguments"])
    assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit")
    assert tools["argument_deltas"] > 1  # the SDK saw the arguments arrive in pieces
    assert not tools["content"]


def test_node_json_schema(node_result: dict[str, Any]) -> None:
    body = json.loads(node_result["json"]["content"])
    assert isinstance(body["answer"], int)
    assert node_result["json"]["finish_reason"] == "stop"


def test_node_responses_stream(node_result: dict[str, Any], greedy_chat: Any) -> None:
    r = node_result["responses"]
    assert r["types"][:2] == ["response.created", "response.in_progress"]
    assert r["types"][-1] == (
        "response.completed" if r["status"] == "completed" else "response.incomplete"
    )
    assert "response.output_text.delta" in r["types"]
    assert r["sequence_numbers"] == list(range(len(r["types"])))
    assert r["text"] == r["final_text"]
    # the same greedy request as the chat one: the same text
    assert r["text"] == greedy_chat(PROMPT, MAX_TOKENS).choices[0].message.content
    assert 0 < r["usage"]["output_tokens"] <= MAX_TOKENS
