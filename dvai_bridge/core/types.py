"""Plain data the engine works with. No HTTP, no pydantic, no backend library."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..defaults import DEVICE_LIMITS

if TYPE_CHECKING:
    from .grammar import Grammar
    from .reasoning import GatedGrammar, ReasoningSpec

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. Defaults are OpenAI's."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class BatchLimits:
    """How much the engine may batch and cache (by default: the CPU's defaults)."""

    max_batch: int = DEVICE_LIMITS["cpu"][0]
    prefill_chunk: int = DEVICE_LIMITS["cpu"][1]
    prompt_cache_bytes: int = DEVICE_LIMITS["cpu"][2] << 20


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate: a tokenized prompt and how to continue it."""

    prompt_tokens: tuple[int, ...]
    sampling: SamplingParams = SamplingParams()
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    # constrained decoding: each sequence gets its own matcher (a GatedGrammar when the reply
    # reasons first: free reasoning, then the grammar)
    grammar: Grammar | GatedGrammar | None = None
    reasoning: ReasoningSpec | None = None  # the reply starts inside a reasoning block

    def with_seed(self, seed: int | None) -> GenerationRequest:
        return dataclasses.replace(self, sampling=dataclasses.replace(self.sampling, seed=seed))


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]


@dataclass(frozen=True)
class TokenChoice:
    """What the model chose at one step, with its logprob and the best alternatives."""

    token_id: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Prefilled:
    """The prompt is in: how many of its tokens came from a cache (reported as
    ``usage.prompt_tokens_details.cached_tokens``). Yielded by ``generate`` before its first
    ``TokenChoice``."""

    cached_tokens: int


@dataclass(frozen=True)
class TextDelta:
    """New text for the client, and the tokens that produced it (for logprobs)."""

    text: str
    logprobs: tuple[tuple[TokenLogprob, tuple[TokenLogprob, ...]], ...] = ()


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    error: BaseException | None = None
    reasoning_tokens: int = 0  # of completion_tokens, those inside the reasoning block
    stop_string: str | None = None  # the request's stop string that ended it, if one did


EngineEvent = TextDelta | Finished


@dataclass
class CancelToken:
    """Set by whoever waits on a sequence when it no longer wants the result.

    ``on_cancel`` callbacks run once, on the cancelling thread (a queued sequence leaves the
    queue at once through one)."""

    _event: threading.Event = field(default_factory=threading.Event)
    _callbacks: list[Callable[[], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cancel(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn()

    def on_cancel(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` when cancelled (at once if already cancelled)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(fn)
                return
        fn()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()
