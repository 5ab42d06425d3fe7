"""The Responses and Messages APIs on the real model, through the official clients: the openai
SDK (``responses.create``, streamed, a function call round trip over ``previous_response_id``,
``responses.parse``), openai-agents' default model class, and the anthropic SDK."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest
from pydantic import BaseModel

REQUEST_TIMEOUT_S = 180.0  # as conftest.py

PROMPT = "Say hello."  # the same request as test_openai_sdk's SHORT: the greedy memo is shared
MAX_TOKENS = 8
GREEDY = {"temperature": 0}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def claude(e2e_server: Any) -> anthropic.Anthropic:
    # Greedy via extra_body: anthropic 2.x's create() no longer takes temperature (the
    # server still reads it, as the Messages API does).
    return anthropic.Anthropic(
        base_url=e2e_server.root_url, api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S
    )


def test_responses_create_matches_chat(client: openai.OpenAI, model: str, greedy_chat: Any) -> None:
    r = client.responses.create(
        model=model, input=PROMPT, temperature=0, max_output_tokens=MAX_TOKENS
    )
    ref = greedy_chat(PROMPT, MAX_TOKENS)
    assert r.output_text == ref.choices[0].message.content  # one pipeline, same tokens
    assert r.usage.input_tokens == ref.usage.prompt_tokens
    assert r.usage.output_tokens == ref.usage.completion_tokens
    assert r.status == ("incomplete" if ref.choices[0].finish_reason == "length" else "completed")


def test_responses_stream(client: openai.OpenAI, model: str, greedy_chat: Any) -> None:
    events = list(
        client.responses.create(
            model=model, input=PROMPT, temperature=0, max_output_tokens=MAX_TOKENS, stream=True
        )
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[1].type == "response.in_progress"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == greedy_chat(PROMPT, MAX_TOKENS).choices[0].message.content
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert events[-1].response.output_text == text


def test_function_call_round_trip_continues_stored_conversation(
    client: openai.OpenAI, model: str
) -> None:
    first = client.responses.create(
        model=model,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        temperature=0,
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=40,
    )
    (call,) = [o for o in first.output if o.type == "function_call"]
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)
    second = client.responses.create(
        model=model,
        previous_response_id=first.id,
        tools=[WEATHER],
        temperature=0,
        max_output_tokens=MAX_TOKENS,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}],
    )
    assert second.output_text.strip()
    # The prompt cache holds the first turn: only the new part is prefilled.
    assert second.usage.input_tokens > first.usage.input_tokens
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens - 1
    items = client.responses.input_items.list(second.id, order="asc").data
    assert [i.type for i in items] == ["message", "function_call", "function_call_output"]


def test_custom_tool_call_streamed_and_answered(client: openai.OpenAI, model: str) -> None:
    """Codex's freeform apply_patch, forced: the call is a custom_tool_call whose input is the
    text the model wrote, streamed as the same input, and its output continues the turn."""
    patch_tool = {
        "type": "custom",
        "name": "apply_patch",
        "description": "Edit files with a patch.",
        "format": {"type": "grammar", "syntax": "lark", "definition": 'start: "*** Begin Patch"'},
    }
    kw: dict[str, Any] = {
        "model": model,
        "input": "Add a file a.txt that says hi.",
        "tools": [patch_tool],
        "tool_choice": {"type": "custom", "name": "apply_patch"},
        "temperature": 0,
        "max_output_tokens": 120,
    }
    first = client.responses.create(**kw)
    (call,) = [o for o in first.output if o.type == "custom_tool_call"]
    assert call.name == "apply_patch" and isinstance(call.input, str) and call.call_id
    events = list(client.responses.create(stream=True, **kw))
    done = [e for e in events if e.type == "response.custom_tool_call_input.done"]
    assert len(done) == 1 and done[0].input == call.input  # greedy: the same call
    second = client.responses.create(
        model=model,
        previous_response_id=first.id,
        tools=[patch_tool],
        temperature=0,
        max_output_tokens=MAX_TOKENS,
        input=[{"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Done!"}],
    )
    assert second.status in ("completed", "incomplete") and second.output


class Sum(BaseModel):
    answer: int


def test_responses_parse_with_pydantic_model(client: openai.OpenAI, model: str) -> None:
    r = client.responses.parse(
        model=model, input="What is 2 + 2?", text_format=Sum, temperature=0, max_output_tokens=30
    )
    assert isinstance(r.output_parsed, Sum)


def test_openai_agents_default_model_class(base_url: str, model: str) -> None:
    agents = pytest.importorskip("agents")
    from agents.models.openai_responses import OpenAIResponsesModel

    client = openai.AsyncOpenAI(
        base_url=base_url, api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S
    )
    agents.set_tracing_disabled(True)
    agents.set_default_openai_client(client, use_for_tracing=False)
    agents.set_default_openai_api("responses")
    # Room to finish: the agents runner treats response.incomplete as a failed turn.
    agent = agents.Agent(
        name="greeter",
        instructions="Answer in one short sentence.",
        model=model,
        model_settings=agents.ModelSettings(temperature=0, max_tokens=96),
    )
    result = agents.Runner.run_sync(agent, PROMPT, max_turns=1)
    assert isinstance(agents.OpenAIProvider().get_model(model), OpenAIResponsesModel)
    assert result.raw_responses[0].response_id.startswith("resp_")
    assert isinstance(result.final_output, str) and result.final_output.strip()


def test_anthropic_messages(claude: anthropic.Anthropic, model: str, greedy_chat: Any) -> None:
    m = claude.messages.create(
        model=model,
        max_tokens=MAX_TOKENS,
        extra_body=GREEDY,
        messages=[{"role": "user", "content": PROMPT}],
    )
    ref = greedy_chat(PROMPT, MAX_TOKENS)
    assert m.content[0].text == ref.choices[0].message.content
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == ref.usage.prompt_tokens
    with claude.messages.stream(
        model=model,
        max_tokens=MAX_TOKENS,
        extra_body=GREEDY,
        messages=[{"role": "user", "content": PROMPT}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == m.content[0].text == final.content[0].text
    assert final.stop_reason == m.stop_reason
    n = claude.messages.count_tokens(model=model, messages=[{"role": "user", "content": PROMPT}])
    assert n.input_tokens == ref.usage.prompt_tokens


def test_anthropic_tool_round_trip(claude: anthropic.Anthropic, model: str) -> None:
    tool = {
        "name": "get_weather",
        "description": WEATHER["description"],
        "input_schema": WEATHER["parameters"],
    }
    history: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    m = claude.messages.create(
        model=model,
        max_tokens=40,
        extra_body=GREEDY,
        tools=[tool],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=history,
    )
    (use,) = [b for b in m.content if b.type == "tool_use"]
    assert m.stop_reason == "tool_use" and isinstance(use.input["city"], str)
    history += [
        {"role": "assistant", "content": [b.model_dump() for b in m.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 C"}],
        },
    ]
    reply = claude.messages.create(
        model=model, max_tokens=MAX_TOKENS, extra_body=GREEDY, tools=[tool], messages=history
    )
    assert reply.content and reply.content[0].type == "text" and reply.content[0].text.strip()
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(model=model, max_tokens=5, messages=[])
    assert err.value.body["type"] == "error"
