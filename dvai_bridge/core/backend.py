"""The one contract every backend implements: the smallest set of members the engine needs.

A backend owns a loaded model. The engine asks it to ``generate`` (one sequence, a stream of
``TokenChoice``s, after a ``Prefilled`` that says how much of the prompt came from a cache) or
to ``open_batch`` (many sequences decoded together), reads its ``capabilities``, and closes it.
Its ``tokenizer`` turns messages and text into tokens and back (host work, any thread); its
``embedder``, when it has one, is a model of its own beside the chat model. Everything else
(stop strings, limits, cancellation, queuing, HTTP) lives above it. ``generate``, the batch,
``on_idle``, ``close`` and ``end_thread`` run on the engine's thread, which owns the device.

    Backend
      name, model_id, context_length, capabilities, device_kind, device_memory
      tokenizer: Tokenizer         chat_tokens, tokenize, decode, token_bytes, vocab_size, ...
      embedder: Embedder | None    /v1/embeddings (run on the engine thread too)
      generate(request, cancel) -> Generator[Prefilled | TokenChoice]
      open_batch(limits) -> Batch | None
      on_idle(), close(), end_thread()
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Generator
from dataclasses import dataclass
from typing import ClassVar

from .embedder import Embedder
from .tokenizer import FALLBACK_CHAT_TEMPLATE, Message, Tokenizer
from .types import BatchLimits, CancelToken, GenerationRequest, Prefilled, TokenChoice

__all__ = [
    "FALLBACK_CHAT_TEMPLATE",
    "Backend",
    "Batch",
    "Capabilities",
    "Message",
    "Step",
    "Tokenizer",
]

Step = Prefilled | TokenChoice  # what ``generate`` yields


@dataclass(frozen=True)
class Capabilities:
    chat: bool = True
    completions: bool = True
    vision: bool = False
    logprobs: bool = True


class Batch(ABC):
    """Many sequences decoded together (continuous batching). Owned by the engine thread.

    Sequences join with ``add`` and leave with ``remove`` at any step; ``step`` advances every
    active sequence by at most one token (a sequence still prefilling yields nothing yet).
    Exceptions may be anything: the engine translates them (engine/boundary.py).
    """

    @abstractmethod
    def add(self, key: int, request: GenerationRequest) -> int:
        """Admit a sequence; returns how many prompt tokens came from the prompt cache."""

    @abstractmethod
    def step(self) -> list[tuple[int, TokenChoice]]:
        """One step for the whole batch: (key, choice) for each sequence that produced one."""

    @abstractmethod
    def remove(self, key: int) -> None:
        """Drop a sequence (finished or cancelled) and free its slot now."""

    def cache_stats(self) -> tuple[int, int]:
        """(bytes, entries) held by the prompt cache."""
        return 0, 0

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free everything; the batch is not used again."""


class Backend(ABC):
    """A loaded model behind one streaming ``generate`` (and, optionally, a ``Batch``)."""

    name: ClassVar[str]
    capabilities: Capabilities = Capabilities()
    model_id: str
    context_length: int
    tokenizer: Tokenizer
    # /v1/embeddings: the model that serves it, beside the chat model (closed with it), or
    # why there is none and how to get one (the protocol layer's 501 says it).
    embedder: Embedder | None = None
    embedding_hint: str | None = None
    # Where the model runs ("cpu", "cuda", "metal"; the engine's default limits follow it), and
    # that device's memory in bytes when known.
    device_kind: str = "cpu"
    device_memory: int | None = None

    @abstractmethod
    def generate(self, request: GenerationRequest, cancel: CancelToken) -> Generator[Step]:
        """Yield a ``Prefilled`` once the prompt is in (optional: none means nothing came
        from a cache), then one ``TokenChoice`` per generated token until the caller stops
        iterating (it closes the iterator).

        The caller enforces limits and stops; the backend checks ``cancel`` only where a step
        is long (prefill).
        """

    def open_batch(self, limits: BatchLimits) -> Batch | None:
        """A continuous-batching generator, or None if this backend decodes one at a time."""
        return None

    def on_idle(self) -> None:  # noqa: B027 - optional hook
        """Called from the engine thread every few seconds while nothing runs (tuning that
        must not change mid-step, such as the CPU's BLAS threads, can catch up here)."""

    def close(self) -> None:
        """Free the model and its embedder. Called once, from the engine thread; a backend
        that overrides it calls this too."""
        if self.embedder is not None:
            self.embedder.close()

    def end_thread(self) -> None:  # noqa: B027 - optional hook
        """Called last on the engine thread, after ``close``, just before the thread ends:
        drop thread-local device state (MLX: the thread's streams)."""
