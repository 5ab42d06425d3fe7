"""Engine events -> OpenAI response bodies and stream chunks (plain dicts)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..core.types import TextDelta, TokenLogprob


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(
    prompt: int, completion: int, cached: int = 0, reasoning: int | None = None
) -> dict[str, Any]:
    """``reasoning``: of the completion tokens, those the model reasoned with (given for a
    reasoning model's replies)."""
    body: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    if reasoning is not None:
        body["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return body


def _lp(t: TokenLogprob) -> dict[str, Any]:
    return {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)}


def chat_logprobs(delta: TextDelta) -> dict[str, Any]:
    return {
        "content": [
            {**_lp(chosen), "top_logprobs": [_lp(t) for t in top]} for chosen, top in delta.logprobs
        ]
    }


@dataclass
class CompletionLogprobs:
    """The legacy completions ``logprobs`` object, built up delta by delta."""

    offset: int = 0
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[str, float]] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)

    def add(self, delta: TextDelta) -> dict[str, Any]:
        start = len(self.tokens)
        for chosen, top in delta.logprobs:
            self.tokens.append(chosen.token)
            self.token_logprobs.append(chosen.logprob)
            self.top_logprobs.append({t.token: t.logprob for t in top})
            self.text_offset.append(self.offset)
            self.offset += len(chosen.token)
        return self._slice(start)

    def _slice(self, start: int = 0) -> dict[str, Any]:
        return {
            "tokens": self.tokens[start:],
            "token_logprobs": self.token_logprobs[start:],
            "top_logprobs": self.top_logprobs[start:],
            "text_offset": self.text_offset[start:],
        }

    def whole(self) -> dict[str, Any]:
        return self._slice()


@dataclass
class ChunkFactory:
    """Stream chunks of one completion: one id, one created time, one model."""

    object: str
    model: str
    id: str
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            body["usage"] = None
        return body

    def usage_chunk(
        self, prompt: int, completion: int, cached: int = 0, reasoning: int | None = None
    ) -> dict[str, Any]:
        body = self.chunk([])
        body["usage"] = usage(prompt, completion, cached, reasoning)
        return body
