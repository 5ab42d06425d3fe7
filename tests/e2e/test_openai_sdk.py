"""The official ``openai`` Python SDK against the real model behind the bridge."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

MAIN = "Write one sentence about the ocean."
MAIN_TOKENS = 16
SHORT = "Say hello."
SHORT_TOKENS = 8
COUNT = "Count from 1 to 10."
COUNT_TOKENS = 20
# Stop strings to try, in order, against the greedy answer to COUNT; the first one found (not
# at the very start) is used. "\n3." spans several tokens, which exercises the held-back text.
STOP_CANDIDATES = ("\n3.", "3.", "\n3", " 3", "3")
JOKE = "Tell me a joke."
JOKE_TOKENS = 12
SEED = 1234
WARM = 0.8
FINISH = ("stop", "length")


def user(content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


def check_usage(u: Any) -> None:
    assert u is not None
    assert u.prompt_tokens > 0
    assert u.completion_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def stream_chat(client: openai.OpenAI, model: str, prompt: str, **kw: Any) -> list[Any]:
    return list(
        client.chat.completions.create(model=model, messages=user(prompt), stream=True, **kw)
    )


def stream_text(chunks: list[Any], index: int = 0) -> str:
    return "".join(c.delta.content or "" for ch in chunks for c in ch.choices if c.index == index)


def finishes(chunks: list[Any], index: int = 0) -> list[str]:
    return [
        c.finish_reason
        for ch in chunks
        for c in ch.choices
        if c.index == index and c.finish_reason is not None
    ]


# -- chat ----------------------------------------------------------------------------------


def test_chat_non_stream(greedy_chat: Any, model: str) -> None:
    r = greedy_chat(MAIN, MAIN_TOKENS)
    assert r.object == "chat.completion"
    assert r.model == model
    assert r.id
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in FINISH
    check_usage(r.usage)
    assert r.usage.completion_tokens <= MAIN_TOKENS
    if choice.finish_reason == "length":
        assert r.usage.completion_tokens == MAIN_TOKENS


def test_greedy_is_deterministic(client: openai.OpenAI, model: str, greedy_chat: Any) -> None:
    first = greedy_chat(MAIN, MAIN_TOKENS)
    again = client.chat.completions.create(
        model=model, messages=user(MAIN), temperature=0, max_tokens=MAIN_TOKENS
    )
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.choices[0].finish_reason == first.choices[0].finish_reason
    assert again.usage.completion_tokens == first.usage.completion_tokens
    assert again.id != first.id


def test_max_tokens_respected(client: openai.OpenAI, model: str, greedy_chat: Any) -> None:
    longer = greedy_chat(MAIN, MAIN_TOKENS)
    limit = 5
    assert longer.usage.completion_tokens > limit, "precondition: the answer is longer"
    r = client.chat.completions.create(
        model=model, messages=user(MAIN), temperature=0, max_tokens=limit
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == limit
    assert r.usage.prompt_tokens == longer.usage.prompt_tokens
    # Greedy: the cut answer is where the longer one started.
    assert longer.choices[0].message.content.startswith(r.choices[0].message.content)
    # max_completion_tokens is the newer name of the same limit.
    r2 = client.chat.completions.create(
        model=model, messages=user(MAIN), temperature=0, max_completion_tokens=limit
    )
    assert r2.choices[0].finish_reason == "length"
    assert r2.usage.completion_tokens == limit
    assert r2.choices[0].message.content == r.choices[0].message.content


def _stop_case(greedy_chat: Any) -> tuple[str, str, Any]:
    base = greedy_chat(COUNT, COUNT_TOKENS)
    text = base.choices[0].message.content
    stop = next((s for s in STOP_CANDIDATES if text.find(s) > 0), None)
    assert stop is not None, f"none of {STOP_CANDIDATES} in the greedy output {text!r}"
    return stop, text[: text.index(stop)], base


def test_stop_non_stream(client: openai.OpenAI, model: str, greedy_chat: Any) -> None:
    stop, expected, base = _stop_case(greedy_chat)
    r = client.chat.completions.create(
        model=model, messages=user(COUNT), temperature=0, max_tokens=COUNT_TOKENS, stop=stop
    )
    content = r.choices[0].message.content
    assert stop not in content
    assert content == expected
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < base.usage.completion_tokens
    check_usage(r.usage)


def test_stop_stream(client: openai.OpenAI, model: str, greedy_chat: Any) -> None:
    stop, expected, _ = _stop_case(greedy_chat)
    chunks = stream_chat(
        client, model, COUNT, temperature=0, max_tokens=COUNT_TOKENS, stop=["<never-appears>", stop]
    )
    text = stream_text(chunks)
    assert stop not in text
    assert text == expected
    for ch in chunks:  # not even a piece of it went out before the match
        for c in ch.choices:
            assert stop not in (c.delta.content or "")
    assert finishes(chunks) == ["stop"]
    # Without stream_options.include_usage there is no usage chunk.
    assert all(ch.usage is None for ch in chunks)
    assert all(ch.choices for ch in chunks)


def test_stream_matches_non_stream(client: openai.OpenAI, model: str, greedy_chat: Any) -> None:
    ref = greedy_chat(MAIN, MAIN_TOKENS)
    chunks = stream_chat(
        client,
        model,
        MAIN,
        temperature=0,
        max_tokens=MAIN_TOKENS,
        stream_options={"include_usage": True},
    )
    assert len(chunks) >= 3
    first = chunks[0]
    assert first.choices[0].delta.role == "assistant"
    assert len({ch.id for ch in chunks}) == 1
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert all(ch.model == model for ch in chunks)
    assert finishes(chunks) == [ref.choices[0].finish_reason]
    assert stream_text(chunks) == ref.choices[0].message.content
    # Usage: one final chunk with no choices; every other chunk has usage null.
    last = chunks[-1]
    assert last.choices == []
    check_usage(last.usage)
    assert last.usage.prompt_tokens == ref.usage.prompt_tokens
    assert last.usage.completion_tokens == ref.usage.completion_tokens
    assert all(ch.usage is None for ch in chunks[:-1])
    # The finish chunk comes after every content delta.
    finish_at = next(i for i, ch in enumerate(chunks) if ch.choices and ch.choices[0].finish_reason)
    assert not any(c.delta.content for ch in chunks[finish_at + 1 :] for c in ch.choices)


def test_seed_reproducible(client: openai.OpenAI, model: str, seeded_chat: Any) -> None:
    first = seeded_chat(JOKE, SEED, WARM, JOKE_TOKENS)
    again = client.chat.completions.create(
        model=model, messages=user(JOKE), temperature=WARM, seed=SEED, max_tokens=JOKE_TOKENS
    )
    assert first
    assert again.choices[0].message.content == first


def test_different_seeds_differ(seeded_chat: Any) -> None:
    first = seeded_chat(JOKE, SEED, WARM, JOKE_TOKENS)
    # Any one other seed could, by chance, sample the same text; over a few it must not.
    others = []
    for seed in range(SEED + 1, SEED + 5):
        others.append(seeded_chat(JOKE, seed, WARM, JOKE_TOKENS))
        if others[-1] != first:
            break
    assert any(o != first for o in others), f"seeds {SEED}..{SEED + 4} all gave {first!r}"


def test_n2_seeded(client: openai.OpenAI, model: str, seeded_chat: Any) -> None:
    r = client.chat.completions.create(
        model=model, messages=user(JOKE), temperature=WARM, seed=SEED, max_tokens=JOKE_TOKENS, n=2
    )
    assert [c.index for c in r.choices] == [0, 1]
    texts = [c.message.content for c in r.choices]
    assert all(t for t in texts)
    assert all(c.finish_reason in FINISH for c in r.choices)
    check_usage(r.usage)
    assert r.usage.completion_tokens <= 2 * JOKE_TOKENS
    # The documented fan-out: choice i samples with seed + i, so the choices differ and
    # each is what a single request with that seed gives.
    assert texts[0] == seeded_chat(JOKE, SEED, WARM, JOKE_TOKENS)
    assert texts[1] == seeded_chat(JOKE, SEED + 1, WARM, JOKE_TOKENS)


def test_n2_stream_greedy(client: openai.OpenAI, model: str, greedy_chat: Any) -> None:
    ref = greedy_chat(SHORT, SHORT_TOKENS)
    chunks = stream_chat(client, model, SHORT, temperature=0, max_tokens=SHORT_TOKENS, n=2)
    assert len({ch.id for ch in chunks}) == 1
    roles = [c.index for ch in chunks for c in ch.choices if c.delta.role == "assistant"]
    assert sorted(roles) == [0, 1]
    for i in (0, 1):
        assert stream_text(chunks, i) == ref.choices[0].message.content
        assert finishes(chunks, i) == [ref.choices[0].finish_reason]


def test_chat_logprobs(client: openai.OpenAI, model: str) -> None:
    top_n = 3
    r = client.chat.completions.create(
        model=model,
        messages=user(SHORT),
        temperature=0,
        max_tokens=SHORT_TOKENS,
        logprobs=True,
        top_logprobs=top_n,
    )
    content = r.choices[0].message.content
    entries = r.choices[0].logprobs.content
    assert content
    assert len(entries) >= 1
    assert "".join(e.token for e in entries) == content
    for e in entries:
        assert e.logprob <= 0.0
        assert bytes(e.bytes) == e.token.encode()
        assert len(e.top_logprobs) == top_n
        lps = [t.logprob for t in e.top_logprobs]
        assert lps == sorted(lps, reverse=True)
        # Greedy picks the most likely token.
        assert e.top_logprobs[0].token == e.token
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-4)
    # The last token may end the answer (EOS is not content), so at most one fewer entry.
    assert r.usage.completion_tokens - len(entries) in (0, 1)


def test_chat_logprobs_without_top(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(
        model=model, messages=user(SHORT), temperature=0, max_tokens=3, logprobs=True
    )
    entries = r.choices[0].logprobs.content
    assert "".join(e.token for e in entries) == r.choices[0].message.content
    assert all(e.top_logprobs == [] for e in entries)
    plain = client.chat.completions.create(
        model=model, messages=user(SHORT), temperature=0, max_tokens=3
    )
    assert plain.choices[0].logprobs is None


# -- completions ---------------------------------------------------------------------------

FOX = "The quick brown fox"
FOX_TOKENS = 8


@pytest.fixture(scope="module")
def fox(client: openai.OpenAI, model: str) -> Any:
    return client.completions.create(
        model=model, prompt=FOX, max_tokens=FOX_TOKENS, temperature=0, logprobs=2
    )


def test_completion_text_and_logprobs(fox: Any, model: str) -> None:
    assert fox.object == "text_completion"
    assert fox.model == model
    choice = fox.choices[0]
    assert choice.text
    assert choice.finish_reason in FINISH
    check_usage(fox.usage)
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text
    n = len(lp.tokens)
    assert n >= 1 and len(lp.token_logprobs) == n and len(lp.top_logprobs) == n
    assert len(lp.text_offset) == n
    offset = 0
    for tok, off, lpv, top in zip(
        lp.tokens, lp.text_offset, lp.token_logprobs, lp.top_logprobs, strict=True
    ):
        assert off == offset
        offset += len(tok)
        assert lpv <= 0.0
        assert len(top) == 2
        assert max(top.values()) == pytest.approx(lpv, abs=1e-4)  # greedy: the best one
    assert fox.usage.completion_tokens - n in (0, 1)


def test_completion_echo(client: openai.OpenAI, model: str, fox: Any) -> None:
    r = client.completions.create(
        model=model, prompt=FOX, max_tokens=FOX_TOKENS, temperature=0, echo=True
    )
    assert r.choices[0].text == FOX + fox.choices[0].text
    assert r.usage.prompt_tokens == fox.usage.prompt_tokens


def test_completion_echo_with_logprobs_is_refused_not_misreported(
    client: openai.OpenAI, model: str
) -> None:
    # Prompt-token logprobs are not computed, so echo + logprobs would misreport offsets.
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(
            model=model, prompt=FOX, max_tokens=2, temperature=0, echo=True, logprobs=1
        )
    assert info.value.body["param"] == "echo"


def test_completion_stream(client: openai.OpenAI, model: str, fox: Any) -> None:
    chunks = list(
        client.completions.create(
            model=model,
            prompt=FOX,
            max_tokens=FOX_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == fox.choices[0].text
    reasons = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert reasons == [fox.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == fox.usage.completion_tokens


# -- models --------------------------------------------------------------------------------


def test_models(client: openai.OpenAI, model: str) -> None:
    ids = [m.id for m in client.models.list()]
    assert model in ids
    assert client.models.retrieve(model).id == model
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# -- errors (through the SDK) --------------------------------------------------------------


def test_a_foreign_model_name_is_served_by_the_one_model(client: openai.OpenAI, model: str) -> None:
    out = client.chat.completions.create(model="gpt-4o-mini", messages=user(SHORT), max_tokens=2)
    assert out.model == model  # the served id: the client sees what ran


def test_context_length_exceeded(client: openai.OpenAI, model: str) -> None:
    huge = "hello " * 10_000  # ~10k tokens; SmolLM2's context is 8192
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model=model, messages=user(huge), max_tokens=4, stream=stream
            )
        err = info.value
        assert err.status_code == 400
        assert err.code == "context_length_exceeded"
        assert err.type == "invalid_request_error"
        assert err.param == "messages"
        assert "8192" in err.message


def test_missing_messages(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", cast_to=object, body={"model": model})
    assert info.value.status_code == 400
    assert info.value.param == "messages"
    assert "messages" in info.value.message
    assert info.value.type == "invalid_request_error"


def test_image_part_refused(client: openai.OpenAI, model: str) -> None:
    content = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=user(content), max_tokens=2)
    err = info.value
    assert err.param == "messages[0].content[1]"
    assert "messages[0].content[1]" in err.message
    assert "image_url" in err.message


def test_embeddings_not_supported(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.embeddings.create(model=model, input="hello")
    err = info.value
    assert err.status_code == 501
    assert err.type == "not_implemented"
    assert err.code == "not_supported"
    assert "embedding" in err.message.lower()


def test_malformed_json(base_url: str) -> None:
    r = httpx.post(
        f"{base_url}/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert "JSON" in body["error"]["message"]


def test_unknown_route_envelope(base_url: str) -> None:
    r = httpx.get(f"{base_url}/no-such-route", timeout=30)
    assert r.status_code == 404
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_still_serving_after_errors(
    client: openai.OpenAI, model: str, greedy_chat: Any, e2e_server: Any
) -> None:
    health = e2e_server.health()
    assert health["status"] == "ok"
    assert health["model"] == model
    r = client.chat.completions.create(
        model=model, messages=user(SHORT), temperature=0, max_tokens=SHORT_TOKENS
    )
    assert (
        r.choices[0].message.content == greedy_chat(SHORT, SHORT_TOKENS).choices[0].message.content
    )
    check_usage(r.usage)
