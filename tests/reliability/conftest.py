"""A real server (uvicorn on a free loopback port) over fake backends that misbehave on cue."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import httpx
import pytest

from dvai_bridge import Bridge, StartConfig
from dvai_bridge.backends.fake import EOS, FakeBackend, FakeTokenizer
from dvai_bridge.backends.registry import register_backend
from dvai_bridge.core.types import CancelToken, GenerationRequest, TokenChoice
from dvai_bridge.errors import BackendError
from tests.http.conftest import client, client_for  # noqa: F401  (fixtures)


class BoomFake(FakeBackend):
    """Fails mid-stream, after three tokens, when the prompt says "boom"; otherwise echoes."""

    def generate(self, request: GenerationRequest, cancel: CancelToken) -> Iterator[TokenChoice]:
        boom = b"boom" in bytes(t for t in request.prompt_tokens if t < 256)
        for i, choice in enumerate(super().generate(request, cancel)):
            if boom and i == 3:
                raise BackendError("The fake backend failed on purpose (boom).")
            yield choice


class BadDecodeTokenizer(FakeTokenizer):
    """Its detokenizer fails on the byte '~': a fault after the backend, in token handling."""

    def decode(self, tokens: Sequence[int]) -> str:
        if ord("~") in tokens:
            raise ValueError("cannot decode '~'")
        return super().decode(tokens)


register_backend("rel-boom", lambda c, p: BoomFake(token_delay=0.01))
register_backend("rel-slow", lambda c, p: FakeBackend(token_delay=0.02))
register_backend("rel-bad-decode", lambda c, p: FakeBackend(tokenizer=BadDecodeTokenizer()))
assert EOS == 256


def cfg(**kw) -> StartConfig:
    return StartConfig(
        **{
            "backend": "fake",
            "http_base_port": 0,
            "log_level": "warning",
            "prompt_cache_mb": 4,
            **kw,
        }
    )


@pytest.fixture
def bridge():
    b = Bridge()
    yield b
    b.stop()


def events(lines: Iterator[str]) -> list:
    out: list = []
    for line in lines:
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def text_of(chunks: list) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content", "")
        for c in chunks
        if isinstance(c, dict) and c.get("choices")
    )


def health(base_url: str) -> dict:
    return httpx.get(base_url.removesuffix("/v1") + "/health", timeout=5).json()


def user(content: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": content}], **extra}
