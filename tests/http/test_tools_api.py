"""Tool calls on the HTTP surface, over the fake backend (which replies with a scripted text):
the reply's tool-call markup becomes ``message.tool_calls`` / ``delta.tool_calls``, never
content. The real model is exercised in tests/e2e/test_tools.py."""

from __future__ import annotations

import json

from dvai_bridge.backends.fake import FakeBackend

from .conftest import chat, sse_events

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
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def test_reply_with_a_call_becomes_tool_calls(client_for) -> None:
    c = client_for(FakeBackend(reply="Checking. " + CALL))
    r = c.post("/v1/chat/completions", json=chat("weather?", tools=[TOOL]))
    assert r.status_code == 200
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking. "
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_streamed_call_comes_as_delta_tool_calls(client_for) -> None:
    c = client_for(FakeBackend(reply="Checking. " + CALL))
    r = c.post("/v1/chat/completions", json=chat("weather?", tools=[TOOL], stream=True))
    events = [e for e in sse_events(r.text) if e != "[DONE]"]
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    content = "".join(d.get("content") or "" for d in deltas)
    assert content == "Checking. "
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert calls[0]["index"] == 0 and calls[0]["id"].startswith("call_")
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    args = "".join(tc["function"].get("arguments", "") for tc in calls)
    assert json.loads(args) == {"city": "Paris"}
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_without_tools_the_markup_is_plain_content(client_for) -> None:
    c = client_for(FakeBackend(reply=CALL))
    choice = c.post("/v1/chat/completions", json=chat("x")).json()["choices"][0]
    assert choice["message"]["content"] == CALL
    assert "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"


def test_tool_choice_none_leaves_the_reply_as_text(client_for) -> None:
    c = client_for(FakeBackend(reply=CALL))
    choice = c.post(
        "/v1/chat/completions", json=chat("x", tools=[TOOL], tool_choice="none")
    ).json()["choices"][0]
    assert choice["message"]["content"] == CALL


def test_a_call_to_an_undeclared_function_stays_content(client_for) -> None:
    reply = CALL.replace("get_weather", "rm_rf")
    c = client_for(FakeBackend(reply=reply))
    choice = c.post("/v1/chat/completions", json=chat("x", tools=[TOOL])).json()["choices"][0]
    assert choice["message"]["content"] == reply
    assert choice["finish_reason"] == "stop"


def test_forcing_a_call_on_a_backend_without_constrained_decoding_is_a_400(client_for) -> None:
    c = client_for(FakeBackend(reply=CALL))
    r = c.post("/v1/chat/completions", json=chat("x", tools=[TOOL], tool_choice="required"))
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tools"
    r = c.post("/v1/chat/completions", json=chat("x", response_format={"type": "json_object"}))
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "response_format"
    assert c.post("/v1/chat/completions", json=chat("x")).status_code == 200  # still serving


def test_history_with_calls_and_tool_results_is_accepted(client_for) -> None:
    c = client_for(FakeBackend(reply="It is sunny."))
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny"}'},
    ]
    r = c.post(
        "/v1/chat/completions", json={"model": "fake-model", "messages": messages, "tools": [TOOL]}
    )
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "It is sunny."


def test_response_format_of_an_unknown_type_is_a_400(client) -> None:
    r = client.post("/v1/chat/completions", json=chat("x", response_format={"type": "yaml"}))
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "response_format.type"


ECHO_TOOL = {
    "type": "function",
    "function": {
        "name": "echo",
        "parameters": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    },
}
ECHO_CALL = '<tool_call>\n{"name": "echo", "arguments": {"text": "a</tool_call>b"}}\n</tool_call>'


def test_an_end_marker_inside_the_arguments_is_a_call_streamed_or_not(client_for) -> None:
    c = client_for(FakeBackend(reply=ECHO_CALL))
    choice = c.post("/v1/chat/completions", json=chat("x", tools=[ECHO_TOOL])).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"  # was "stop", the markup as content
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"text": "a</tool_call>b"}
    r = c.post("/v1/chat/completions", json=chat("x", tools=[ECHO_TOOL], stream=True))
    deltas = [
        e["choices"][0]["delta"] for e in sse_events(r.text) if e != "[DONE]" and e["choices"]
    ]
    args = "".join(
        tc["function"].get("arguments", "") for d in deltas for tc in d.get("tool_calls", [])
    )
    assert json.loads(args) == {"text": "a</tool_call>b"}


def test_a_call_cut_short_is_the_same_streamed_or_not(client_for) -> None:
    cut = CALL + '\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Ro'
    c = client_for(FakeBackend(reply=cut))
    whole = c.post("/v1/chat/completions", json=chat("x", tools=[TOOL])).json()["choices"][0]
    got = [
        (t["function"]["name"], t["function"]["arguments"]) for t in whole["message"]["tool_calls"]
    ]
    r = c.post("/v1/chat/completions", json=chat("x", tools=[TOOL], stream=True))
    streamed: dict[int, list[str]] = {}
    for e in sse_events(r.text):
        if e != "[DONE]" and e["choices"]:
            for tc in e["choices"][0]["delta"].get("tool_calls", []):
                s = streamed.setdefault(tc["index"], ["", ""])
                s[0] += tc["function"].get("name") or ""
                s[1] += tc["function"].get("arguments") or ""
    assert got == [tuple(streamed[k]) for k in sorted(streamed)]  # was: the stub dropped
    assert got[1] == ("get_weather", '{"city": "Ro')


def test_legacy_functions_fields_are_a_400_naming_them(client) -> None:
    fn = {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}
    for extra, param in (
        ({"functions": [fn]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
    ):
        r = client.post("/v1/chat/completions", json=chat("x", **extra))
        assert r.status_code == 400  # was 200, the fields silently ignored
        err = r.json()["error"]
        assert err["param"] == param and err["code"] == "invalid_request"
        assert "tool" in err["message"]


def test_a_bad_tool_schema_is_a_400_with_code_invalid_request(client) -> None:
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}
    r = client.post("/v1/chat/completions", json=chat("x", tools=[bad]))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "tools[0].function.parameters"
    assert err["code"] == "invalid_request"  # was null
