"""Reasoning end to end, shared by the MLX (tests/e2e/test_reasoning.py) and llama
(tests/llama/test_reasoning.py) suites: the embedded SmolLM2-135M-Instruct served with a
Qwen3-style chat template (``--chat-template``; its generation prompt opens ``<think>``), through
the openai SDK. A 135M model does not reason well; these check the protocol: the reasoning
apart, stream == non-stream, effort ``none`` without reasoning, effort ``low`` closed by the
server at its budget (``BUDGET`` tokens, set at start) and answered after, and the grammar of
json_schema and of a forced tool call applied from the end of the reasoning on."""

from __future__ import annotations

import json
from pathlib import Path

import openai

TEMPLATE = str(Path(__file__).parent / "data" / "qwen3_style.jinja")
BUDGET = 12  # reasoning_budget_low for these servers
CLOSE_TOKENS = 8  # at most this many tokens spell "</think>" in SmolLM2's vocabulary
ASK = [{"role": "user", "content": "Explain in detail why the sky is blue."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}},
    "required": ["city"],
    "additionalProperties": False,
}


def start_config(**kw):
    from dvai_bridge import StartConfig

    return StartConfig(
        http_base_port=0,
        chat_template=TEMPLATE,
        reasoning_budget_low=BUDGET,
        log_level="warning",
        **kw,
    )


def _reasoning(msg) -> str | None:
    return (msg.model_extra or {}).get("reasoning_content")


def _low(client: openai.OpenAI, **kw):
    return client.chat.completions.create(
        **{
            "model": "default",
            "temperature": 0,
            "max_tokens": 48,
            "reasoning_effort": "low",
            "messages": ASK,
            **kw,
        }
    )


def test_low_effort_reasons_to_its_budget_then_answers(rclient: openai.OpenAI) -> None:
    r = _low(rclient)
    msg, details = r.choices[0].message, r.usage.completion_tokens_details
    reasoning = _reasoning(msg)
    assert reasoning and msg.content, (reasoning, msg.content)
    for marker in ("<think>", "</think>"):
        assert marker not in msg.content and marker not in reasoning
    # The server closed the block at the budget (the model would go on far longer).
    assert BUDGET <= details.reasoning_tokens <= BUDGET + CLOSE_TOKENS, details
    assert r.usage.completion_tokens > details.reasoning_tokens


def test_stream_equals_non_stream(rclient: openai.OpenAI) -> None:
    whole = _low(rclient).choices[0].message
    reasoning = content = ""
    usage = None
    for chunk in _low(rclient, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            reasoning += (c.delta.model_extra or {}).get("reasoning_content") or ""
            content += c.delta.content or ""
    assert (reasoning, content) == (_reasoning(whole), whole.content)
    assert usage.completion_tokens_details.reasoning_tokens >= BUDGET


def test_effort_none_and_enable_thinking_false_give_no_reasoning(rclient) -> None:
    for kw in (
        {"reasoning_effort": "none"},
        {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}},
    ):
        r = rclient.chat.completions.create(
            model="default", temperature=0, max_tokens=24, messages=ASK, **kw
        )
        msg = r.choices[0].message
        assert not _reasoning(msg) and msg.content, (kw, msg)
        assert "</think>" not in msg.content
        assert r.usage.completion_tokens_details.reasoning_tokens == 0


def test_json_schema_after_thinking_is_valid_json(rclient: openai.OpenAI) -> None:
    r = _low(
        rclient,
        max_tokens=64,
        messages=[
            {"role": "user", "content": "Which city is the capital of France? Answer in JSON."}
        ],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True},
        },
    )
    msg = r.choices[0].message
    assert _reasoning(msg), "the model reasoned first (free text)"
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(msg.content)["city"], str)


def test_forced_tool_call_after_thinking_parses(rclient: openai.OpenAI) -> None:
    r = _low(
        rclient,
        max_tokens=64,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    )
    choice = r.choices[0]
    assert _reasoning(choice.message)
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls[:1]
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_responses_and_messages_carry_the_reasoning(rclient: openai.OpenAI) -> None:
    """The Responses API's reasoning item and the Messages API's thinking block hold what chat's
    reasoning_content holds (the same greedy request through the same pipeline)."""
    import anthropic

    ref = _low(rclient).choices[0].message
    r = rclient.responses.create(
        model="default", temperature=0, max_output_tokens=48, reasoning={"effort": "low"}, input=ASK
    )
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text == _reasoning(ref) and r.output_text == ref.content
    assert r.usage.output_tokens_details.reasoning_tokens >= BUDGET
    claude = anthropic.Anthropic(
        base_url=str(rclient.base_url).removesuffix("/v1/"),
        api_key="unused",
        max_retries=0,
        timeout=300,
    )
    with claude.messages.stream(
        model="default",
        max_tokens=48,
        messages=ASK,
        thinking={"type": "enabled", "budget_tokens": 200},
        extra_body={"temperature": 0},
    ) as stream:  # 200: low
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert (final.content[0].thinking, final.content[1].text) == (_reasoning(ref), ref.content)
