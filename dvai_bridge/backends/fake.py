"""A deterministic backend for fast HTTP tests. Never the only proof of anything.

Tokens are UTF-8 bytes (ids 0-255) plus special ids. The model "answers" by echoing the last
user message (``echo: <text>``), or a fixed ``reply``; it can be told to slow down or fail.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from typing import Any

import jinja2
from pydantic import Field

from ..core.backend import (
    FALLBACK_CHAT_TEMPLATE,
    Backend,
    Batch,
    Capabilities,
    Message,
    Step,
    Tokenizer,
)
from ..core.prompt_cache import PromptCache
from ..core.types import BatchLimits, CancelToken, GenerationRequest, TokenChoice
from ..errors import BackendError
from .options import BackendOptions

EOS = 256
BOS = 257
_MARK = 258  # separates prompt from the text the fake will answer


class FakeOptions(BackendOptions):
    """The fake backend's settings (``backend_options``), for tests that start a server."""

    model_id: str = "fake-model"
    reply: str | None = Field(None, description="Answer this instead of echoing.")
    token_delay: float = Field(0.0, ge=0, description="Seconds each token takes.")
    fail_after: int | None = Field(None, ge=0, description="Fail after this many tokens.")
    batched: bool = Field(True, description="Offer batched decoding.")


class FakeTokenizer(Tokenizer):
    """UTF-8 bytes as tokens; a chat prompt carries the answer the fake will give."""

    backend_name = "fake"

    def __init__(self, reply: str | None = None, vocab_size: int | None = None) -> None:
        super().__init__()
        self.reply = reply
        self.vocab_size = vocab_size
        self.eos_token_ids = frozenset({EOS})
        self._template = jinja2.Environment().from_string(FALLBACK_CHAT_TEMPLATE)
        self._source: str | None = None

    def chat_tokens(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        text = self._template.render(
            messages=messages, add_generation_prompt=True, **(template_kwargs or {})
        )
        answer = self.reply if self.reply is not None else f"echo: {messages[-1]['content']}"
        return [BOS, *text.encode("utf-8"), _MARK, *answer.encode("utf-8")]

    def set_chat_template(self, source: str) -> None:
        self._template = jinja2.Environment().from_string(source)
        self._source = source

    @property
    def chat_template_source(self) -> str | None:
        return self._source

    def text_tokens(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def prompt_tail(self, prompt: Sequence[int]) -> str:
        prompt = list(prompt)
        return self.decode(prompt[: prompt.index(_MARK)] if _MARK in prompt else prompt)[-64:]

    def tokenize(self, text: str) -> list[int]:
        answer = self.reply if self.reply is not None else f"echo: {text}"
        return [BOS, *text.encode("utf-8"), _MARK, *answer.encode("utf-8")]

    def decode(self, tokens: Sequence[int]) -> str:
        return bytes(t for t in tokens if t < 256).decode("utf-8", errors="replace")


class FakeBackend(Backend):
    name = "fake"
    capabilities = Capabilities(chat=True, completions=True, logprobs=True)
    vocab_size: int | None = None  # the tokenizer's (a subclass may set one: ids get checked)

    def __init__(
        self,
        *,
        model_id: str = "fake-model",
        reply: str | None = None,
        context_length: int = 4096,
        token_delay: float = 0.0,
        fail_after: int | None = None,
        batched: bool = True,
        tokenizer: FakeTokenizer | None = None,
    ) -> None:
        self.model_id = model_id
        self.context_length = context_length
        self.tokenizer = tokenizer or FakeTokenizer(reply, self.vocab_size)
        self.token_delay = token_delay
        self.fail_after = fail_after
        self.batched = batched
        self.closed = False

    def generate(self, request: GenerationRequest, cancel: CancelToken) -> Generator[Step]:
        """The tokens of the answer the prompt carries, then EOS (no ``Prefilled``: the
        serial path caches nothing)."""
        prompt = list(request.prompt_tokens)
        answer = prompt[prompt.index(_MARK) + 1 :] if _MARK in prompt else []
        for i, token in enumerate([*answer, EOS]):
            if self.fail_after is not None and i >= self.fail_after:
                raise BackendError("The fake backend failed on purpose.")
            if self.token_delay:
                time.sleep(self.token_delay)
            alt = (token + 1) % 256
            yield TokenChoice(token, -0.25, ((token, -0.25), (alt, -1.5)))

    def open_batch(self, limits: BatchLimits) -> Batch | None:
        return FakeBatch(self, limits.prompt_cache_bytes) if self.batched else None

    def close(self) -> None:
        super().close()
        self.closed = True


class _TokenListOps:
    """Snapshots of the fake are the token lists themselves."""

    def nbytes(self, snapshot: list[int]) -> int:
        return 4 * len(snapshot)

    def copy(self, snapshot: list[int]) -> list[int]:
        return list(snapshot)

    def trim(self, snapshot: list[int], n: int) -> bool:
        del snapshot[len(snapshot) - n :]
        return True


def _choices(steps: Generator[Step]) -> Generator[TokenChoice]:
    try:
        for step in steps:
            if isinstance(step, TokenChoice):
                yield step
    finally:
        steps.close()


class FakeBatch(Batch):
    """Round-robin over the fake's generators, one token each per step."""

    def __init__(self, backend: FakeBackend, prompt_cache_bytes: int) -> None:
        self.backend = backend
        self.cache: PromptCache[list[int]] = PromptCache(
            _TokenListOps(), max_bytes=prompt_cache_bytes
        )
        self._seqs: dict[int, tuple[Generator[TokenChoice], list[int]]] = {}

    def add(self, key: int, request: GenerationRequest) -> int:
        _snapshot, rest = self.cache.fetch_nearest(request.prompt_tokens)
        tokens = list(request.prompt_tokens)
        self._seqs[key] = (_choices(self.backend.generate(request, CancelToken())), tokens)
        return len(tokens) - len(rest)

    def step(self) -> list[tuple[int, TokenChoice]]:
        out = []
        for key, (steps, tokens) in list(self._seqs.items()):
            choice = next(steps, None)
            if choice is not None:
                tokens.append(choice.token_id)
                out.append((key, choice))
        return out

    def remove(self, key: int) -> None:
        steps, tokens = self._seqs.pop(key)
        steps.close()
        self.cache.insert(tokens[:-1], tokens[:-1])

    def cache_stats(self) -> tuple[int, int]:
        return self.cache.nbytes, len(self.cache)
