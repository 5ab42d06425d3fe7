"""Tools and structured output on the llama backend (llama.cpp's sampler chain, with the
grammar's mask written into the logits row it samples from), through the openai SDK."""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from tests.tool_cases import ASK, WEATHER_TOOL, WeatherArgs


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    founded_year: int = Field(ge=-3000, le=2100)


def test_parse_with_a_pydantic_model(client):
    r = client.chat.completions.parse(
        model="default",
        temperature=0,
        max_tokens=60,
        response_format=City,
        messages=[{"role": "user", "content": "Describe the city of Paris."}],
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(r.choices[0].message.parsed, City)


def test_named_tool_call_streamed_and_not(client):
    kw = {
        "model": "default",
        "temperature": 0,
        "max_tokens": 60,
        "messages": ASK,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    whole = client.chat.completions.create(**kw).choices[0]
    assert whole.finish_reason == "tool_calls"
    (call,) = whole.message.tool_calls
    WeatherArgs.model_validate_json(call.function.arguments)
    chunks = list(client.chat.completions.create(stream=True, **kw))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "get_weather" and calls[0].id
    args = "".join(tc.function.arguments or "" for tc in calls)
    assert json.loads(args) == json.loads(call.function.arguments)


def test_logprobs_under_a_grammar_name_only_allowed_tokens(client):
    r = client.chat.completions.create(
        model="default",
        temperature=0,
        max_tokens=20,
        logprobs=True,
        top_logprobs=5,
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "yn",
                "schema": {
                    "type": "object",
                    "properties": {"ok": {"type": "boolean"}},
                    "required": ["ok"],
                    "additionalProperties": False,
                },
            },
        },
        messages=[{"role": "user", "content": "Is the sky blue?"}],
    )
    body = json.loads(r.choices[0].message.content)
    assert isinstance(body["ok"], bool)
    # The first token of the answer must open the object: the alternatives the grammar
    # forbids have no probability left (-9999, OpenAI's figure for it; JSON has no -inf).
    first = r.choices[0].logprobs.content[0]
    assert first.token.startswith("{")
    assert all(alt.logprob == -9999.0 or alt.token.startswith("{") for alt in first.top_logprobs)
