"""One thread owns the device and runs sequences; callers talk to it through queues.

Sequences run one at a time, in arrival order, each to completion or cancellation. That keeps
concurrent requests correct (no interleaving, nothing dropped) on every backend; a batching
scheduler can replace the loop without changing ``submit`` or ``AsyncEngine``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..backends.base import Backend
from ..errors import BackendError, BridgeError, ServerBusy, ServiceUnavailable
from .metrics import EngineMetrics
from .sequence import run_sequence
from .types import CancelToken, EngineEvent, Finished, GenerationRequest

log = logging.getLogger(__name__)

Sink = Callable[[EngineEvent], None]


@dataclass
class _Job:
    request: GenerationRequest
    sink: Sink
    cancel: CancelToken
    enqueued: float = field(default_factory=time.monotonic)


_STOP = object()


class Scheduler:
    """Owns the backend and the thread that drives it."""

    def __init__(self, backend: Backend, *, max_queued: int = 64) -> None:
        self.backend = backend
        self.metrics = EngineMetrics()
        self._queue: queue.Queue[_Job | object] = queue.Queue(maxsize=max_queued)
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="dvai-engine", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def submit(self, request: GenerationRequest, sink: Sink, cancel: CancelToken) -> None:
        if self._closed:
            raise ServiceUnavailable("The server is shutting down.")
        try:
            self._queue.put_nowait(_Job(request, sink, cancel))
        except queue.Full:
            raise ServerBusy(
                f"Too many queued requests ({self._queue.maxsize}); retry shortly."
            ) from None
        self.metrics.queue_depth = self._queue.qsize()

    def close(self, timeout: float = 30.0) -> None:
        """Finish the running sequence, cancel queued ones, free the backend. Idempotent."""
        if self._closed:
            return
        self._closed = True
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, _Job):
                job.sink(Finished("cancelled", len(job.request.prompt_tokens), 0,
                                  error=ServiceUnavailable("The server is shutting down.")))
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _loop(self) -> None:
        try:
            while True:
                job = self._queue.get()
                if job is _STOP:
                    return
                assert isinstance(job, _Job)
                self.metrics.queue_depth = self._queue.qsize()
                if job.cancel.cancelled:
                    job.sink(Finished("cancelled", len(job.request.prompt_tokens), 0))
                    continue
                self.metrics.running = 1
                try:
                    run_sequence(self.backend, job.request, job.sink, job.cancel, self.metrics)
                except BaseException as exc:  # never let one sequence kill the engine
                    log.exception("sequence failed outside the backend boundary")
                    err = exc if isinstance(exc, BridgeError) else BackendError(str(exc))
                    job.sink(Finished("error", len(job.request.prompt_tokens), 0, error=err))
                finally:
                    self.metrics.running = 0
        finally:
            try:
                self.backend.close()
            except Exception:
                log.exception("backend close failed")


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

        scheduler.submit(request, sink, self._cancel)  # raises ServerBusy now, not mid-stream

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
    """The asyncio face of the scheduler."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    @property
    def backend(self) -> Backend:
        return self.scheduler.backend

    def open(self, request: GenerationRequest) -> EventStream:
        """Submit a sequence now; iterate its events. Closing early cancels it."""
        return EventStream(self.scheduler, request)
