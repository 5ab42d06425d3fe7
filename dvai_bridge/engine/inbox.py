"""What waits for the engine thread: sequences (bounded, fair between requests) and device calls.

Why not ``queue.Queue``: three things it cannot do, each of which one request used to be able
to hurt the others with.
- A sequence whose caller went away leaves the queue the moment it is cancelled, so its slot
  is free at once (a FIFO only notices it when the engine gets to it).
- Sequences are handed out round-robin between requests (the group each was submitted under),
  so one request with many prompts and choices does not make everyone after it wait.
- Device calls (work that must run on the engine's thread, such as an embedding) go ahead of
  sequences and never count against the sequence limit.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..core.types import CancelToken, EngineEvent, GenerationRequest

Sink = Callable[[EngineEvent], None]


@dataclass(eq=False)
class Job:
    request: GenerationRequest
    sink: Sink
    cancel: CancelToken
    group: Hashable = None
    enqueued: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class Call:
    """A function to run on the engine thread; its result (or exception) goes to ``future``."""

    fn: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)


STOP = object()


class Inbox:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._cond = threading.Condition()
        self._groups: OrderedDict[Hashable, deque[Job]] = OrderedDict()
        self._calls: deque[Call] = deque()
        self._count = 0
        self._stopped = False

    def __len__(self) -> int:
        return self._count

    def put(self, job: Job, on_dropped: Callable[[Job], None]) -> bool:
        """Queue ``job``; False if full. If its caller cancels while it waits, it leaves the
        queue and ``on_dropped(job)`` runs (on the cancelling thread)."""
        with self._cond:
            if self._count >= self.capacity:
                return False
            self._groups.setdefault(job.group, deque()).append(job)
            self._count += 1
            self._cond.notify()
        job.cancel.on_cancel(lambda: self._drop(job, on_dropped))
        return True

    def _drop(self, job: Job, on_dropped: Callable[[Job], None]) -> None:
        with self._cond:
            jobs = self._groups.get(job.group)
            if jobs is None or job not in jobs:
                return  # the engine has it already
            jobs.remove(job)
            if not jobs:
                del self._groups[job.group]
            self._count -= 1
        on_dropped(job)

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        call = Call(fn)
        with self._cond:
            self._calls.append(call)
            self._cond.notify()
        return call.future

    def take_calls(self) -> list[Call]:
        """The device calls waiting now, removed (the engine runs them between steps)."""
        with self._cond:
            calls = list(self._calls)
            self._calls.clear()
        return calls

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def get(self, timeout: float | None) -> Job | Call | object | None:
        """The next call, else the next sequence (round-robin between groups), else STOP once
        stopped; None if nothing came within ``timeout`` seconds (None: wait forever; 0: don't
        wait)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._calls:
                    return self._calls.popleft()
                if self._stopped:
                    return STOP
                if self._groups:
                    group, jobs = next(iter(self._groups.items()))
                    job = jobs.popleft()
                    del self._groups[group]
                    if jobs:  # the group goes to the back of the line
                        self._groups[group] = jobs
                    self._count -= 1
                    return job
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)

    def drain(self) -> tuple[list[Job], list[Call]]:
        """Everything still waiting, removed."""
        with self._cond:
            jobs = [job for q in self._groups.values() for job in q]
            calls = list(self._calls)
            self._groups.clear()
            self._calls.clear()
            self._count = 0
        return jobs, calls
