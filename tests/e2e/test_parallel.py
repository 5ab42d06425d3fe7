"""Concurrency on the real model: parallel requests equal sequential ones; disconnects cancel."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import openai
import pytest

PROMPTS = [
    "What is the capital of France?",
    "Name three fruits.",
    "Write a haiku about snow.",
    "What is 2 + 2?",
    "Give me a tip for learning to cook.",
    "Describe a cat in one sentence.",
    "Why is the sky blue?",
    "Say something nice about Mondays.",
]
MAX_TOKENS = 24
STORY = "Tell me a long story about a dragon."
LONG_MAX_TOKENS = 2000
# Idle must come this fast after a disconnect, however fast or slow the machine decodes.
IDLE_CAP_S = 10.0


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


async def _one(client: openai.AsyncOpenAI, model: str, prompt: str, stream: bool) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "model": model,
        "messages": user(prompt),
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
    }
    if not stream:
        r = await client.chat.completions.create(**kw)
        return {
            "text": r.choices[0].message.content,
            "finish": r.choices[0].finish_reason,
            "completion_tokens": r.usage.completion_tokens,
        }
    text, finish, ids, tokens = "", [], set(), None
    stream_resp = await client.chat.completions.create(
        **kw, stream=True, stream_options={"include_usage": True}
    )
    async for chunk in stream_resp:
        ids.add(chunk.id)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for c in chunk.choices:
            text += c.delta.content or ""
            if c.finish_reason:
                finish.append(c.finish_reason)
    assert len(ids) == 1, "one id per stream"
    assert len(finish) == 1, f"exactly one finish_reason per stream, got {finish}"
    return {"text": text, "finish": finish[0], "completion_tokens": tokens}


async def _parallel(base_url: str, model: str, health_url: str) -> tuple[list[dict[str, Any]], int]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    max_queued = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal max_queued
        async with httpx.AsyncClient(timeout=10) as h:
            while not done.is_set():
                max_queued = max(max_queued, (await h.get(health_url)).json()["queued"])
                await asyncio.sleep(0.1)  # sampling the queue's length (only /health shows it)

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(
            *(_one(client, model, p, stream=(i % 2 == 1)) for i, p in enumerate(PROMPTS))
        )
    finally:
        done.set()
        await watcher
        await client.close()
    return list(results), max_queued


def test_parallel_equals_sequential(
    client: openai.OpenAI, model: str, base_url: str, e2e_server: Any
) -> None:
    t0 = time.monotonic()
    sequential = []
    for p in PROMPTS:
        r = client.chat.completions.create(
            model=model, messages=user(p), temperature=0, max_tokens=MAX_TOKENS
        )
        sequential.append(
            {
                "text": r.choices[0].message.content,
                "finish": r.choices[0].finish_reason,
                "completion_tokens": r.usage.completion_tokens,
            }
        )
    t_seq = time.monotonic() - t0
    assert len({s["text"] for s in sequential}) == len(PROMPTS), "prompts give distinct texts"

    t0 = time.monotonic()
    parallel, max_queued = asyncio.run(_parallel(base_url, model, f"{e2e_server.root_url}/health"))
    t_par = time.monotonic() - t0
    print(
        f"\n[e2e] 8 x {MAX_TOKENS} tokens: sequential {t_seq:.1f}s, parallel {t_par:.1f}s, "
        f"most queued at once {max_queued}"
    )

    for i, (seq, par) in enumerate(zip(sequential, parallel, strict=True)):
        mode = "stream" if i % 2 else "non-stream"
        assert par == seq, f"prompt {i} ({mode}) {PROMPTS[i]!r} differs when run in parallel"
    idle, _, health = e2e_server.wait_idle(5.0)
    assert idle, health


def _sse_data(line: str) -> dict[str, Any] | None:
    if not line.startswith("data: ") or line == "data: [DONE]":
        return None
    return json.loads(line[len("data: ") :])


# Prometheus series that show generation happening (when the server has /metrics).
CANCELLED = 'dvai_bridge_sequences_total{outcome="cancelled"}'
TOKEN_STEPS = "dvai_bridge_time_per_output_token_seconds_count"


def _assert_generation_stops(
    server: Any, before: dict[str, float] | None, bound_s: float, tok_per_s: float, label: str
) -> None:
    """After a hang-up: idle within ``bound_s``, the sequence counted as cancelled (so it had
    not ended by itself), and no token generated afterwards."""
    idle, took, health = server.wait_idle(bound_s)
    print(
        f"\n[e2e] {label}: decode {tok_per_s:.1f} tok/s, so {LONG_MAX_TOKENS} tokens would "
        f"take ~{LONG_MAX_TOKENS / tok_per_s:.0f}s; /health idle {took:.2f}s after the "
        f"hang-up (bound {bound_s:.1f}s)"
    )
    assert idle, f"{label}: still busy {took:.1f}s after the client went away: {health}"
    if before is not None:
        deadline = time.monotonic() + bound_s
        while True:
            now = server.metrics()
            if now[CANCELLED] >= before[CANCELLED] + 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # another process: its /metrics is all it offers; the bound is tested
        assert now[CANCELLED] == before[CANCELLED] + 1, (
            f"{label}: the sequence was not cancelled within {bound_s:.1f}s of the hang-up"
        )
        # Nothing decodes any more: the token counter stands still over several token times.
        time.sleep(max(1.0, 5 / tok_per_s))
        assert server.metrics()[TOKEN_STEPS] == now[TOKEN_STEPS], (
            f"{label}: tokens are still being generated after the hang-up"
        )


def _decode_rate(client: openai.OpenAI, model: str) -> float:
    """Tokens per second of a lone greedy request, measured here and now."""
    t0 = time.monotonic()
    r = client.chat.completions.create(
        model=model, messages=user(STORY), temperature=0, max_tokens=12
    )
    return r.usage.completion_tokens / (time.monotonic() - t0)  # prefill included: a floor


def _hang_up_mid_stream(server: Any, body: dict[str, Any], label: str) -> str:
    """Stream ``body``, read six content deltas, close the connection, and check the
    generation stops (``_assert_generation_stops``). Returns the text read."""
    idle, _, health = server.wait_idle(30.0)
    assert idle, f"precondition: the server is idle, got {health}"
    before = server.metrics()
    arrivals: list[float] = []
    text = ""
    url = f"{server.base_url}/chat/completions"
    with httpx.Client(timeout=httpx.Timeout(180.0)) as h, h.stream("POST", url, json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            chunk = _sse_data(line)
            if chunk is None or not chunk["choices"]:
                continue
            assert chunk["choices"][0]["finish_reason"] is None, "ended on its own"
            if chunk["choices"][0]["delta"].get("content"):
                text += chunk["choices"][0]["delta"]["content"]
                arrivals.append(time.monotonic())
                if len(arrivals) >= 6:
                    break
        # Leaving the block with the body unread closes the connection.

    # Each content delta is at least one token, so this underestimates the speed a little.
    tok_per_s = (len(arrivals) - 1) / max(arrivals[-1] - arrivals[0], 1e-6)
    bound = min(IDLE_CAP_S, LONG_MAX_TOKENS / tok_per_s / 10)
    _assert_generation_stops(server, before, bound, tok_per_s, label)
    return text


def test_stream_disconnect_cancels_generation(
    e2e_server: Any, client: openai.OpenAI, model: str
) -> None:
    body = {
        "model": model,
        "messages": user(STORY),
        "temperature": 0,
        "max_tokens": LONG_MAX_TOKENS,
        "stream": True,
    }
    _hang_up_mid_stream(e2e_server, body, "stream")

    # A following request is served, with the right answer.
    r2 = client.chat.completions.create(
        model=model, messages=user(PROMPTS[3]), temperature=0, max_tokens=4
    )
    assert r2.choices[0].message.content
    assert r2.usage.completion_tokens <= 4


STORY_SCHEMA = {
    "type": "object",
    "properties": {"story": {"type": "string"}},
    "required": ["story"],
    "additionalProperties": False,
}


def test_constrained_stream_disconnect_cancels_generation(
    e2e_server: Any, client: openai.OpenAI, model: str
) -> None:
    """The same hang-up in the middle of a grammar-constrained stream: the sequence and its
    grammar matcher are dropped, and the next constrained request is valid from its start."""
    body = {
        "model": model,
        "messages": user(STORY),
        "temperature": 0,
        "max_tokens": LONG_MAX_TOKENS,
        "stream": True,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "story", "schema": STORY_SCHEMA},
        },
    }
    text = _hang_up_mid_stream(e2e_server, body, "constrained stream")
    assert text.startswith('{"story": "'), text  # the grammar was in force

    r2 = client.chat.completions.create(
        model=model,
        messages=user(PROMPTS[3]),
        temperature=0,
        max_tokens=40,
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "schema": {
                    "type": "object",
                    "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 1000}},
                    "required": ["answer"],
                    "additionalProperties": False,
                },
            },
        },
    )
    assert r2.choices[0].finish_reason == "stop"
    assert set(json.loads(r2.choices[0].message.content)) == {"answer"}


def test_non_stream_disconnect_cancels_generation(
    e2e_server: Any, client: openai.OpenAI, model: str
) -> None:
    idle, _, health = e2e_server.wait_idle(30.0)
    assert idle, f"precondition: the server is idle, got {health}"
    tok_per_s = _decode_rate(client, model)
    before = e2e_server.metrics()
    body = {
        "model": model,
        "messages": user(STORY),
        "temperature": 0,
        "max_tokens": LONG_MAX_TOKENS,
    }
    with (
        httpx.Client(timeout=httpx.Timeout(30.0, read=3.0)) as h,
        pytest.raises(httpx.ReadTimeout),
    ):  # the client gives up and hangs up
        h.post(f"{e2e_server.base_url}/chat/completions", json=body)
    bound = min(IDLE_CAP_S, LONG_MAX_TOKENS / tok_per_s / 10)
    _assert_generation_stops(e2e_server, before, bound, tok_per_s, "non-stream")


def test_health_counts_a_running_sequence(e2e_server: Any, model: str) -> None:
    idle, _, health = e2e_server.wait_idle(30.0)
    assert idle, f"precondition: the server is idle, got {health}"
    body = {
        "model": model,
        "messages": user(STORY),
        "temperature": 0,
        "max_tokens": LONG_MAX_TOKENS,
        "stream": True,
    }
    url = f"{e2e_server.base_url}/chat/completions"
    contents = 0
    with httpx.Client(timeout=httpx.Timeout(180.0)) as h, h.stream("POST", url, json=body) as r:
        for line in r.iter_lines():
            chunk = _sse_data(line)
            if chunk and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                contents += 1
                if contents >= 2:
                    # Ask while still reading: leaving iter_lines closes the response, which
                    # is a disconnect, and the server then rightly frees the sequence.
                    during = e2e_server.health()
                    break
    idle, _, _ = e2e_server.wait_idle(IDLE_CAP_S)
    assert during["running"] == 1, f"/health while one stream was generating: {during}"
    assert during["queued"] == 0
