"""One thread owns the device and runs sequences; callers talk to it through queues.

With a backend that batches (``Backend.open_batch``), sequences join the running batch as they
arrive and leave it the moment they finish or their caller cancels: continuous batching.
Otherwise sequences run one at a time, in arrival order. Either way concurrent requests are
correct: nothing interleaves, nothing is dropped.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from ..core.backend import Backend, Batch
from ..core.types import (
    BatchLimits,
    CancelToken,
    EngineEvent,
    Finished,
    FinishReason,
    GenerationRequest,
)
from ..errors import BackendError, BridgeError, EngineFailed, ServerBusy, ServiceUnavailable
from .boundary import backend_call
from .inbox import STOP, Call, Inbox, Job
from .metrics import EngineMetrics
from .sequence import SequenceState, run_sequence

log = logging.getLogger(__name__)

Sink = Callable[[EngineEvent], None]
T = TypeVar("T")

IDLE_TICK_S = 1.0
ADMIT_WINDOW_S = 0.015  # after an idle spell, how long the first request waits for company
_SHUTDOWN = "The server is shutting down."


class Scheduler:
    """Owns the backend and the one thread that drives it.

    ``backend`` is a loaded backend, or a function that loads one: then it runs on the engine
    thread (so the thread that loads the model is the one that runs it: one thread owns the
    device) and the constructor waits for it, raising what it raised. ``limits`` may be a
    function of the loaded backend (defaults that depend on its device).

    An exception that escapes the engine loop is a state, not a silent thread death: the
    sequences in flight end with an ``EngineFailed`` error, queued ones too, new ones are
    refused with it (503), and ``health()`` says why, until ``close()``.
    """

    def __init__(
        self,
        backend: Backend | Callable[[], Backend],
        *,
        max_queued: int = 64,
        limits: BatchLimits | Callable[[Backend], BatchLimits] | None = None,
    ) -> None:
        self.metrics = EngineMetrics()
        self._inbox = Inbox(max_queued)
        self._live: dict[int, Job] = {}  # taken off the inbox, not finished yet
        self._closed = False
        self.failure: str | None = None
        self._loaded: Future[Backend] = Future()
        self._limits = limits
        self._thread = threading.Thread(
            target=self._run, args=(backend,), name="dvai-engine", daemon=True
        )
        self.backend: Backend
        self.limits: BatchLimits
        self._thread.start()
        self._loaded.result()  # raises the load's error

    @property
    def max_batch(self) -> int:
        return self.limits.max_batch

    @property
    def queued(self) -> int:
        return len(self._inbox)

    def health(self) -> str | None:
        """None while the engine serves; otherwise why it does not."""
        if self.failure is None and not self._thread.is_alive() and not self._closed:
            self.failure = "The engine thread ended unexpectedly."
        if self.failure is not None:
            return self.failure
        return _SHUTDOWN if self._closed else None

    def _refuse_if_down(self) -> None:
        why = self.health()
        if why is None:
            return
        if self.failure is not None:
            raise EngineFailed(
                f"The engine failed and serves nothing until the server is restarted: {why}"
            )
        raise ServiceUnavailable(why)

    def submit(
        self, request: GenerationRequest, sink: Sink, cancel: CancelToken, group: Any = None
    ) -> None:
        """Queue one sequence. ``group`` (one per request) is what the engine is fair between.
        Raises ServerBusy when the queue is full, EngineFailed when the engine is down."""
        self._refuse_if_down()
        job = Job(request, sink, cancel, group)
        if not self._inbox.put(job, self._dropped):
            raise ServerBusy(f"Too many queued requests ({self._inbox.capacity}); retry shortly.")
        self.metrics.queue_depth = len(self._inbox)

    def _dropped(self, job: Job) -> None:  # cancelled while queued: its slot is free now
        self.metrics.queue_depth = len(self._inbox)
        self.metrics.sequences_cancelled += 1
        job.sink(Finished("cancelled", len(job.request.prompt_tokens), 0))

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the engine thread (between steps); its result comes in the future."""
        self._refuse_if_down()
        return self._inbox.call(fn)

    def close(self, timeout: float = 30.0) -> None:
        """Cancel queued sequences, end running ones, free the backend. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._inbox.stop()
        self._fail_waiting(ServiceUnavailable(_SHUTDOWN), "cancelled")
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the engine thread did not stop within %gs", timeout)

    def fail(self, exc: BaseException) -> None:
        """Put the engine in its failure state from another thread: for a watchdog that sees
        the engine thread stuck where nothing can interrupt it (an MLX distributed collective
        whose peer went silent). Sequences in flight end with the error, queued and new ones
        get 503; the stuck thread is left to itself."""
        if self.failure is None and not self._closed:
            self._fail(exc)

    def _fail_waiting(self, error: BridgeError, reason: FinishReason = "error") -> None:
        jobs, calls = self._inbox.drain()
        for job in jobs:
            job.sink(Finished(reason, len(job.request.prompt_tokens), 0, error=error))
        for call in calls:
            call.future.set_exception(error)
        self.metrics.queue_depth = 0

    # -- the engine thread -------------------------------------------------------------
    def _run(self, backend: Backend | Callable[[], Backend]) -> None:
        try:
            if not isinstance(backend, Backend):
                backend = backend()
        except BaseException as exc:
            self._loaded.set_exception(exc)
            return
        try:
            limits = self._limits
            self.limits = limits(backend) if callable(limits) else limits or BatchLimits()
        except BaseException as exc:  # refused after the load: free the model here, on its
            _release(backend, None)  # thread (an MLX group's rank 0 aborted at exit without)
            self._loaded.set_exception(exc)
            return
        self.backend = backend
        self._loaded.set_result(backend)
        batch = None
        try:
            if self.limits.max_batch > 1:
                batch = backend.open_batch(self.limits)
            if batch is None:
                self._serial_loop()
            else:
                _BatchLoop(self, batch).run()
        except BaseException as exc:
            self._fail(exc)
        finally:
            _release(backend, batch)

    def _fail(self, exc: BaseException) -> None:
        log.critical("the engine failed; it serves nothing until restarted", exc_info=exc)
        self.failure = f"{type(exc).__name__}: {exc}"
        error = BackendError(f"The engine failed while generating: {self.failure}")
        for job in list(self._live.values()):  # running: a 500, as any failed generation
            try:
                job.sink(Finished("error", len(job.request.prompt_tokens), 0, error=error))
            except Exception:
                log.exception("could not tell a sequence the engine failed")
        self._live.clear()
        self.metrics.running = 0
        self._fail_waiting(
            EngineFailed(  # not started yet: a 503, like the ones refused now
                f"The engine failed and serves nothing until the server is restarted: "
                f"{self.failure}"
            )
        )

    def _take(self, job: Job) -> Job:
        """A job leaves the inbox for the engine: until it finishes, a failure ends it."""
        key = id(job)
        sink = job.sink

        def tracked(event: EngineEvent) -> None:
            if isinstance(event, Finished):
                self._live.pop(key, None)
            sink(event)

        job.sink = tracked
        self._live[key] = job
        return job

    def _run_calls(self) -> None:
        for call in self._inbox.take_calls():
            self._run_call(call)

    @staticmethod
    def _run_call(call: Call) -> None:
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            call.future.set_result(call.fn())
        except BaseException as exc:
            call.future.set_exception(exc)

    def _next_job(self, block: bool, wait: float = 0.0) -> Job | object | None:
        """The next sequence (device calls that arrive meanwhile are run here). Not ``block``:
        None if none arrives within ``wait`` seconds. While blocked, the backend's
        ``on_idle`` runs every ``IDLE_TICK_S``."""
        while True:
            item = self._inbox.get(IDLE_TICK_S if block else max(wait, 0.0))
            if isinstance(item, Call):
                self._run_call(item)
                continue
            if item is None:
                if not block:
                    return None
                try:
                    self.backend.on_idle()
                except Exception:
                    log.exception("the backend's idle hook failed")
                continue
            self.metrics.queue_depth = len(self._inbox)
            if item is STOP:
                return STOP
            assert isinstance(item, Job)
            return self._take(item)

    def _serial_loop(self) -> None:
        while True:
            job = self._next_job(block=True)
            if job is STOP:
                return
            assert isinstance(job, Job)
            if job.cancel.cancelled:
                job.sink(Finished("cancelled", len(job.request.prompt_tokens), 0))
                continue
            self.metrics.running = 1
            try:
                run_sequence(
                    self.backend,
                    job.request,
                    job.sink,
                    job.cancel,
                    self.metrics,
                    between=self._run_calls,
                )
            finally:
                self.metrics.running = 0


class _BatchLoop:
    """Admit, step, retire: the continuous-batching loop over a backend ``Batch``."""

    def __init__(self, scheduler: Scheduler, batch: Batch) -> None:
        self.s = scheduler
        self.batch = batch
        self.active: dict[int, tuple[Job, SequenceState]] = {}
        self.keys = itertools.count()
        self.stopping = False

    def run(self) -> None:
        while not (self.stopping and not self.active):
            self.s._run_calls()  # a full batch must not hold them up
            self._admit()
            self._retire_cancelled()
            if not self.active:
                continue
            try:
                with backend_call("stepping the batch"):
                    outputs = self.batch.step()
            except BridgeError as exc:
                log.error("a batch step failed; its %d sequences end: %s", len(self.active), exc)
                for key in list(self.active):
                    self._retire(key, error=exc)
                continue
            for key, choice in outputs:
                entry = self.active.get(key)
                if entry is None:
                    continue
                try:
                    with backend_call("handling a generated token"):
                        more = entry[1].on_token(choice)
                except BridgeError as exc:
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
            if job is STOP:
                self.stopping = True
                return
            assert isinstance(job, Job)
            if job.cancel.cancelled:
                job.sink(Finished("cancelled", len(job.request.prompt_tokens), 0))
                continue
            key = next(self.keys)
            try:
                with backend_call("admitting a sequence"):
                    cached = self.batch.add(key, job.request)
            except BridgeError as exc:
                SequenceState(self.s.backend, job.request, job.sink, self.s.metrics).finish(
                    error=exc
                )
                continue
            state = SequenceState(self.s.backend, job.request, job.sink, self.s.metrics, cached)
            self.active[key] = (job, state)

    def _retire_cancelled(self) -> None:
        for key, (job, _) in list(self.active.items()):
            if job.cancel.cancelled:
                self._retire(key, reason="cancelled")

    def _retire(
        self, key: int, reason: FinishReason | None = None, error: BaseException | None = None
    ) -> None:
        _job, state = self.active.pop(key)
        try:
            with backend_call("removing a sequence from the batch"):
                self.batch.remove(key)
        except BridgeError as exc:  # the sequence ends as it would have
            log.error("removing a sequence from the batch failed: %s", exc)
        state.finish(reason, error)
        self.s.metrics.running = len(self.active)


def _release(backend: Backend, batch: Batch | None) -> None:
    """Close the batch and the backend, then let the backend drop what it keeps per thread
    (MLX's streams): on the engine thread, its last act."""
    try:
        if batch is not None:
            batch.close()
        backend.close()
    except Exception:
        log.exception("backend close failed")
    backend.end_thread()
