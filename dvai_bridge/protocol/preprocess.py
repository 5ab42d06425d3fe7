"""Request pre-processing off the event loop, in a bounded pool.

Parsing a large body, validating it, applying the chat template and tokenizing are CPU work
that took seconds on big inputs (3.5 M token lists: 25 s; 400,000 empty messages: 2.3 s). Run
on the event loop, they stopped every other client, ``/health`` included (issue 13 item 2).
Here they run on ``workers`` threads, and at most ``workers`` requests are being pre-processed
at once (the rest wait their turn, holding only their body), so concurrent huge requests stay
bounded in memory as well as in time (item 3).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_WORKERS = 2


class Preprocessor:
    def __init__(self, workers: int = DEFAULT_WORKERS) -> None:
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="dvai-preprocess")
        # One semaphore per event loop (tests and restarts use more than one).
        self._slots: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}
        self._lock = threading.Lock()
        self.busy = 0  # jobs running now (read by tests and /metrics-style checks)

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self._lock:
            sem = self._slots.get(loop)
            if sem is None:
                for old in [lp for lp in self._slots if lp.is_closed()]:
                    del self._slots[old]
                sem = self._slots[loop] = asyncio.Semaphore(self.workers)
            return sem

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the pool, once a slot is free. Cancelling the caller while it
        waits gives the slot back; a job already running finishes on its thread."""
        async with self._semaphore():
            self.busy += 1
            try:
                return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
            finally:
                self.busy -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
