"""Drive one sequence through a backend: limits, stops, detokenization, logprobs."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..backends.base import Backend
from ..errors import BackendError, BridgeError
from .metrics import EngineMetrics
from .stops import StopMatcher
from .types import (
    CancelToken,
    EngineEvent,
    Finished,
    FinishReason,
    GenerationRequest,
    TextDelta,
    TokenChoice,
    TokenLogprob,
)

log = logging.getLogger(__name__)


def _token_logprob(backend: Backend, token_id: int, logprob: float) -> TokenLogprob:
    raw = backend.token_bytes(token_id)
    return TokenLogprob(raw.decode("utf-8", errors="replace"), logprob, tuple(raw))


def _logprob_entry(
    backend: Backend, choice: TokenChoice, top_n: int
) -> tuple[TokenLogprob, tuple[TokenLogprob, ...]]:
    chosen = _token_logprob(backend, choice.token_id, choice.logprob or 0.0)
    top = tuple(_token_logprob(backend, t, lp) for t, lp in choice.top[:top_n])
    return chosen, top


def run_sequence(
    backend: Backend,
    request: GenerationRequest,
    sink: Callable[[EngineEvent], None],
    cancel: CancelToken,
    metrics: EngineMetrics,
) -> None:
    """Generate until EOS, a stop string, the token limit, cancellation or an error."""
    detok = backend.detokenizer()
    stops = StopMatcher(request.stop)
    stop_ids = backend.eos_token_ids | frozenset(request.stop_token_ids)
    pending_logprobs: list = []
    produced = 0
    reason: FinishReason = "length"
    error: BridgeError | None = None
    prompt_len = len(request.prompt_tokens)
    metrics.sequences_total += 1
    metrics.prompt_tokens_total += prompt_len

    steps = backend.generate(request, cancel)
    try:
        while produced < request.max_tokens:
            if cancel.cancelled:
                reason = "cancelled"
                break
            try:
                choice = next(steps)
            except StopIteration:
                break
            if cancel.cancelled:
                reason = "cancelled"
                break
            produced += 1
            if choice.token_id in stop_ids:
                reason = "stop"
                break
            if request.logprobs:
                pending_logprobs.append(_logprob_entry(backend, choice, request.top_logprobs))
            text = stops.feed(detok.add(choice.token_id))
            if stops.stopped:
                reason = "stop"
                if text:
                    sink(TextDelta(text, tuple(pending_logprobs)))
                pending_logprobs = []
                break
            if text:
                sink(TextDelta(text, tuple(pending_logprobs)))
                pending_logprobs = []
    except BridgeError as exc:
        reason, error = "error", exc
    except Exception as exc:  # a backend that forgot to translate: still an error frame
        log.exception("backend raised during generation")
        reason, error = "error", BackendError(f"Generation failed: {exc}")
    finally:
        steps.close()

    if reason in ("length", "stop") and not stops.stopped:
        tail = stops.feed(detok.flush())
        tail += stops.flush()
        if tail or pending_logprobs:
            sink(TextDelta(tail, tuple(pending_logprobs)))
    metrics.generated_tokens_total += produced
    if reason == "cancelled":
        metrics.sequences_cancelled += 1
    elif reason == "error":
        metrics.sequences_failed += 1
    sink(Finished(reason, prompt_len, produced, error=error))
