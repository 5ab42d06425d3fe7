"""The asyncio face of the engine: what HTTP handlers and the protocol layer talk to.

``AsyncEngine`` is the one door to a loaded model for the layers above: ``open`` submits a
sequence and streams its events (``EventStream``), ``on_device`` runs work on the engine thread
(an embedding), and the rest are facts about the model (its tokenizer, embedder, capabilities,
metrics). Nothing above the engine holds the backend itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from ..core.backend import Backend, Capabilities, Tokenizer
from ..core.embedder import Embedder
from ..core.types import CancelToken, EngineEvent, Finished, GenerationRequest
from .metrics import EngineMetrics
from .scheduler import Scheduler

T = TypeVar("T")


class EventStream:
    """Events of one submitted sequence, as an async iterator. ``aclose`` cancels it."""

    def __init__(self, scheduler: Scheduler, request: GenerationRequest) -> None:
        loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self._cancel = CancelToken()
        self._done = False

        def sink(event: EngineEvent) -> None:
            try:
                loop.call_soon_threadsafe(self._events.put_nowait, event)
            except RuntimeError:  # the loop is gone: nobody is listening any more
                self._cancel.cancel()

        # The calling task (one per HTTP request) is the group the engine is fair between.
        # Raises ServerBusy or EngineFailed now, not mid-stream.
        scheduler.submit(request, sink, self._cancel, group=asyncio.current_task())

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> EngineEvent:
        if self._done:
            raise StopAsyncIteration
        try:
            event = await self._events.get()
        except BaseException:
            self._cancel.cancel()
            raise
        if isinstance(event, Finished):
            self._done = True
        return event

    async def aclose(self) -> None:
        if not self._done:
            self._cancel.cancel()
            self._done = True


class AsyncEngine:
    """The asyncio face of the scheduler, and what the layers above may know of its model.

    Callers reach the model only through here: ``open`` (generation) and ``on_device`` (an
    embedding, or any other device work) run on the engine thread; ``tokenizer`` is host work
    for any thread; the rest are plain facts about the loaded model.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    @property
    def _backend(self) -> Backend:
        return self.scheduler.backend

    @property
    def name(self) -> str:
        """The backend's name ("mlx", "llama", ...)."""
        return self._backend.name

    @property
    def model_id(self) -> str:
        return self._backend.model_id

    @property
    def context_length(self) -> int:
        return self._backend.context_length

    @property
    def capabilities(self) -> Capabilities:
        return self._backend.capabilities

    @property
    def tokenizer(self) -> Tokenizer:
        return self._backend.tokenizer

    @property
    def embedder(self) -> Embedder | None:
        """The model behind /v1/embeddings; run its ``embed_tokens`` through ``on_device``."""
        return self._backend.embedder

    @property
    def embedding_hint(self) -> str | None:
        return self._backend.embedding_hint

    @property
    def group_info(self) -> Any:
        """Where this model is served by an MLX distributed group, the group (else None)."""
        return getattr(self._backend, "group_info", None)

    def metrics(self) -> EngineMetrics:
        return self.scheduler.metrics

    def open(self, request: GenerationRequest) -> EventStream:
        """Submit a sequence now; iterate its events. Closing early cancels it."""
        return EventStream(self.scheduler, request)

    async def on_device(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the engine's thread, which owns the device (an embedding, say)."""
        return await asyncio.wrap_future(self.scheduler.call(fn))

    def health(self) -> str | None:
        """None while the engine serves; otherwise why it does not."""
        return self.scheduler.health()
