"""Request validation before any work reaches the engine (issue 13 items 1, 2, 8 and 12): each
bad field is a 400 naming it, on the fake backend given a vocabulary as real backends have."""

from __future__ import annotations

import json

import pytest

from dvai_bridge.backends.fake import FakeBackend
from dvai_bridge.protocol.schema import MAX_LOGIT_BIAS, MAX_SEQUENCES

from .conftest import chat
from .test_errors import assert_envelope

U = {"role": "user", "content": "hi"}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


class VocabFake(FakeBackend):
    vocab_size = 259


@pytest.fixture
def vclient(client_for):
    return client_for(VocabFake())


def post(client, path, body):
    return client.post(
        path, content=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )


@pytest.mark.parametrize("top_k", [260, 49152, 10**18, 2**64])
def test_top_k_past_the_vocabulary_is_a_400_naming_top_k(vclient, top_k):
    r = post(vclient, "/v1/chat/completions", chat(top_k=top_k, temperature=0.8))
    assert_envelope(r, 400, param="top_k")


@pytest.mark.parametrize("top_k", [0, 1, 259])
def test_top_k_up_to_the_vocabulary_is_served(vclient, top_k):
    r = post(vclient, "/v1/chat/completions", chat(top_k=top_k, temperature=0.8))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"logit_bias": {str(i): 1 for i in range(MAX_LOGIT_BIAS + 1)}}, "logit_bias"),
        ({"logit_bias": {"-1": 1}}, "logit_bias"),
        ({"logit_bias": {"259": 1}}, "logit_bias"),
        ({"logit_bias": {"9" * 5000: 1}}, "logit_bias"),
        ({"seed": 2**64}, "seed"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"n": 17}, "n"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": float("inf")}, "top_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
    ],
)
def test_sampling_fields_out_of_range_are_a_400_naming_the_field(vclient, extra, param):
    body = json.dumps(chat(**extra))  # NaN / Infinity as Python's json writes them
    r = vclient.post(
        "/v1/chat/completions", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert_envelope(r, 400, param=param)


def test_a_temperature_too_small_to_invert_samples_greedily(vclient):
    r = post(vclient, "/v1/chat/completions", chat(temperature=5e-324))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "path,body,param",
    [
        (
            "/v1/chat/completions",
            {"messages": [U, {"role": "assistant", "tool_calls": [{"function": 5}]}, U]},
            "messages[1].tool_calls[0].function",
        ),
        (
            "/v1/chat/completions",
            {
                "messages": [
                    U,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": 5},
                            }
                        ],
                    },
                    U,
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            "/v1/chat/completions",
            {
                "messages": [U],
                "tools": [TOOL],
                "tool_choice": {"type": "function", "function": "f"},
            },
            "tool_choice.function",
        ),
        ("/v1/completions", {"prompt": ""}, "prompt"),
        ("/v1/completions", {"prompt": ["a", ""]}, "prompt"),
    ],
)
def test_client_errors_that_were_500_are_a_400_naming_the_field(client, path, body, param):
    err = assert_envelope(post(client, path, body), 400, param=param)
    assert "sequence" not in err["message"].lower()


LONE = "\ud800"


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/v1/chat/completions", {"messages": [U], "stop": LONE}, "stop"),
        ("/v1/chat/completions", {"messages": [U], "stop": ["x", LONE]}, "stop[1]"),
        ("/v1/chat/completions", {"messages": [{**U, "name": LONE}]}, "messages[0].name"),
        ("/v1/chat/completions", {"messages": [U], "user": LONE}, "user"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": f"a{LONE}"}]},
            "messages[0].content",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": LONE}]}]},
            "messages[0].content[0].text",
        ),
        (
            "/v1/chat/completions",
            {
                "messages": [U],
                "tools": [{"type": "function", "function": {"name": "f", "description": LONE}}],
            },
            "tools[0].function.description",
        ),
        (
            "/v1/chat/completions",
            {
                "messages": [U],
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {LONE: {}}},
                        },
                    }
                ],
            },
            "tools[0].function.parameters.properties",
        ),
        (
            "/v1/chat/completions",
            {
                "messages": [
                    U,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": LONE},
                            }
                        ],
                    },
                    U,
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
        ("/v1/chat/completions", {"messages": [U], "some_extension": [LONE]}, "some_extension[0]"),
        ("/v1/completions", {"prompt": LONE}, "prompt"),
        ("/v1/completions", {"prompt": ["ok", LONE]}, "prompt[1]"),
    ],
)
def test_lone_surrogates_are_refused_in_every_field(client, path, body, param):
    assert_envelope(post(client, path, body), 400, param=param, mentions="surrogate")


def test_prompts_times_choices_is_bounded_before_work_is_built(client):
    r = post(client, "/v1/completions", {"prompt": ["Hi"] * 5, "n": 16})
    assert_envelope(r, 400, param="n", mentions=str(MAX_SEQUENCES))
    r = post(client, "/v1/completions", {"prompt": [[1]] * (MAX_SEQUENCES + 1)})
    assert_envelope(r, 400, param="prompt")
    r = post(client, "/v1/completions", {"prompt": ["Hi"] * 4, "n": 16, "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == MAX_SEQUENCES


@pytest.mark.parametrize("prompt", [[False], [[True]], [[1, True]], [1, False]])
def test_booleans_are_not_token_ids(client, prompt):
    """JSON true/false in a token-id prompt is a 400 naming prompt (pydantic's lax mode used to
    read them as ids 1/0; schemathesis found it)."""
    err = assert_envelope(post(client, "/v1/completions", {"prompt": prompt}), 400)
    assert err["param"].startswith("prompt"), err


@pytest.mark.parametrize(
    "path,field,value",
    [
        ("/v1/chat/completions", "stream", 0),
        ("/v1/chat/completions", "max_tokens", True),
        ("/v1/chat/completions", "temperature", False),
        ("/v1/responses", "store", 0),
        ("/v1/responses", "seed", False),
        ("/v1/responses", "max_output_tokens", 2.0),
        ("/v1/messages", "stream", 1),
    ],
)
def test_json_types_are_taken_as_the_schema_states_them(client, path, field, value):
    """A number where a boolean goes (or the reverse) is a 400 naming the field, as OpenAI's
    API answers; pydantic's lax mode read ``"stream": 0`` as false (schemathesis found it)."""
    messages = [{"role": "user", "content": "hi"}]
    body = {"input": "hi"} if path == "/v1/responses" else {"messages": messages}
    if path == "/v1/messages":
        body |= {"model": "m", "max_tokens": 2}
    r = client.post(path, json={**body, field: value})
    assert r.status_code == 400, r.text
    if path != "/v1/messages":  # Anthropic's envelope has no param
        assert r.json()["error"]["param"] == field
    assert field in r.text


@pytest.mark.parametrize("keep_alive", ["5m", 0, -1])
def test_keep_alive_is_accepted_and_ignored_by_a_one_model_server(client, keep_alive):
    """Ollama-style clients send it; only a several-model server gives it a meaning."""
    body = {"messages": [{"role": "user", "content": "hi"}], "keep_alive": keep_alive}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
