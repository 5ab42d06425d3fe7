"""Conformance-style reasoning checks against a running server (raw HTTP, no SDK).

    python scripts/reasoning_check.py http://127.0.0.1:38883/v1

The checks a reasoning class of an OpenAI-compatibility suite makes, for a server whose model
reasons (start it with ``--chat-template tests/data/qwen3_style.jinja`` to give the embedded
SmolLM2 a reasoning template): each prints PASS or FAIL and what it saw; the exit status is the
number of failures.
"""

from __future__ import annotations

import json
import sys

import httpx

MARKERS = ("<think>", "</think>", "[THINK]", "[/THINK]", "<|channel|>")


def post(url: str, body: dict) -> dict:
    r = httpx.post(f"{url}/chat/completions", json=body, timeout=300)
    r.raise_for_status()
    return r.json()


def stream(url: str, body: dict) -> tuple[str, str, dict | None]:
    reasoning = content = ""
    usage = None
    with httpx.stream(
        "POST",
        f"{url}/chat/completions",
        timeout=300,
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
    ) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for c in chunk["choices"]:
                reasoning += c["delta"].get("reasoning_content") or ""
                content += c["delta"].get("content") or ""
    return reasoning, content, usage


def main(url: str) -> int:
    ask = {
        "model": "default",
        "temperature": 0,
        "max_tokens": 48,
        "messages": [{"role": "user", "content": "Explain why the sky is blue."}],
    }
    failures = 0

    def check(name: str, ok: bool, seen: object) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {seen}")

    low = {**ask, "reasoning_effort": "low"}
    body = post(url, low)
    msg = body["choices"][0]["message"]
    check(
        "reasoning_content is non-empty",
        bool(msg.get("reasoning_content")),
        repr((msg.get("reasoning_content") or "")[:60]),
    )
    check(
        "content holds no reasoning marker",
        not any(m in (msg["content"] or "") for m in MARKERS),
        repr((msg["content"] or "")[:60]),
    )
    details = body["usage"].get("completion_tokens_details") or {}
    check(
        "usage.completion_tokens_details.reasoning_tokens > 0",
        (details.get("reasoning_tokens") or 0) > 0,
        body["usage"],
    )
    reasoning, content, usage = stream(url, low)
    check(
        "streamed delta.reasoning_content == message.reasoning_content",
        reasoning == msg.get("reasoning_content"),
        repr(reasoning[:60]),
    )
    check("streamed content == message.content", content == msg["content"], repr(content[:60]))
    check(
        "streamed usage carries reasoning_tokens",
        bool(usage and usage.get("completion_tokens_details", {}).get("reasoning_tokens")),
        usage,
    )
    off = post(url, {**ask, "reasoning_effort": "none"})["choices"][0]["message"]
    check(
        "reasoning_effort none: no reasoning, an answer",
        not off.get("reasoning_content") and bool(off["content"]),
        off,
    )
    off = post(url, {**ask, "chat_template_kwargs": {"enable_thinking": False}})
    off = off["choices"][0]["message"]
    check(
        "chat_template_kwargs enable_thinking false: no reasoning",
        not off.get("reasoning_content") and bool(off["content"]),
        off,
    )
    js = post(
        url,
        {
            **low,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "The capital of France, as JSON."}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "c",
                    "schema": {
                        "type": "object",
                        "properties": {"city": {"type": "string", "maxLength": 30}},
                        "required": ["city"],
                        "additionalProperties": False,
                    },
                },
            },
        },
    )["choices"][0]
    try:
        parsed = json.loads(js["message"]["content"])
    except (TypeError, ValueError):
        parsed = None
    check(
        "json_schema after reasoning: valid JSON, reasoning kept",
        isinstance(parsed, dict) and bool(js["message"].get("reasoning_content")),
        js["message"],
    )
    history = post(
        url,
        {
            **ask,
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!", "reasoning_content": "Greet back."},
                {"role": "user", "content": "Explain why the sky is blue."},
            ],
            "reasoning_effort": "low",
        },
    )
    check("history with reasoning_content accepted", bool(history["choices"]), "200")
    print(f"{failures} failure(s)")
    return failures


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:38883/v1"))
