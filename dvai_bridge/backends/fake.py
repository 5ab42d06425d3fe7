"""A deterministic backend for fast HTTP tests. Never the only proof of anything.

Tokens are UTF-8 bytes (ids 0-255) plus special ids. The model "answers" by echoing the last
user message (``echo: <text>``), or a fixed ``reply``; it can be told to slow down or fail.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import jinja2

from ..engine.types import CancelToken, GenerationRequest, TokenChoice
from ..errors import BackendError
from .base import FALLBACK_CHAT_TEMPLATE, Backend, Capabilities, Message

EOS = 256
BOS = 257
_MARK = 258  # separates prompt from the text the fake will answer


class FakeBackend(Backend):
    name = "fake"
    capabilities = Capabilities(chat=True, completions=True, embeddings=False, logprobs=True)

    def __init__(
        self,
        *,
        model_id: str = "fake-model",
        reply: str | None = None,
        context_length: int = 4096,
        token_delay: float = 0.0,
        fail_after: int | None = None,
    ) -> None:
        self.model_id = model_id
        self.context_length = context_length
        self.eos_token_ids = frozenset({EOS})
        self.reply = reply
        self.token_delay = token_delay
        self.fail_after = fail_after
        self._template = jinja2.Environment().from_string(FALLBACK_CHAT_TEMPLATE)
        self.closed = False

    def chat_tokens(self, messages: list[Message]) -> list[int]:
        text = self._template.render(messages=messages, add_generation_prompt=True)
        answer = self.reply if self.reply is not None else f"echo: {messages[-1]['content']}"
        return [BOS, *text.encode("utf-8"), _MARK, *answer.encode("utf-8")]

    def tokenize(self, text: str) -> list[int]:
        answer = self.reply if self.reply is not None else f"echo: {text}"
        return [BOS, *text.encode("utf-8"), _MARK, *answer.encode("utf-8")]

    def decode(self, tokens: Sequence[int]) -> str:
        return bytes(t for t in tokens if t < 256).decode("utf-8", errors="replace")

    def generate(self, request: GenerationRequest, cancel: CancelToken) -> Iterator[TokenChoice]:
        prompt = list(request.prompt_tokens)
        answer = prompt[prompt.index(_MARK) + 1 :] if _MARK in prompt else []
        for i, token in enumerate([*answer, EOS]):
            if self.fail_after is not None and i >= self.fail_after:
                raise BackendError("The fake backend failed on purpose.")
            if self.token_delay:
                time.sleep(self.token_delay)
            alt = (token + 1) % 256
            yield TokenChoice(token, -0.25, ((token, -0.25), (alt, -1.5)))

    def close(self) -> None:
        self.closed = True
