"""Tools and structured output through the official openai SDK, on the real SmolLM2 model.

SmolLM2's chat template has no tools, so the bridge describes them in a Hermes-style system
prompt; ``tool_choice: required`` / a named function and ``response_format`` are enforced by
constrained decoding (llguidance), so even this 135M model returns valid calls and JSON.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel, Field

from tests.tool_cases import ASK, TIME_TOOL, WEATHER_TOOL, WeatherArgs


class Person(BaseModel):
    name: str = Field(max_length=40)
    age: int = Field(ge=0, le=150)
    languages: list[Literal["English", "French", "Spanish", "German"]] = Field(max_length=3)


def _no_markup(text: str | None) -> None:
    assert "<tool_call" not in (text or "")
    assert "</tool_call" not in (text or "")


# -- structured output -----------------------------------------------------------------------


def test_parse_with_a_pydantic_model(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.parse(
        model=model,
        temperature=0,
        max_tokens=80,
        response_format=Person,
        messages=[
            {
                "role": "user",
                "content": "Describe a French teacher named Marie, 34, "
                "who speaks French and English.",
            }
        ],
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    person = choice.message.parsed
    assert isinstance(person, Person)
    assert Person.model_validate_json(choice.message.content) == person


def test_json_object_is_a_json_object(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(
        model=model,
        temperature=0,
        max_tokens=60,
        response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give the capital of France as JSON."}],
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_json_schema_streamed_is_valid(client: openai.OpenAI, model: str) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    chunks = list(
        client.chat.completions.create(
            model=model,
            temperature=0,
            max_tokens=30,
            stream=True,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "sum", "schema": schema, "strict": True},
            },
            messages=[{"role": "user", "content": "What is 2 + 2?"}],
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    body = json.loads(text)
    assert set(body) == {"answer"} and isinstance(body["answer"], int)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


@pytest.mark.parametrize(
    ("schema", "needle"),
    [
        ({"type": "object", "properties": {"a": {"type": "foo"}}}, "foo"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"not": {"type": "string"}}, "not"),
    ],
)
def test_a_schema_that_cannot_be_enforced_is_a_400(
    client: openai.OpenAI, model: str, schema: dict, needle: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=model,
            max_tokens=5,
            messages=ASK,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        )
    assert needle in info.value.message
    assert info.value.body["param"].startswith("response_format")


# -- tools -----------------------------------------------------------------------------------


def test_named_tool_call(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(
        model=model,
        temperature=0,
        max_tokens=60,
        messages=ASK,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    _no_markup(choice.message.content)
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    WeatherArgs.model_validate_json(call.function.arguments)


def test_required_tool_call_streamed(client: openai.OpenAI, model: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=model,
            temperature=0,
            max_tokens=60,
            messages=ASK,
            tools=[WEATHER_TOOL],
            tool_choice="required",
            parallel_tool_calls=False,
            stream=True,
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    for d in deltas:
        _no_markup(d.content)
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert calls, "no delta.tool_calls"
    first = calls[0]
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert first.function.name == "get_weather"
    assert all(tc.index == 0 for tc in calls)
    assert all(tc.id is None and tc.function.name is None for tc in calls[1:])
    arguments = "".join(tc.function.arguments or "" for tc in calls)
    WeatherArgs.model_validate_json(arguments)
    # the arguments stream as the model writes them, not in one piece at the end
    assert len([tc for tc in calls if tc.function.arguments]) > 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_required_with_parallel_calls_never_leaks_markup(client: openai.OpenAI, model: str) -> None:
    # After a complete call the grammar lets the model open another (at most one per offered
    # function); SmolLM2 does, and may run into max_tokens inside it. The complete calls come
    # back whole; a cut one comes back as the stream sends it (its arguments as far as they
    # were written), and the finish reason says the reply was cut.
    r = client.chat.completions.create(
        model=model,
        temperature=0,
        max_tokens=60,
        messages=ASK,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice="required",
    )
    choice = r.choices[0]
    _no_markup(choice.message.content)
    assert choice.message.tool_calls and len(choice.message.tool_calls) <= 2
    cut = r.usage.completion_tokens >= 60
    whole = choice.message.tool_calls[:-1] if cut else choice.message.tool_calls
    for call in whole:
        json.loads(call.function.arguments)
    assert choice.finish_reason == ("length" if cut else "tool_calls")


def test_stream_accumulates_like_non_stream(client: openai.OpenAI, model: str) -> None:
    kw: dict[str, Any] = {
        "model": model,
        "temperature": 0,
        "max_tokens": 60,
        "messages": ASK,
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }
    whole = client.chat.completions.create(**kw).choices[0].message.tool_calls
    with client.chat.completions.stream(**kw) as stream:
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in streamed] == [
        (c.function.name, json.loads(c.function.arguments)) for c in whole
    ]


def test_two_step_round_trip(client: openai.OpenAI, model: str) -> None:
    first = client.chat.completions.create(
        model=model,
        temperature=0,
        max_tokens=60,
        messages=ASK,
        tools=[WEATHER_TOOL],
        tool_choice="required",
    )
    msg = first.choices[0].message
    (call,) = msg.tool_calls
    history = [
        *ASK,
        msg.model_dump(exclude_none=True),
        {
            "role": "tool",
            "tool_call_id": call.id,
            "content": json.dumps(
                {"city": "Paris", "temperature": 18, "unit": "celsius", "sky": "sunny"}
            ),
        },
    ]
    second = client.chat.completions.create(
        model=model,
        temperature=0,
        max_tokens=40,
        messages=history,
        tools=[WEATHER_TOOL],
        tool_choice="none",
    )
    choice = second.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.tool_calls is None
    assert choice.message.content and choice.message.content.strip()
    _no_markup(choice.message.content)
    # The tool's answer reached the prompt: the second prompt is the first plus the call and
    # the response (the tools themselves are not shown with tool_choice "none").
    assert second.usage.prompt_tokens > 30


def test_auto_may_answer_in_text_without_leaking_markup(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(
        model=model,
        temperature=0,
        max_tokens=40,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "Say hello."}],
    )
    choice = r.choices[0]
    _no_markup(choice.message.content)
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        for c in choice.message.tool_calls:
            json.loads(c.function.arguments)
    else:
        assert choice.finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        (
            {
                "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            "tools[0].function.name",
        ),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": [WEATHER_TOOL, WEATHER_TOOL]}, "tools[1].function.name"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"x": {"type": "nope"}}},
                        },
                    }
                ]
            },
            "tools[0].function.parameters",
        ),
        # a valid schema that cannot be enforced: fine to show (auto), refused when forced
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "array", "uniqueItems": True},
                        },
                    }
                ],
                "tool_choice": "required",
            },
            "tools",
        ),
    ],
)
def test_bad_tool_requests_are_400_naming_the_field(
    client: openai.OpenAI, model: str, kw: dict, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, max_tokens=5, messages=ASK, **kw)
    assert info.value.body["param"] == param
