"""One thread owns the device and runs sequences; callers talk to it through queues.

With a backend that batches (``Backend.open_batch``), sequences join the running batch as they
arrive and leave it the moment they finish or their caller cancels: continuous batching.
Otherwise sequences run one at a time, in arrival order. Either way concurrent requests are
correct: nothing interleaves, nothing is dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..backends.base import Backend, Batch
from ..errors import BridgeError, ServerBusy, ServiceUnavailable
from .metrics import EngineMetrics
from .sequence import SequenceState, run_sequence
from .types import BatchLimits, CancelToken, EngineEvent, Finished, GenerationRequest

log = logging.getLogger(__name__)

Sink = Callable[[EngineEvent], None]


@dataclass
class _Job:
    request: GenerationRequest
    sink: Sink
    cancel: CancelToken
    enqueued: float = field(default_factory=time.monotonic)


_STOP = object()
IDLE_TICK_S = 1.0
ADMIT_WINDOW_S = 0.015  # after an idle spell, how long the first request waits for company
_SHUTDOWN = "The server is shutting down."


class Scheduler:
    """Owns the backend and the thread that drives it."""

    def __init__(self, backend: Backend, *, max_queued: int = 64,
                 limits: BatchLimits | None = None) -> None:
        self.backend = backend
        self.metrics = EngineMetrics()
        self.limits = limits or BatchLimits()
        self.max_batch = self.limits.max_batch
        self._queue: queue.Queue[_Job | object] = queue.Queue(maxsize=max_queued)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="dvai-engine", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def submit(self, request: GenerationRequest, sink: Sink, cancel: CancelToken) -> None:
        if self._closed:
            raise ServiceUnavailable(_SHUTDOWN)
        try:
            self._queue.put_nowait(_Job(request, sink, cancel))
        except queue.Full:
            raise ServerBusy(
                f"Too many queued requests ({self._queue.maxsize}); retry shortly."
            ) from None
        self.metrics.queue_depth = self._queue.qsize()

    def close(self, timeout: float = 30.0) -> None:
        """Cancel queued sequences, end running ones, free the backend. Idempotent."""
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
                                  error=ServiceUnavailable(_SHUTDOWN)))
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # -- the engine thread -------------------------------------------------------------
    def _run(self) -> None:
        batch = None
        try:
            if self.max_batch > 1:
                batch = self.backend.open_batch(self.limits)
            if batch is None:
                self._serial_loop()
            else:
                _BatchLoop(self, batch).run()
        except Exception:
            log.exception("the engine loop failed")
        finally:
            try:
                if batch is not None:
                    batch.close()
                self.backend.close()
            except Exception:
                log.exception("backend close failed")

    def _next_job(self, block: bool, wait: float = 0.0) -> _Job | object | None:
        """The next job. Not ``block``: None if none arrives within ``wait`` seconds. While
        blocked, the backend's ``on_idle`` runs every ``IDLE_TICK_S``."""
        while True:
            try:
                if block:
                    job = self._queue.get(timeout=IDLE_TICK_S)
                elif wait > 0:
                    job = self._queue.get(timeout=wait)
                else:
                    job = self._queue.get_nowait()
            except queue.Empty:
                if not block:
                    return None
                try:
                    self.backend.on_idle()
                except Exception:  # noqa: BLE001 - tuning must not stop the engine
                    log.exception("the backend's idle hook failed")
                continue
            self.metrics.queue_depth = self._queue.qsize()
            return job

    def _serial_loop(self) -> None:
        while True:
            job = self._next_job(block=True)
            if job is _STOP:
                return
            assert isinstance(job, _Job)
            if job.cancel.cancelled:
                job.sink(Finished("cancelled", len(job.request.prompt_tokens), 0))
                continue
            self.metrics.running = 1
            try:
                run_sequence(self.backend, job.request, job.sink, job.cancel, self.metrics)
            finally:
                self.metrics.running = 0


class _BatchLoop:
    """Admit, step, retire: the continuous-batching loop over a backend ``Batch``."""

    def __init__(self, scheduler: Scheduler, batch: Batch) -> None:
        self.s = scheduler
        self.batch = batch
        self.active: dict[int, tuple[_Job, SequenceState]] = {}
        self.keys = itertools.count()
        self.stopping = False

    def run(self) -> None:
        while not (self.stopping and not self.active):
            self._admit()
            self._retire_cancelled()
            if not self.active:
                continue
            try:
                outputs = self.batch.step()
            except Exception as exc:  # noqa: BLE001 - fail the batch, keep the engine
                log.exception("batch step failed")
                for key in list(self.active):
                    self._retire(key, error=exc)
                continue
            for key, choice in outputs:
                entry = self.active.get(key)
                if entry is None:
                    continue
                try:
                    more = entry[1].on_token(choice)
                except Exception as exc:  # noqa: BLE001 - this sequence fails, the rest go on
                    log.exception("handling a generated token failed")
                    self._retire(key, error=exc)
                    continue
                if not more:
                    self._retire(key)
            bytes_, entries = self.batch.cache_stats()
            self.s.metrics.prompt_cache_bytes = bytes_
            self.s.metrics.prompt_cache_entries = entries

    def _admit(self) -> None:
        try:
            self._admit_waiting()
        finally:
            self.s.metrics.running = len(self.active)

    def _admit_waiting(self) -> None:
        block = not self.active and not self.stopping
        gather_until = 0.0
        while not self.stopping and len(self.active) < self.s.max_batch:
            job = self.s._next_job(block=block, wait=gather_until - time.monotonic())
            if block:  # woken from idle: requests sent together reach us a few ms apart;
                gather_until = time.monotonic() + ADMIT_WINDOW_S  # prefill them as one batch
            block = False
            if job is None:
                return
            if job is _STOP:
                self.stopping = True
                return
            assert isinstance(job, _Job)
            if job.cancel.cancelled:
                job.sink(Finished("cancelled", len(job.request.prompt_tokens), 0))
                continue
            key = next(self.keys)
            try:
                cached = self.batch.add(key, job.request)
            except Exception as exc:  # noqa: BLE001
                if not isinstance(exc, BridgeError):
                    log.exception("could not admit a sequence")
                SequenceState(self.s.backend, job.request, job.sink,
                              self.s.metrics).finish(error=exc)
                continue
            state = SequenceState(self.s.backend, job.request, job.sink, self.s.metrics, cached)
            self.active[key] = (job, state)

    def _retire_cancelled(self) -> None:
        for key, (job, _) in list(self.active.items()):
            if job.cancel.cancelled:
                self._retire(key, reason="cancelled")

    def _retire(self, key: int, reason=None, error: BaseException | None = None) -> None:
        job, state = self.active.pop(key)
        try:
            self.batch.remove(key)
        except Exception:  # noqa: BLE001
            log.exception("removing a sequence from the batch failed")
        state.finish(reason, error)
        self.s.metrics.running = len(self.active)


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
