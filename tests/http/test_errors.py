"""Bad input gets the OpenAI envelope with the right status, and the server keeps serving."""

from __future__ import annotations

import pytest

from dvai_bridge.backends.fake import FakeBackend

from .conftest import chat, sse_events


def assert_envelope(r, status, *, param=..., code=..., mentions=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param is not ...:
        assert err["param"] == param
    if code is not ...:
        assert err["code"] == code
    if mentions:
        assert mentions in err["message"]
    return err


BAD = [
    ("malformed json", b"{not json", 400, None, "not valid JSON"),
    ("json array", b"[1, 2]", 400, None, "JSON object"),
    ("missing messages", b'{"model": "fake-model"}', 400, "messages", "messages"),
    ("empty messages", b'{"messages": []}', 400, "messages", None),
    (
        "wrong type",
        b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
        400,
        "temperature",
        None,
    ),
    (
        "out of range",
        b'{"messages": [{"role": "user", "content": "x"}], "temperature": 7}',
        400,
        "temperature",
        None,
    ),
    (
        "bad role",
        b'{"messages": [{"role": "wizard", "content": "x"}]}',
        400,
        "messages[0].role",
        None,
    ),
    (
        "max_tokens zero",
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
        400,
        "max_tokens",
        None,
    ),
    ("n too large", b'{"messages": [{"role": "user", "content": "x"}], "n": 1000}', 400, "n", None),
]


@pytest.mark.parametrize("name,body,status,param,mentions", BAD, ids=[b[0] for b in BAD])
def test_malformed_requests_get_a_400_envelope(client, name, body, status, param, mentions):
    r = client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert_envelope(r, status, param=param, mentions=mentions)
    assert client.post("/v1/chat/completions", json=chat("ok")).status_code == 200


def test_unknown_model_is_404_model_not_found_with_strict_names(client_for):
    client = client_for(strict_model_names=True, aliases=["mine"])
    r = client.post("/v1/chat/completions", json={**chat("x"), "model": "gpt-9"})
    assert_envelope(r, 404, param="model", code="model_not_found", mentions="gpt-9")
    assert "'fake-model', 'mine'" in r.json()["error"]["message"]  # it names what is served
    for name in ("fake-model", "mine", "default", ""):
        r = client.post("/v1/chat/completions", json={**chat("x"), "model": name})
        assert r.status_code == 200, (name, r.text)


def test_any_model_name_is_served_by_the_one_model(client):
    """Client libraries hard-code names (gpt-3.5-turbo, gpt-4o-mini): a one-model server
    answers them with its model, and says which in ``model``."""
    for name in ("gpt-4o-mini", "gpt-3.5-turbo", "some/other-model"):
        r = client.post("/v1/chat/completions", json={**chat("x"), "model": name})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "fake-model"
    r = client.post(
        "/v1/completions", json={"model": "gpt-3.5-turbo-instruct", "prompt": "x", "max_tokens": 2}
    )
    assert r.status_code == 200 and r.json()["model"] == "fake-model"


def test_models_lists_aliases_with_a_real_created_time(client_for):
    import time

    client = client_for(aliases=["mine", "fake-model", "mine"])
    data = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in data] == ["fake-model", "mine"]  # once each, the id first
    assert all(abs(m["created"] - time.time()) < 600 for m in data)
    assert client.get("/v1/models/mine").json()["id"] == "mine"
    assert client.get("/v1/models/default").json()["id"] == "fake-model"
    assert_envelope(client.get("/v1/models/gpt-9"), 404, param="model", code="model_not_found")


def test_image_part_on_a_text_model_is_refused_naming_the_part(client):
    msg = {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ],
    }
    r = client.post("/v1/chat/completions", json={"messages": [msg]})
    assert_envelope(r, 400, param="messages[0].content[1]", mentions="image_url")


def test_prompt_longer_than_the_context_is_context_length_exceeded(client_for):
    client = client_for(FakeBackend(context_length=64))
    r = client.post("/v1/chat/completions", json=chat("x" * 200))
    assert_envelope(r, 400, code="context_length_exceeded", mentions="64")
    assert client.post("/v1/chat/completions", json=chat("ok")).status_code == 200


@pytest.mark.parametrize(
    "extra,param",
    [
        # The fake backend has no tokenizer to constrain with: forced calls and formats are
        # refused there, not ignored (the real backends enforce them: tests/e2e/test_tools.py).
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"},
            "tools",
        ),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ],
)
def test_fields_we_cannot_honour_are_refused_not_ignored(client, extra, param):
    assert_envelope(client.post("/v1/chat/completions", json=chat("x", **extra)), 400, param=param)


def test_completion_suffix_is_refused(client):
    r = client.post("/v1/completions", json={"prompt": "x", "suffix": "y"})
    assert_envelope(r, 400, param="suffix")


def test_embeddings_on_a_chat_model_is_501_naming_the_alternative(client):
    r = client.post("/v1/embeddings", json={"input": "hello"})
    assert_envelope(r, 501, mentions="llama")
    # the OpenAI SDKs (and litellm, on them) retry a 5xx unless told not to
    assert r.headers["x-should-retry"] == "false"


def test_unknown_route_is_an_envelope_too(client):
    assert_envelope(client.get("/v1/nothing-here"), 404)


def test_failure_mid_stream_sends_an_error_frame_then_done(client_for):
    client = client_for(FakeBackend(fail_after=3))
    r = client.post("/v1/chat/completions", json=chat("abcdef", stream=True))
    assert r.status_code == 200
    events = list(sse_events(r.text))
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "backend_error"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2] if e["choices"])
    assert text == "ech"


def test_failure_without_stream_is_a_500_envelope_and_the_next_request_works(client_for):
    backend = FakeBackend(fail_after=2)
    client = client_for(backend)
    assert_envelope(client.post("/v1/chat/completions", json=chat("x")), 500, code="backend_error")
    backend.fail_after = None
    assert client.post("/v1/chat/completions", json=chat("x")).status_code == 200


def test_api_key_is_required_when_configured_but_health_stays_open(client_for):
    client = client_for(api_key="s3cret")
    assert_envelope(
        client.post("/v1/chat/completions", json=chat("x")), 401, code="invalid_api_key"
    )
    wrong = {"Authorization": "Bearer nope"}
    assert client.post("/v1/chat/completions", json=chat("x"), headers=wrong).status_code == 401
    ok = {"Authorization": "Bearer s3cret"}
    assert client.post("/v1/chat/completions", json=chat("x"), headers=ok).status_code == 200
    assert client.get("/health").status_code == 200


def test_logit_bias_outside_the_vocabulary_is_refused(client_for):
    backend = FakeBackend()
    backend.tokenizer.vocab_size = 259
    client = client_for(backend)
    r = client.post("/v1/chat/completions", json=chat("x", logit_bias={"5000": 1}))
    assert_envelope(r, 400, param="logit_bias", mentions="5000")
    assert (
        client.post("/v1/chat/completions", json=chat("x", logit_bias={"5": 1})).status_code == 200
    )


def test_a_seed_beyond_64_bits_is_refused(client):
    assert_envelope(
        client.post("/v1/chat/completions", json=chat("x", seed=10**30)), 400, param="seed"
    )
