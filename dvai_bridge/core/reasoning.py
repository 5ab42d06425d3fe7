"""Reasoning in the engine: where a sequence's thinking ends, its budget, and the grammar after.

A ``ReasoningSpec`` on a ``GenerationRequest`` says that the reply starts inside a reasoning
block (the prompt opened it), which text closes the block, the token ids the engine writes to
close it itself, and the budget: how many reasoning tokens the model may write before that.

``ReasoningTracker`` follows one sequence's tokens (as bytes, so a marker split over several
tokens, or one special token, is found alike) and counts the reasoning tokens.

``GatedGrammar`` stands where a ``Grammar`` stands on the request: the backends ask it for a
matcher as they ask a grammar, and its ``ReasoningGate`` lets every token through while the
model reasons (but the end of the sequence, when an answer must follow under a grammar),
forces the closing tokens one by one once the budget is spent, and from the end
of the block on hands over to the request's own grammar (``response_format``, forced tool
calls), if any. So the answer is constrained and the reasoning is free text, on every backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .grammar import Grammar


@dataclass(frozen=True)
class ReasoningSpec:
    close_text: str  # the marker that ends a block, as the model writes it ("</think>")
    close_tokens: tuple[int, ...]  # what the engine forces to end it (marker + layout)
    budget: int | None = None  # reasoning tokens allowed before the engine closes the block
    inside: bool = True  # the prompt opened the block
    open_text: str | None = None  # the marker that opens one, when the model may write it


class ReasoningTracker:
    """Whether one sequence is still reasoning, and how many tokens it reasoned."""

    def __init__(self, spec: ReasoningSpec, token_bytes: Callable[[int], bytes]) -> None:
        self.spec = spec
        self._bytes = token_bytes
        self._close = spec.close_text.encode()
        self._open = spec.open_text.encode() if spec.open_text else None
        self._tail = b""
        self.inside = spec.inside
        self.tokens = 0

    def advance(self, token_id: int) -> None:
        if not self.inside and self._open is None:
            return
        self._tail = (self._tail + self._bytes(token_id))[-(len(self._close) + 32) :]
        if not self.inside:  # a model that opens its block itself (Qwen3's own template)
            if self._open is not None and self._open in self._tail:
                self.inside, self._tail = True, b""
                self.tokens += 1
            return
        self.tokens += 1
        if self._close in self._tail:
            self.inside, self._tail = False, b""

    @property
    def spent(self) -> bool:
        return self.spec.budget is not None and self.tokens >= self.spec.budget


class ReasoningGate:
    """A matcher (see grammar.TokenMatcher) for a sequence that reasons first."""

    def __init__(self, gated: GatedGrammar) -> None:
        self._track = ReasoningTracker(gated.spec, gated.token_bytes)
        self._inner = gated.inner.matcher() if gated.inner is not None else None
        self._forcing: list[int] = []
        self._stop_ids = gated.stop_ids

    def allowed(self, n_vocab: int) -> np.ndarray:
        if self._forcing:
            mask = np.zeros(n_vocab, dtype=bool)
            mask[self._forcing[0]] = True
            return mask
        if self._inner is None:
            return np.ones(n_vocab, dtype=bool)
        if self._track.inside:
            # Free text, but not the end: a constrained reply must close the block and answer.
            mask = np.ones(n_vocab, dtype=bool)
            mask[[t for t in self._stop_ids if t < n_vocab]] = False
            return mask
        return self._inner.allowed(n_vocab)

    def advance(self, token_id: int) -> None:
        if self._forcing:
            self._forcing.pop(0)  # the only token allowed, so the one chosen
            if not self._forcing:
                self._track.inside = False
            return
        if self._track.inside:
            self._track.advance(token_id)
            if self._track.inside and self._track.spent:
                self._forcing = list(self._track.spec.close_tokens)
            return
        if self._inner is not None:
            self._inner.advance(token_id)

    @property
    def done(self) -> bool:
        return self._inner is not None and not self._track.inside and self._inner.done

    @property
    def error(self) -> str | None:
        return self._inner.error if self._inner is not None else None


@dataclass(frozen=True)
class GatedGrammar:
    """Reasoning first (free, budgeted), then ``inner`` (or free text)."""

    spec: ReasoningSpec
    inner: Grammar | None
    token_bytes: Callable[[int], bytes]
    stop_ids: frozenset[int] = frozenset()  # end-of-sequence tokens, kept out of the reasoning

    def matcher(self) -> ReasoningGate:
        return ReasoningGate(self)
