"""A catalog of malformed and hostile requests: each gets a 4xx OpenAI envelope that names the
problem, and the server answers a normal request correctly right after.

tests/http/test_errors.py holds the first cases (malformed JSON, a JSON array, missing or empty
messages, a bad role, n=1000, unsupported fields, ...); none of them is repeated here. One app
(fake backend, 256-token context) serves the whole catalog, so every case also proves that the
ones before it left nothing behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dvai_bridge.backends.fake import FakeBackend
from tests.http.conftest import make_app
from tests.http.test_errors import assert_envelope

CHAT, COMP, EMB = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
USER = {"role": "user", "content": "x"}
CONTEXT = 256
LIMIT = 16 << 20


@dataclass
class Case:
    name: str
    body: Any  # bytes as sent, or an object sent as JSON
    status: int
    param: str | None | type(...) = ...
    mentions: str | None = None
    path: str = CHAT
    method: str = "POST"
    content_type: str = "application/json"

    def raw(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode()


def chat(**fields: Any) -> dict:
    return {"messages": [USER], **fields}


CATALOG = [
    # -- not JSON, or not an object --------------------------------------------------------
    Case("truncated json", b'{"messages": [', 400, None, "not valid JSON"),
    Case("trailing garbage", b'{"messages": []} extra', 400, None, "not valid JSON"),
    Case("single quotes", b"{'messages': []}", 400, None, "not valid JSON"),
    Case("empty body", b"", 400, None, "JSON object"),
    Case("json null", b"null", 400, None, "JSON object"),
    Case("json string", b'"hello"', 400, None, "JSON object"),
    Case("json number", b"42", 400, None, "JSON object"),
    Case("invalid utf-8 bytes", b'{"messages": [{"role": "user", "content": "\xff\xfe\xc3"}]}',
         400, None, "not valid UTF-8"),
    Case("latin-1 body", '{"messages": [{"role": "user", "content": "café"}]}'.encode("latin-1"),
         400, None, "UTF-8"),
    Case("nested 100k deep", b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400,
         None, "nested too deeply"),
    Case("form content type", b"messages=hi", 400, None, "Content-Type: application/json",
         content_type="application/x-www-form-urlencoded"),
    Case("text/plain (a no-preflight browser POST)", chat(), 400, None, "application/json",
         content_type="text/plain"),
    # -- messages ----------------------------------------------------------------------------
    Case("messages is an object", {"messages": USER}, 400, "messages", "valid list"),
    Case("messages is a string", {"messages": "hi"}, 400, "messages", "valid list"),
    Case("message is a string", {"messages": ["hi"]}, 400, "messages[0]", "messages[0]"),
    Case("role missing", {"messages": [{"content": "x"}]}, 400, "messages[0].role", "Missing"),
    Case("role null", {"messages": [{"role": None, "content": "x"}]}, 400, "messages[0].role"),
    Case("role upper case", {"messages": [{"role": "USER", "content": "x"}]}, 400,
         "messages[0].role", "user"),
    Case("role is a number", {"messages": [{"role": 1, "content": "x"}]}, 400,
         "messages[0].role"),
    Case("content is a number", {"messages": [{"role": "user", "content": 5}]}, 400,
         "messages[0].content", "a valid string or a valid list"),
    Case("content is an object", {"messages": [{"role": "user", "content": {"text": "x"}}]},
         400, "messages[0].content", "a valid string or a valid list"),
    Case("content part of unknown type",
         {"messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]}, 400,
         "messages[0].content[0]", "'video'"),
    Case("text part without text",
         {"messages": [{"role": "user", "content": [{"type": "text"}]}]}, 400,
         "messages[0].content[0].text", "Missing"),
    Case("user message without content", {"messages": [{"role": "user"}]}, 400,
         "messages[0].content", "no content"),
    Case("second message broken", {"messages": [USER, {"role": "user", "content": None,
                                                       "name": 7}]}, 400, "messages[1].name"),
    Case("enormous message over the context", {"messages": [{"role": "user",
                                                             "content": "x" * 1_000_000}]},
         400, "messages", "maximum context length"),
    Case("enormous body over 16 MiB", {"messages": [{"role": "user", "content": "x" * LIMIT}]},
         413, None, "16 MiB"),
    Case("many messages over the context", {"messages": [USER] * 5000}, 400, "messages",
         "maximum context length"),
    # -- numbers out of range or of the wrong type ----------------------------------------
    Case("temperature negative", chat(temperature=-0.1), 400, "temperature", "greater than"),
    Case("temperature NaN", b'{"messages": [{"role": "user", "content": "x"}], '
         b'"temperature": NaN}', 400, "temperature"),
    Case("temperature Infinity", b'{"messages": [{"role": "user", "content": "x"}], '
         b'"temperature": 1e999}', 400, "temperature"),
    Case("top_p above 1", chat(top_p=1.5), 400, "top_p", "less than"),
    Case("top_p a word", chat(top_p="high"), 400, "top_p"),
    Case("presence_penalty 3", chat(presence_penalty=3), 400, "presence_penalty"),
    Case("frequency_penalty -3", chat(frequency_penalty=-3), 400, "frequency_penalty"),
    Case("repetition_penalty 0", chat(repetition_penalty=0), 400, "repetition_penalty"),
    Case("top_k negative", chat(top_k=-1), 400, "top_k"),
    Case("min_p 2", chat(min_p=2), 400, "min_p"),
    Case("max_tokens negative", chat(max_tokens=-1), 400, "max_tokens"),
    Case("max_tokens huge (1e300)", b'{"messages": [{"role": "user", "content": "x"}], '
         b'"max_tokens": 1e300}', 400, "max_tokens"),
    Case("max_tokens fractional", chat(max_tokens=1.5), 400, "max_tokens"),
    Case("max_tokens a word", chat(max_tokens="lots"), 400, "max_tokens"),
    Case("max_completion_tokens 0", chat(max_completion_tokens=0), 400,
         "max_completion_tokens"),
    Case("n 17", chat(n=17), 400, "n"),
    Case("n 0", chat(n=0), 400, "n"),
    Case("seed a word", chat(seed="random"), 400, "seed"),
    Case("top_logprobs 21", chat(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    Case("logprobs a phrase", chat(logprobs="yes please"), 400, "logprobs"),
    Case("logit_bias value 500", chat(logit_bias={"1": 500}), 400, "logit_bias.1",
         "less than or equal to 100"),
    Case("logit_bias a list", chat(logit_bias=[1, 2]), 400, "logit_bias"),
    Case("stream a word", chat(stream="maybe"), 400, "stream"),
    Case("stream_options a string", chat(stream_options="usage"), 400, "stream_options"),
    Case("stop 17 strings", chat(stop=["s"] * 17), 400, "stop", "at most 16 items"),
    Case("stop a number", chat(stop=5), 400, "stop", "a valid string or a valid list"),
    # -- tools and formats -----------------------------------------------------------------
    Case("tools a string", chat(tools="search"), 400, "tools", "valid list"),
    Case("tools of strings", chat(tools=["search"]), 400, "tools[0]", "dictionary"),
    Case("tool without a name", chat(tools=[{"type": "function", "function": {}}]), 400,
         "tools[0].function.name", "name"),
    Case("tool with a broken schema", chat(tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"type": "bogus", "properties": 3}}}]), 400,
         "tools[0].function.parameters", "schema"),
    Case("tool_choice naming an unknown function", chat(
        tools=[{"type": "function", "function": {"name": "f"}}],
        tool_choice={"type": "function", "function": {"name": "g"}}), 400, "tool_choice", "'g'"),
    Case("tools declaring a name twice", chat(tools=[{"type": "function", "function": {
        "name": "f"}}] * 2), 400, "tools[1].function.name", "twice"),
    Case("response_format of an unknown type", chat(response_format={"type": "xml"}), 400,
         "response_format.type", "xml"),
    Case("response_format schema that is no schema", chat(response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}), 400,
         "response_format.json_schema.schema", "bogus"),
    Case("tool_choice required", chat(tool_choice="required"), 400, "tool_choice"),
    Case("tool_choice a number", chat(tool_choice=3), 400, "tool_choice", "valid string"),
    Case("response_format json_schema", chat(response_format={"type": "json_schema"}), 400,
         "response_format.json_schema", "json_schema"),
    Case("response_format a string", chat(response_format="json"), 400, "response_format"),
    # -- model -------------------------------------------------------------------------------
    Case("model a path", chat(model="../../etc/passwd"), 404, "model", "../../etc/passwd"),
    Case("model a number", chat(model=7), 400, "model"),
    Case("model on /v1/models/{id}", None, 404, "model", "no-such-model",
         path="/v1/models/no-such-model", method="GET"),
    # -- routes and methods ------------------------------------------------------------------
    Case("GET on a POST route", None, 405, None, "Method Not Allowed", method="GET"),
    Case("PUT on a POST route", chat(), 405, None, "Method Not Allowed", method="PUT"),
    Case("typo in the route", chat(), 404, None, "Not Found", path="/v1/chat/completion"),
    # -- completions -------------------------------------------------------------------------
    Case("completions without prompt", {"max_tokens": 3}, 400, "prompt", "Missing",
         path=COMP),
    Case("completions empty prompt list", {"prompt": []}, 400, "prompt", "empty", path=COMP),
    Case("completions prompt an object", {"prompt": {"text": "x"}}, 400, "prompt",
         "a valid string or a valid list", path=COMP),
    Case("completions prompt mixing text and ids", {"prompt": [1, "a"]}, 400, "prompt[1]",
         "valid integer", path=COMP),
    Case("completions prompt over the context", {"prompt": "y" * 5000}, 400, "prompt",
         "maximum context length", path=COMP),
    Case("completions echo with stream", {"prompt": "x", "echo": True, "stream": True}, 400,
         "echo", path=COMP),
    Case("completions best_of 3 of n 1", {"prompt": "x", "best_of": 3}, 400, "best_of",
         path=COMP),
    Case("completions logprobs 21", {"prompt": "x", "logprobs": 21}, 400, "logprobs",
         path=COMP),
    Case("completions unknown model", {"prompt": "x", "model": "gpt-4o"}, 404, "model",
         "gpt-4o", path=COMP),
    # -- embeddings --------------------------------------------------------------------------
    Case("embeddings without input", {"model": "fake-model"}, 400, "input", "Missing",
         path=EMB),
    Case("embeddings bad encoding_format", {"input": "x", "encoding_format": "hex"}, 400,
         "encoding_format", path=EMB),
    Case("embeddings dimensions 0", {"input": "x", "dimensions": 0}, 400, "dimensions",
         path=EMB),
    # -- text that cannot be encoded, empty token prompts -----------------------------------
    Case("lone UTF-16 surrogate in content",
         b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}', 400, ..., "surrogate"),
    Case("completions prompt of an empty token list", {"prompt": [[]]}, 400, "prompt",
         "empty", path=COMP),
]


@pytest.fixture(scope="module")
def server():
    app, scheduler = make_app(FakeBackend(context_length=CONTEXT))
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        yield client
    scheduler.close()


def send(client: TestClient, case: Case):
    body = case.raw() if case.body is not None else None
    return client.request(case.method, case.path, content=body,
                          headers={"content-type": case.content_type})


def still_serves(client: TestClient) -> None:
    r = client.post(CHAT, json={"messages": [{"role": "user", "content": "still here?"}]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "echo: still here?"


def test_the_catalog_is_big_enough():
    names = [c.name for c in CATALOG]
    assert len(names) == len(set(names)) and len(names) >= 40


@pytest.mark.parametrize("case", CATALOG, ids=[c.name for c in CATALOG])
def test_hostile_request_gets_a_4xx_envelope_naming_the_problem(server, case):
    r = send(server, case)
    err = assert_envelope(r, case.status, param=case.param)
    assert 400 <= r.status_code < 500
    if case.mentions:
        assert case.mentions.lower() in err["message"].lower(), err["message"]
    if case.param not in (None, ...):  # the message names the field it is about
        assert case.param.split("[")[0].split(".")[0] in err["message"] or \
            case.param == "model" and "model" in err["message"]
    still_serves(server)


def test_nothing_is_left_running_after_the_catalog(server):
    health = server.get("/health").json()
    assert (health["running"], health["queued"]) == (0, 0)
