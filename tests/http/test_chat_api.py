"""The OpenAI chat/completions surface on the fake backend (which echoes 'echo: <text>')."""

from __future__ import annotations

from .conftest import chat, sse_events


def test_chat_returns_the_openai_shape_with_consistent_usage(client):
    r = client.post("/v1/chat/completions", json=chat("hi there"))
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "fake-model"
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "echo: hi there"}
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] == len(b"echo: hi there") + 1  # + EOS
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_max_tokens_and_max_completion_tokens_cut_with_length(client):
    for field in ("max_tokens", "max_completion_tokens"):
        body = client.post("/v1/chat/completions", json=chat("abcdef", **{field: 4})).json()
        assert body["choices"][0]["message"]["content"] == "echo"
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 4


def test_stream_has_role_first_one_id_one_finish_usage_and_done(client):
    r = client.post(
        "/v1/chat/completions",
        json=chat("abc", stream=True, stream_options={"include_usage": True}),
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = list(sse_events(r.text))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [f["choices"][0]["finish_reason"] for f in finishes] == ["stop"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "echo: abc"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10


def test_a_stop_string_never_leaks_into_the_stream(client):
    r = client.post(
        "/v1/chat/completions", json=chat("one <|stop|> two", stream=True, stop=["<|stop|>", "zzz"])
    )
    chunks = [e for e in sse_events(r.text) if e != "[DONE]"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "echo: one "
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_stop_as_a_single_string(client):
    body = client.post("/v1/chat/completions", json=chat("a-b", stop="-")).json()
    assert body["choices"][0]["message"]["content"] == "echo: a"


def test_n_gives_n_choices(client):
    body = client.post("/v1/chat/completions", json=chat("x", n=3)).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in body["choices"]} == {"echo: x"}


def test_logprobs_cover_every_token_of_the_content(client):
    body = client.post(
        "/v1/chat/completions", json=chat("ab", logprobs=True, top_logprobs=2)
    ).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == "echo: ab"
    assert all(len(t["top_logprobs"]) == 2 for t in content)
    assert all(t["logprob"] <= 0 for t in content)


def test_content_as_text_parts_is_joined(client):
    msg = {
        "role": "user",
        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
    }
    body = client.post("/v1/chat/completions", json={"messages": [msg]}).json()
    assert body["choices"][0]["message"]["content"] == "echo: a\nb"


def test_unknown_fields_are_accepted(client):
    r = client.post("/v1/chat/completions", json=chat("x", some_future_field={"a": 1}))
    assert r.status_code == 200


def test_completions_with_logprobs_and_with_echo(client):
    body = client.post(
        "/v1/completions", json={"prompt": "hey", "max_tokens": 3, "logprobs": 1}
    ).json()
    assert body["object"] == "text_completion"
    (choice,) = body["choices"]
    assert choice["text"] == "ech" and choice["finish_reason"] == "length"
    assert choice["logprobs"]["tokens"] == ["e", "c", "h"]
    assert choice["logprobs"]["text_offset"] == [0, 1, 2]
    echoed = client.post(
        "/v1/completions", json={"prompt": "hey", "max_tokens": 3, "echo": True}
    ).json()
    text = echoed["choices"][0]["text"]  # the fake's prompt tokens carry its script too
    assert text.startswith("hey") and text.endswith("ech") and len(text) > 3
    refused = client.post(
        "/v1/completions", json={"prompt": "hey", "max_tokens": 3, "echo": True, "logprobs": 1}
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "echo"


def test_completions_stream_and_several_prompts(client):
    body = client.post("/v1/completions", json={"prompt": ["a", "b"], "max_tokens": 20}).json()
    assert [c["text"] for c in body["choices"]] == ["echo: a", "echo: b"]
    r = client.post("/v1/completions", json={"prompt": "a", "stream": True})
    events = list(sse_events(r.text))
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == "echo: a"


def test_models_and_health(client):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "fake-model"
    assert client.get("/v1/models/fake-model").json()["id"] == "fake-model"
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["backend"] == "fake"


def test_the_model_field_may_be_omitted_or_default(client):
    for model in (None, "default"):
        payload = {"messages": [{"role": "user", "content": "x"}]}
        if model:
            payload["model"] = model
        assert client.post("/v1/chat/completions", json=payload).status_code == 200


def test_metrics_are_prometheus_text_and_count_what_happened(client):
    client.post("/v1/chat/completions", json=chat("count me"))
    client.post("/v1/chat/completions", json={"bad": 1})
    client.post("/v1/chat/completions", json=chat("count me too"))
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    lines = dict(
        line.rsplit(" ", 1) for line in r.text.splitlines() if line and not line.startswith("#")
    )
    assert (
        float(lines['dvai_bridge_http_requests_total{route="/v1/chat/completions",status="200"}'])
        == 2
    )
    assert (
        float(lines['dvai_bridge_http_requests_total{route="/v1/chat/completions",status="400"}'])
        == 1
    )
    assert float(lines["dvai_bridge_generated_tokens_total"]) == 2 * 1 + len(
        "echo: count me"
    ) + len("echo: count me too")
    assert float(lines["dvai_bridge_time_to_first_token_seconds_count"]) == 2
    assert float(lines["dvai_bridge_prompt_cache_hit_tokens_total"]) > 0  # shared prefix
    assert "dvai_bridge_queue_depth" in lines and "dvai_bridge_prompt_cache_bytes" in lines
