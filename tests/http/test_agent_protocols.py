"""Responses, Messages and token routes on the fake backend, through the official SDKs
(openai, anthropic) over the in-process app: the SDKs parse what the server sends."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from dvai_bridge.backends.fake import FakeBackend
from dvai_bridge.protocol.openai_responses.store import ResponseStore, StoreLimits

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def sdk(c) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://127.0.0.1/v1", api_key="k", http_client=c, max_retries=0)


def claude(c, key: str = "k") -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url="http://127.0.0.1", api_key=key, http_client=c, max_retries=0
    )


def test_responses_create_and_continue(client) -> None:
    o = sdk(client)
    first = o.responses.create(model="m", input="hi", instructions="Be brief.")
    assert first.status == "completed" and first.output_text == "echo: hi"
    assert (
        first.usage.input_tokens > 0 and first.usage.output_tokens == len("echo: hi") + 1
    )  # and EOS
    again = o.responses.create(model="m", input="again", previous_response_id=first.id)
    assert again.output_text == "echo: again" and again.previous_response_id == first.id
    items = o.responses.input_items.list(again.id, order="asc")
    texts = [i.content[0].text for i in items.data]
    assert texts == ["hi", "echo: hi", "again"]  # instructions are not carried over
    assert o.responses.retrieve(first.id).output_text == "echo: hi"
    o.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        o.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as err:
        o.responses.create(model="m", input="x", previous_response_id=first.id)
    assert err.value.body["param"] == "previous_response_id"


def test_store_false_keeps_nothing(client) -> None:
    o = sdk(client)
    r = o.responses.create(model="m", input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        o.responses.retrieve(r.id)


def test_responses_stream_event_sequence(client) -> None:
    events = list(sdk(client).responses.create(model="m", input="hi", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "echo: hi" == events[-1].response.output_text


def test_responses_function_call_round_trip(client_for) -> None:
    c = client_for(FakeBackend(reply=CALL))
    o = sdk(c)
    r = o.responses.create(model="m", input="weather?", tools=[WEATHER])
    (call,) = r.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.arguments == '{"city": "Paris"}' and call.call_id
    streamed = list(o.responses.create(model="m", input="weather?", tools=[WEATHER], stream=True))
    kinds = [e.type for e in streamed]
    assert "response.function_call_arguments.delta" in kinds
    done = next(e for e in streamed if e.type == "response.function_call_arguments.done")
    assert done.arguments == '{"city": "Paris"}'
    # the tool's result continues the stored conversation
    r2 = o.responses.create(
        model="m",
        previous_response_id=r.id,
        tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )
    items = o.responses.input_items.list(r2.id, order="asc").data
    assert [i.type for i in items] == ["message", "function_call", "function_call_output"]


PATCH = '*** Begin Patch\n*** Add File: a.txt\n+hi "there"\n*** End Patch'
APPLY_PATCH = {  # as Codex sends it (freeform, with a lark grammar)
    "type": "custom",
    "name": "apply_patch",
    "description": "Use the `apply_patch` tool to edit files.",
    "format": {"type": "grammar", "syntax": "lark", "definition": 'start: "*** Begin Patch"'},
}
PATCH_CALL = (
    "<tool_call>\n"
    + json.dumps({"name": "apply_patch", "arguments": {"input": PATCH}})
    + "\n</tool_call>"
)


def test_responses_custom_tool_call_round_trip(client_for) -> None:
    """A custom tool runs as a function taking one string and comes back as a
    custom_tool_call whose input is that string, streamed or not (was a 400)."""
    o = sdk(client_for(FakeBackend(reply=PATCH_CALL)))
    r = o.responses.create(model="m", input="add a.txt", tools=[APPLY_PATCH])
    (call,) = r.output
    assert call.type == "custom_tool_call" and call.name == "apply_patch"
    assert call.input == PATCH and call.call_id
    events = list(
        o.responses.create(model="m", input="add a.txt", tools=[APPLY_PATCH], stream=True)
    )
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" not in kinds
    delta = "".join(e.delta for e in events if e.type == "response.custom_tool_call_input.delta")
    done = next(e for e in events if e.type == "response.custom_tool_call_input.done")
    assert delta == done.input == PATCH
    assert events[-1].response.output[0].type == "custom_tool_call"
    r2 = o.responses.create(
        model="m",
        previous_response_id=r.id,
        tools=[APPLY_PATCH],
        input=[{"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Done!"}],
    )
    items = o.responses.input_items.list(r2.id, order="asc").data
    assert [i.type for i in items] == ["message", "custom_tool_call", "custom_tool_call_output"]


def test_a_custom_tool_in_the_history_reaches_the_template_as_a_call(client_for) -> None:
    c = client_for(FakeBackend())
    history = [
        {"type": "message", "role": "user", "content": "add a.txt"},
        {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": PATCH},
        {"type": "custom_tool_call_output", "call_id": "c1", "output": "Done!"},
    ]
    body = {"model": "m", "input": history, "tools": [APPLY_PATCH]}
    assert c.post("/v1/responses", json=body).status_code == 200
    # a custom tool_choice is the named function's (which the fake cannot force: its 400)
    forced = c.post(
        "/v1/responses", json={**body, "tool_choice": {"type": "custom", "name": "apply_patch"}}
    )
    assert forced.status_code == 400 and "fake backend cannot constrain" in forced.text
    bad = {**body, "input": [{**history[1], "input": None}]}
    r = c.post("/v1/responses", json=bad)
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[0].input"
    for field, value in [("name", 5), ("description", 5), ("format", "lark")]:
        tool = {**APPLY_PATCH, field: value}
        r = c.post("/v1/responses", json={"model": "m", "input": "hi", "tools": [tool]})
        assert r.status_code == 400 and r.json()["error"]["param"] == f"tools[0].{field}", r.text


def test_responses_refuses_unknown_tool_types(client) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk(client).responses.create(
            model="m", input="hi", tools=[{"type": "file_search", "vector_store_ids": []}]
        )
    assert err.value.body["param"] == "tools[0].type" and "file_search" in err.value.message
    ok = sdk(client).responses.create(model="m", input="hi", tools=[{"type": "web_search"}])
    assert ok.output_text == "echo: hi"  # ignored with a warning (docs/protocols.md)


def test_input_tokens_matches_usage(client) -> None:
    r = client.post("/v1/responses/input_tokens", json={"input": "hi"})
    used = sdk(client).responses.create(model="m", input="hi").usage.input_tokens
    assert r.json() == {"object": "response.input_tokens", "input_tokens": used}


def test_store_is_bounded_lru_with_ttl(tmp_path) -> None:
    now = [0.0]
    s = ResponseStore(
        StoreLimits(max_entries=2, max_bytes=10_000, ttl_s=10, directory=str(tmp_path)),
        clock=lambda: now[0],
    )
    for k in ("resp_a", "resp_b"):
        s.put(k, {"v": k})
    s.get("resp_a")  # a is now the most recently used
    s.put("resp_c", {"v": "c"})
    assert s.get("resp_b") is None and s.get("resp_a") == {"v": "resp_a"}
    assert not s.put("resp_big", {"v": "x" * 20_000})  # over the byte limit alone
    reopened = ResponseStore(StoreLimits(max_entries=2, directory=str(tmp_path)))
    assert reopened.get("resp_c") == {"v": "c"}  # on disk: outlives the process
    now[0] = 11
    assert s.get("resp_a") is None  # expired


def test_messages_create_stream_and_tools(client_for) -> None:
    c = claude(client_for())
    m = c.messages.create(
        model="m", max_tokens=50, system="Be brief.", messages=[{"role": "user", "content": "hi"}]
    )
    assert m.content[0].text == "echo: hi" and m.stop_reason == "end_turn"
    with c.messages.stream(
        model="m", max_tokens=50, messages=[{"role": "user", "content": "yo"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: yo" == final.content[0].text and final.usage.output_tokens == 9  # and EOS
    t = claude(client_for(FakeBackend(reply=CALL)))
    tool = {"name": "get_weather", "input_schema": WEATHER["parameters"]}
    m = t.messages.create(
        model="m", max_tokens=200, tools=[tool], messages=[{"role": "user", "content": "weather?"}]
    )
    (use,) = m.content
    assert m.stop_reason == "tool_use" and use.input == {"city": "Paris"}
    with t.messages.stream(
        model="m", max_tokens=200, tools=[tool], messages=[{"role": "user", "content": "weather?"}]
    ) as stream:
        assert stream.get_final_message().content[0].input == {"city": "Paris"}
    n = c.messages.count_tokens(
        model="m",
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": use.id, "name": "get_weather", "input": use.input}
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
            },
        ],
    )
    assert n.input_tokens > 0


def test_messages_errors_in_anthropic_envelope(client_for) -> None:
    c = client_for(api_key="secret")
    r = c.post("/v1/messages", json={"messages": []}, headers={"x-api-key": "secret"})
    assert r.status_code == 400
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.AuthenticationError) as err:
        claude(c, key="wrong").messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert err.value.body["error"]["type"] == "authentication_error"
    m = claude(c, key="secret").messages.create(
        model="m", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    assert m.content[0].text == "echo: hi"


def test_unknown_route_names_the_routes(client) -> None:
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_route"
    assert "POST /v1/responses" in r.json()["error"]["message"]
    assert "POST /v1/messages" in r.json()["error"]["message"]


def test_token_utilities(client) -> None:
    assert client.post("/detokenize", json={"tokens": [104, 105]}).json() == {"content": "hi"}
    prompt = client.post(
        "/apply-template", json={"messages": [{"role": "user", "content": "yo"}]}
    ).json()["prompt"]
    assert "<|im_start|>user\nyo<|im_end|>" in prompt
    r = client.post("/detokenize", json={"tokens": ["a"]})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("tokens")


def test_failure_mid_stream_ends_each_stream_its_own_way(client_for) -> None:
    c = client_for(FakeBackend(fail_after=3))
    events = list(sdk(c).responses.create(model="m", input="hello there", stream=True))
    assert events[-1].type == "response.failed"
    assert "failed on purpose" in events[-1].response.error.message
    r = c.post(
        "/v1/messages",
        json={
            "max_tokens": 50,
            "stream": True,
            "messages": [{"role": "user", "content": "hello there"}],
        },
    )
    assert "event: error\ndata: " in r.text and '"type":"error"' in r.text
    assert "message_stop" not in r.text


def test_stop_sequence_is_reported(client) -> None:
    c = claude(client)
    body = {
        "model": "m",
        "max_tokens": 50,
        "stop_sequences": ["lo"],
        "messages": [{"role": "user", "content": "hello"}],
    }
    m = c.messages.create(**body)
    assert (m.content[0].text, m.stop_reason, m.stop_sequence) == (
        "echo: hel",
        "stop_sequence",
        "lo",
    )
    with c.messages.stream(**body) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "lo")
    plain = c.messages.create(model="m", max_tokens=50, messages=body["messages"])
    assert (plain.stop_reason, plain.stop_sequence) == ("end_turn", None)
