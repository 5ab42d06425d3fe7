"""One sequence's life: limits, stops, detokenization, logprobs, and its final event.

``SequenceState`` is fed one ``TokenChoice`` at a time, by the serial loop (``run_sequence``)
or by the batching loop; both end a sequence the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator

from ..core.backend import Backend, Step, Tokenizer
from ..core.reasoning import ReasoningTracker
from ..core.types import (
    CancelToken,
    EngineEvent,
    Finished,
    FinishReason,
    GenerationRequest,
    Prefilled,
    TextDelta,
    TokenChoice,
    TokenLogprob,
)
from ..errors import BackendError, BridgeError
from .boundary import backend_call
from .metrics import EngineMetrics
from .stops import StopMatcher

log = logging.getLogger(__name__)


# A token a grammar (or a -100 logit_bias) rules out has logprob -inf, which JSON cannot carry;
# OpenAI reports such tokens as -9999.0.
MIN_LOGPROB = -9999.0


def _token_logprob(tokenizer: Tokenizer, token_id: int, logprob: float) -> TokenLogprob:
    raw = tokenizer.token_bytes(token_id)
    return TokenLogprob(
        raw.decode("utf-8", errors="replace"), max(logprob, MIN_LOGPROB), tuple(raw)
    )


class SequenceState:
    """Turns token choices into text deltas and, at the end, one ``Finished``."""

    def __init__(
        self,
        backend: Backend,
        request: GenerationRequest,
        sink: Callable[[EngineEvent], None],
        metrics: EngineMetrics,
        cached_tokens: int = 0,
    ) -> None:
        self.tokenizer = tokenizer = backend.tokenizer
        self.request = request
        self.sink = sink
        self.metrics = metrics
        self.cached_tokens = cached_tokens
        self.produced = 0
        self.done = False
        self._detok = tokenizer.detokenizer()
        self._stops = StopMatcher(request.stop)
        self._stop_ids = tokenizer.eos_token_ids | frozenset(request.stop_token_ids)
        self._pending: list[tuple[TokenLogprob, tuple[TokenLogprob, ...]]] = []
        self._reasoning = (
            ReasoningTracker(request.reasoning, tokenizer.token_bytes)
            if request.reasoning is not None
            else None
        )
        self._reason: FinishReason = "length"
        self._started = time.monotonic()
        self._last = self._started
        metrics.sequences_total += 1
        metrics.prompt_tokens_total += len(request.prompt_tokens)
        metrics.prompt_cached_tokens_total += cached_tokens

    def set_cached(self, n: int) -> None:
        """How many prompt tokens came from a cache, once the backend knows."""
        self.metrics.prompt_cached_tokens_total += n - self.cached_tokens
        self.cached_tokens = n

    def on_token(self, choice: TokenChoice) -> bool:
        """Take one generated token. Returns False once the sequence is over."""
        if self.done:
            return False
        now = time.monotonic()
        if self.produced == 0:
            self.metrics.observe_ttft(now - self._started)
        else:
            self.metrics.observe_token_latency(now - self._last)
        self._last = now
        self.produced += 1
        if choice.token_id in self._stop_ids:
            self._reason = "stop"
            return False
        if self._reasoning is not None:
            self._reasoning.advance(choice.token_id)
        if self.request.logprobs:
            self._pending.append(self._logprob_entry(choice))
        text = self._stops.feed(self._detok.add(choice.token_id))
        if text:
            self._emit(text)
        if self._stops.stopped:
            self._reason = "stop"
            return False
        return self.produced < self.request.max_tokens

    def finish(
        self, reason: FinishReason | None = None, error: BaseException | None = None
    ) -> None:
        """Flush held text (unless cancelled or failed) and send ``Finished``. Once."""
        if self.done:
            return
        self.done = True
        reason = reason or self._reason
        if error is not None:
            reason = "error"
            if not isinstance(error, BridgeError):
                error = BackendError(f"Generation failed: {error}")
        if reason in ("length", "stop") and not self._stops.stopped:
            tail = self._stops.feed(self._detok.flush()) + self._stops.flush()
            if self._stops.stopped:
                reason = "stop"
            if tail or self._pending:
                self._emit(tail)
        self.metrics.generated_tokens_total += self.produced
        if reason == "cancelled":
            self.metrics.sequences_cancelled += 1
        elif reason == "error":
            self.metrics.sequences_failed += 1
        self.sink(
            Finished(
                reason,
                len(self.request.prompt_tokens),
                self.produced,
                self.cached_tokens,
                error,
                self._reasoning.tokens if self._reasoning is not None else 0,
                self._stops.matched if reason == "stop" else None,
            )
        )

    def _emit(self, text: str) -> None:
        self.sink(TextDelta(text, tuple(self._pending)))
        self._pending = []

    def _logprob_entry(self, choice: TokenChoice) -> tuple[TokenLogprob, tuple[TokenLogprob, ...]]:
        chosen = _token_logprob(self.tokenizer, choice.token_id, choice.logprob or 0.0)
        top = tuple(
            _token_logprob(self.tokenizer, t, lp)
            for t, lp in choice.top[: self.request.top_logprobs]
        )
        return chosen, top


def run_sequence(
    backend: Backend,
    request: GenerationRequest,
    sink: Callable[[EngineEvent], None],
    cancel: CancelToken,
    metrics: EngineMetrics,
    between: Callable[[], None] | None = None,
) -> None:
    """The serial path: generate one sequence to its end on this thread, calling ``between``
    after each token (the engine runs its device calls there)."""
    state = SequenceState(backend, request, sink, metrics)
    steps: Generator[Step] | None = None
    try:
        with backend_call("generating"):
            steps = backend.generate(request, cancel)
            for step in steps:
                if isinstance(step, Prefilled):
                    state.set_cached(step.cached_tokens)
                    continue
                if cancel.cancelled:
                    state.finish("cancelled")
                    return
                if not state.on_token(step):
                    break
                if between is not None:
                    between()
        if cancel.cancelled:
            state.finish("cancelled")
        else:
            state.finish()
    except Exception as exc:
        state.finish(error=exc)
    finally:
        if steps is not None:
            steps.close()
