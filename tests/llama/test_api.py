"""The llama backend behind the real server, through the openai SDK: chat, streaming,
completions, logprobs, embeddings, concurrency, disconnects and the bad-input cases."""

from __future__ import annotations

import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest

from dvai_bridge import Bridge, StartConfig

TIMEOUT = 300.0


@pytest.fixture(scope="module")
def server(gguf_path):
    bridge = Bridge()  # not the process-wide `shared`: the e2e suite may hold it
    bound = bridge.start_blocking(
        StartConfig(
            backend="llama",
            model_path=gguf_path,
            http_base_port=0,
            embedding_mode=True,
            context_size=2048,
        )
    )
    yield bound
    bridge.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=TIMEOUT, max_retries=0)


def ask(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def greedy_chat(client, content: str, max_tokens: int = 12, **kw):
    """Greedy, and seeded: a seeded request is evaluated from scratch, so the same call gives
    the same text whatever the KV cache held before (a reused prefix may flip a near-tie)."""
    kw.setdefault("seed", 0)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1", messages=ask(content), max_tokens=max_tokens, **kw
    )


def test_the_server_says_it_is_the_llama_backend(server):
    assert server.backend == "llama"
    health = httpx.get(server.base_url.removesuffix("/v1") + "/health").json()
    assert health["backend"] == "llama"


def test_chat_answers_with_openai_shape_and_usage(client):
    r = greedy_chat(client, "What is the capital of France?")
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_carries_the_same_text_as_the_plain_answer(client):
    plain = greedy_chat(client, "Count from one to five.").choices[0].message.content
    chunks = list(
        greedy_chat(
            client, "Count from one to five.", stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_completions_take_text_and_token_prompts(client):
    r = client.completions.create(
        model="default", prompt="Once upon a time", max_tokens=8, temperature=0, logprobs=2
    )
    text = r.choices[0].text
    assert text
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert all(len(top) == 2 for top in lp.top_logprobs)
    echoed = client.completions.create(
        model="default", prompt="Once upon a time", max_tokens=8, temperature=0, echo=True
    )
    assert echoed.choices[0].text == "Once upon a time" + text


def test_chat_logprobs(client):
    r = greedy_chat(client, "Say yes.", max_tokens=4, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert content
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob)


def test_a_seed_repeats_a_sampled_answer(client):
    def sample():
        return (
            client.chat.completions.create(
                model="default",
                messages=ask("Tell me a word."),
                max_tokens=8,
                temperature=1.0,
                seed=11,
            )
            .choices[0]
            .message.content
        )

    assert sample() == sample()


def _embed(client, texts, **kw) -> np.ndarray:
    r = client.embeddings.create(model="SmolLM2-135M-Instruct.Q4_1", input=texts, **kw)
    assert [d.index for d in r.data] == list(range(len(texts)))
    assert r.usage.prompt_tokens > 0
    return np.array([d.embedding for d in r.data])


def test_embeddings_rank_a_paraphrase_above_an_unrelated_sentence(client):
    v = _embed(
        client,
        [
            "The cat sits on the mat.",
            "A cat is sitting on a rug.",
            "Quarterly revenue grew by four percent.",
        ],
    )
    assert v.shape == (3, 576)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sims = v @ v.T
    assert sims[0, 1] > sims[0, 2]
    assert sims[1, 0] > sims[1, 2]


def test_embeddings_base64_tokens_and_single_inputs_agree(client):
    (by_text,) = _embed(client, ["hello world"])
    r = httpx.post(
        f"{client.base_url}embeddings", json={"input": "hello world", "encoding_format": "base64"}
    )
    b64 = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(b64, by_text, atol=1e-6)
    assert r.json()["usage"]["prompt_tokens"] == 2


def test_embeddings_bad_inputs(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="default", input="x", dimensions=64)
    assert err.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="default", input=[""])
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="default", input="word " * 1200)
    assert err.value.body["code"] == "context_length_exceeded"
    # a one-model server embeds with its model whatever name the client sends
    assert client.embeddings.create(model="text-embedding-3-small", input="x").data


def test_chat_bad_inputs(client):
    with pytest.raises(openai.BadRequestError) as err:
        greedy_chat(client, "word " * 2100)
    assert err.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="default", prompt=[1, 2, 10**7], max_tokens=2)
    assert err.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError):
        greedy_chat(client, "hi", top_logprobs=2)
    with pytest.raises(openai.BadRequestError):
        greedy_chat(client, "hi", temperature=3)
    served = client.models.list().data[0].id  # any name is served by the one model
    assert (
        client.chat.completions.create(model="nope", messages=ask("hi"), max_tokens=2).model
        == served
    )


def test_four_concurrent_streams_are_complete_and_not_interleaved(client):
    prompts = ["Name a fruit.", "Name a country.", "Name a colour.", "Name an animal."]
    expected = {
        p: greedy_chat(client, p, max_tokens=10).choices[0].message.content for p in prompts
    }

    def stream(p: str) -> str:
        parts = [
            c.choices[0].delta.content or ""
            for c in greedy_chat(client, p, max_tokens=10, stream=True)
            if c.choices
        ]
        return "".join(parts)

    with ThreadPoolExecutor(4) as pool:
        got = dict(zip(prompts, pool.map(stream, prompts), strict=True))
    assert got == expected


def test_a_client_that_disconnects_cancels_its_generation(server, client):
    root = server.base_url.removesuffix("/v1")
    body = {
        "model": "default",
        "messages": ask("Write a very long story about the sea."),
        "max_tokens": 1500,
        "stream": True,
        "temperature": 0,
    }
    with httpx.stream(
        "POST", f"{server.base_url}/chat/completions", json=body, timeout=TIMEOUT
    ) as r:
        for n, _ in enumerate(r.iter_lines()):
            if n > 6:
                break
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        h = httpx.get(f"{root}/health").json()
        if h["running"] == 0 and h["queued"] == 0:
            break
        time.sleep(0.05)  # the engine's load is only seen through /health
    assert h["running"] == 0, h
    assert greedy_chat(client, "Say hi.", max_tokens=3).choices[0].message.content


def test_without_embedding_mode_embeddings_are_a_501_saying_how_not_to_be_retried(gguf_path):
    from dvai_bridge.bridge import Bridge

    bridge = Bridge()
    bound = bridge.start_blocking(
        StartConfig(backend="llama", model_path=gguf_path, http_base_port=0, context_size=256)
    )
    try:
        r = httpx.post(f"{bound.base_url}/embeddings", json={"input": "hello"})
        assert r.status_code == 501  # as on MLX (was 400 here): one behaviour on both
        assert r.json()["error"]["code"] == "not_supported"
        assert r.headers["x-should-retry"] == "false"
        assert "embedding_mode=True" in r.json()["error"]["message"]
        ok = httpx.post(
            f"{bound.base_url}/chat/completions",
            timeout=TIMEOUT,
            json={"messages": ask("hi"), "max_tokens": 2},
        )
        assert ok.status_code == 200
    finally:
        bridge.stop()


def test_stop_while_streaming_ends_the_stream(gguf_path):
    from dvai_bridge.bridge import Bridge

    bridge = Bridge()
    bound = bridge.start_blocking(
        StartConfig(
            backend="llama",
            model_path=gguf_path,
            http_base_port=0,
            context_size=1024,
            shutdown_grace_s=0.5,
        )
    )
    got: list[str] = []
    streaming = threading.Event()

    def consume() -> None:
        c = openai.OpenAI(base_url=bound.base_url, api_key="x", timeout=TIMEOUT, max_retries=0)
        try:
            for _chunk in c.chat.completions.create(
                model="default", stream=True, messages=ask("Tell a long story."), max_tokens=900
            ):
                got.append("chunk")
                streaming.set()
        except Exception as exc:
            got.append(type(exc).__name__)
        finally:
            streaming.set()

    t = threading.Thread(target=consume)
    t.start()
    assert streaming.wait(TIMEOUT)
    assert got[:1] == ["chunk"], got  # stopped mid-stream, not before it began
    bridge.stop()
    t.join(60)
    assert not t.is_alive()


def test_usage_reports_the_prompt_tokens_reused_from_the_kv_cache(client):
    """The llama backend keeps its KV cache between requests; an unseeded follow-up that
    extends the last conversation reuses it, and usage says how much."""
    history = ask("Name three colours of the rainbow.")
    first = client.chat.completions.create(
        model="default", messages=history, max_tokens=8, temperature=0
    )
    history += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And two more?"},
    ]
    second = client.chat.completions.create(
        model="default", messages=history, max_tokens=4, temperature=0
    )
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens // 2 < cached < second.usage.prompt_tokens


def test_token_utilities_and_responses_on_llama(server, client) -> None:
    root = server.base_url.removesuffix("/v1")
    pieces = httpx.post(
        f"{root}/tokenize", json={"content": "Hello, world!", "with_pieces": True}, timeout=TIMEOUT
    ).json()
    assert "".join(p["piece"] for p in pieces["tokens"]) == "Hello, world!"
    ids = [p["id"] for p in pieces["tokens"]]
    back = httpx.post(f"{root}/detokenize", json={"tokens": ids}, timeout=TIMEOUT).json()
    assert back == {"content": "Hello, world!"}
    prompt = httpx.post(
        f"{root}/apply-template", json={"messages": ask("Hi")}, timeout=TIMEOUT
    ).json()["prompt"]
    assert "<|im_start|>user\nHi<|im_end|>" in prompt  # control tokens written out
    ref = greedy_chat(client, "Say hello.", max_tokens=6)
    r = client.responses.create(
        model="x", input="Say hello.", temperature=0, max_output_tokens=6, extra_body={"seed": 0}
    )
    assert r.output_text == ref.choices[0].message.content
    assert r.usage.input_tokens == ref.usage.prompt_tokens
