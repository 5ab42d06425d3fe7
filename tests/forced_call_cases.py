"""Forced tool calls (``tool_choice`` required or named) that real models used to get wrong
(issue 19 items 2, 3, 4, 6), as checks shared by the MLX e2e suite and the llama suite.

Each ``check_*`` takes an ``openai.OpenAI`` client on a server with the embedded model and
asserts the protocol (status, shapes, finish_reason, stream == whole), not the model's wisdom.
"""

from __future__ import annotations

import json
from typing import Any

import openai

from tests.clients.drivers.nested import Trip

NESTED_TOOL = openai.pydantic_function_tool(Trip, name="plan_trip")
NO_PARAMS_TOOL = {"type": "function", "function": {"name": "ping", "description": "Ping."}}
OPEN_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
        },
    },
}  # no additionalProperties: undeclared keys must still be refused
ECHO = {  # the item 6 request, verbatim
    "temperature": 0,
    "max_tokens": 60,
    "parallel_tool_calls": False,
    "messages": [{"role": "user", "content": "Echo something."}],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "echo",
                "parameters": {
                    "type": "object",
                    "properties": {"text": {"type": "string", "enum": ["a</tool_call>b"]}},
                    "required": ["text"],
                    "additionalProperties": False,
                },
            },
        }
    ],
    "tool_choice": "required",
}


def _both(client: openai.OpenAI, **kw: Any) -> tuple[Any, list[dict[str, str]], str]:
    """(non-streamed choice, streamed calls as [{name, arguments}], streamed finish_reason)."""
    whole = client.chat.completions.create(**kw).choices[0]
    calls: dict[int, dict[str, str]] = {}
    reason = ""
    for chunk in client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            for tc in c.delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"name": "", "arguments": ""})
                call["name"] += (tc.function.name or "") if tc.function else ""
                call["arguments"] += (tc.function.arguments or "") if tc.function else ""
            reason = c.finish_reason or reason
    return whole, [calls[k] for k in sorted(calls)], reason


def _whole_calls(choice: Any) -> list[dict[str, str]]:
    return [
        {"name": c.function.name, "arguments": c.function.arguments}
        for c in choice.message.tool_calls or []
    ]


def check_nested_pydantic_tool(client: openai.OpenAI, model: str) -> None:
    """Item 2: ``$defs``/``$ref`` in a forced call's parameters compile and are enforced."""
    assert "$defs" in NESTED_TOOL["function"]["parameters"]
    whole, streamed, reason = _both(
        client,
        model=model,
        temperature=0,
        max_tokens=80,
        tools=[NESTED_TOOL],
        tool_choice="required",
        messages=[{"role": "user", "content": "Plan a trip to Rome."}],
    )
    assert whole.finish_reason == reason == "tool_calls"
    (call,) = whole.message.tool_calls
    assert call.function.name == "plan_trip"
    Trip.model_validate_json(call.function.arguments)  # the nested object has its shape
    assert streamed == _whole_calls(whole)


def check_no_undeclared_keys(client: openai.OpenAI, model: str) -> None:
    """Item 3: a tool with no parameters gets ``{}``; an object without
    ``additionalProperties`` gets only its declared keys."""
    r = client.chat.completions.create(
        model=model,
        temperature=0,
        max_tokens=40,
        tools=[NO_PARAMS_TOOL],
        tool_choice="required",
        messages=[{"role": "user", "content": "Ping the server."}],
    )
    (call,) = r.choices[0].message.tool_calls
    assert json.loads(call.function.arguments) == {}
    assert r.choices[0].finish_reason == "tool_calls"
    r = client.chat.completions.create(
        model=model,
        temperature=0,
        max_tokens=60,
        tools=[OPEN_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        messages=[
            {
                "role": "user",
                "content": "Weather in Paris, with the humidity, wind "
                "and the forecast for tomorrow?",
            }
        ],
    )
    (call,) = r.choices[0].message.tool_calls
    assert set(json.loads(call.function.arguments)) == {"city"}
    assert r.choices[0].finish_reason == "tool_calls"


def check_required_stops_after_the_declared_calls(client: openai.OpenAI, model: str) -> None:
    """Item 4: ``required`` with one tool and parallel calls allowed ends after one call with
    ``tool_calls``, instead of repeating the call until ``max_tokens``."""
    whole, streamed, reason = _both(
        client,
        model=model,
        temperature=0,
        max_tokens=200,
        tools=[OPEN_TOOL],
        tool_choice="required",
        messages=[{"role": "user", "content": "Weather in Paris, London, Rome and Oslo?"}],
    )
    assert whole.finish_reason == reason == "tool_calls"
    assert len(whole.message.tool_calls) == 1
    assert streamed == _whole_calls(whole)


def check_a_cut_call_is_the_same_streamed_or_not(client: openai.OpenAI, model: str) -> None:
    """Item 4: a forced call cut by ``max_tokens`` comes back the same way in both replies:
    named, with its arguments as far as they were written, and ``finish_reason: length``."""
    whole, streamed, reason = _both(
        client,
        model=model,
        temperature=0,
        max_tokens=24,
        tools=[NESTED_TOOL],
        tool_choice="required",
        messages=[{"role": "user", "content": "Plan a trip to Rome."}],
    )
    assert whole.finish_reason == reason == "length"
    assert whole.message.content in (None, "")
    assert _whole_calls(whole) == streamed
    assert [c["name"] for c in streamed] == ["plan_trip"]


def check_end_marker_inside_a_json_string(client: openai.OpenAI, model: str) -> None:
    """Item 6: ``</tool_call>`` inside the arguments does not end the call; the non-streamed
    reply has the call, as the stream does, never plain content."""
    whole, streamed, reason = _both(client, model=model, **ECHO)
    assert whole.finish_reason == reason == "tool_calls"
    assert whole.message.content in (None, "")
    (call,) = whole.message.tool_calls
    assert json.loads(call.function.arguments) == {"text": "a</tool_call>b"}
    assert streamed == _whole_calls(whole)


CHECKS = [
    check_nested_pydantic_tool,
    check_no_undeclared_keys,
    check_required_stops_after_the_declared_calls,
    check_a_cut_call_is_the_same_streamed_or_not,
    check_end_marker_inside_a_json_string,
]
