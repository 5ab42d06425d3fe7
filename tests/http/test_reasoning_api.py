"""Reasoning on the HTTP surface, over the fake backend with a Qwen3-style chat template (its
generation prompt opens <think>): the scripted reply's reasoning comes back apart from the
content, streamed and not. The real models are exercised in tests/e2e/test_reasoning.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from dvai_bridge.backends.fake import FakeBackend
from dvai_bridge.engine.async_engine import AsyncEngine
from dvai_bridge.engine.scheduler import Scheduler
from dvai_bridge.http.app import create_app
from dvai_bridge.protocol.reasoning import ReasoningOptions
from dvai_bridge.protocol.service import OpenAIService

from .conftest import chat, sse_events

TEMPLATE = (Path(__file__).parents[1] / "data" / "qwen3_style.jinja").read_text()
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def fake(reply: str) -> FakeBackend:
    backend = FakeBackend(reply=reply)
    backend.tokenizer.set_chat_template(TEMPLATE)
    return backend


@pytest.fixture
def client_with(client_for):
    def build(reply: str, field: str | None = None):
        if field is None:
            return client_for(fake(reply))
        from fastapi.testclient import TestClient

        scheduler = Scheduler(fake(reply))
        app = create_app(OpenAIService(AsyncEngine(scheduler), reasoning=ReasoningOptions(field)))
        return TestClient(app, base_url="http://127.0.0.1")

    return build


def streamed(c, body) -> tuple[str, str, list]:
    r = c.post(
        "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
    )
    events = [e for e in sse_events(r.text) if e != "[DONE]"]
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    return (
        "".join(d.get("reasoning_content") or "" for d in deltas),
        "".join(d.get("content") or "" for d in deltas),
        events,
    )


def test_reasoning_is_apart_streamed_and_not(client_with) -> None:
    c = client_with("Two and two.\n</think>\n\nIt is 4.")
    r = c.post("/v1/chat/completions", json=chat("2+2?"))
    body = r.json()
    msg = body["choices"][0]["message"]
    assert msg["reasoning_content"] == "Two and two.\n"
    assert msg["content"] == "It is 4."
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    reasoning, content, events = streamed(c, chat("2+2?"))
    assert (reasoning, content) == (msg["reasoning_content"], msg["content"])
    assert "<think>" not in content and "</think>" not in content
    for key in ("completion_tokens", "completion_tokens_details"):
        assert events[-1]["usage"][key] == body["usage"][key]


def test_field_name_is_an_option(client_with) -> None:
    msg = (
        client_with("x</think>y", field="both")
        .post("/v1/chat/completions", json=chat())
        .json()["choices"][0]["message"]
    )
    assert msg["reasoning"] == msg["reasoning_content"] == "x" and msg["content"] == "y"
    msg = (
        client_with("x</think>y", field="reasoning")
        .post("/v1/chat/completions", json=chat())
        .json()["choices"][0]["message"]
    )
    assert msg["reasoning"] == "x" and "reasoning_content" not in msg


def test_tool_calls_come_from_the_answer_only(client_with) -> None:
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    # A call written inside the reasoning is reasoning, not a call.
    c = client_with(f"Maybe {call}</think>\n\n{call}".replace("Oslo", "Paris", 1))
    choice = c.post("/v1/chat/completions", json=chat("weather?", tools=[TOOL])).json()["choices"][
        0
    ]
    assert choice["finish_reason"] == "tool_calls"
    assert "Paris" in choice["message"]["reasoning_content"]
    (tc,) = choice["message"]["tool_calls"]
    assert '"Oslo"' in tc["function"]["arguments"]


def test_history_reasoning_reaches_the_template() -> None:
    from dvai_bridge.protocol.messages import normalize_messages
    from dvai_bridge.protocol.schema import ChatMessage

    for key in ("reasoning", "reasoning_content"):
        (msg,) = normalize_messages(
            [ChatMessage(role="assistant", content="b", **{key: "secret thought"})]
        )
        # Qwen3 and DeepSeek templates read reasoning_content, gpt-oss's thinking.
        assert msg["reasoning_content"] == msg["thinking"] == "secret thought"


def test_bad_template_kwargs_are_a_400(client_with) -> None:
    r = client_with("x").post(
        "/v1/chat/completions", json=chat(chat_template_kwargs={"add_generation_prompt": False})
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "chat_template_kwargs"
    r = client_with("x").post("/v1/chat/completions", json=chat(reasoning_effort="huge"))
    assert r.status_code == 400 and r.json()["error"]["param"] == "reasoning_effort"


def test_a_block_the_model_opens_itself_is_parsed_and_counted(client_for) -> None:
    backend = FakeBackend(reply="<think>\nhm</think>\n\nyes")
    # Qwen3's own template: the generation prompt does not open the block, the model does.
    backend.tokenizer.set_chat_template(
        "{% for m in messages %}{{ m.content }}{% endfor %}"
        "{# assistant messages carry <think> blocks #}"
    )
    body = client_for(backend).post("/v1/chat/completions", json=chat()).json()
    msg = body["choices"][0]["message"]
    assert (msg["reasoning_content"], msg["content"]) == ("hm", "yes")
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


def test_a_model_without_a_reasoning_template_is_unchanged(client_for) -> None:
    body = (
        client_for(FakeBackend(reply="<think>x</think>y"))
        .post("/v1/chat/completions", json=chat())
        .json()
    )
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "<think>x</think>y"}
    assert "completion_tokens_details" not in body["usage"]
