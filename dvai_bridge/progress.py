"""Start-up progress: download, verify, load, ready, error.

Observe it with a listener callback (``add_listener`` returns a handle whose ``remove()``
stops it) or as an async iterator (``async for event in hub.events(): ...``), which ends
after ``ready`` or ``error``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

Phase = Literal["download", "verify", "load", "ready", "error"]


@dataclass(frozen=True)
class ProgressEvent:
    phase: Phase
    bytes_received: int = 0
    bytes_total: int | None = None
    percent: float | None = None
    message: str = ""

    @property
    def final(self) -> bool:
        return self.phase in ("ready", "error")


Listener = Callable[[ProgressEvent], None]


class ListenerHandle:
    def __init__(self, hub: ProgressHub, listener: Listener) -> None:
        self._hub, self._listener = hub, listener

    def remove(self) -> None:
        self._hub._remove(self._listener)


class ProgressHub:
    """Fan-out of progress events to listeners; thread-safe to emit from any thread."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self.last: ProgressEvent | None = None

    def add_listener(self, listener: Listener) -> ListenerHandle:
        with self._lock:
            self._listeners.append(listener)
        return ListenerHandle(self, listener)

    def _remove(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def emit(self, event: ProgressEvent) -> None:
        self.last = event
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                log.exception("progress listener failed")

    async def events(self) -> AsyncIterator[ProgressEvent]:
        """Events from now on, until (and including) the next ``ready`` or ``error``."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[ProgressEvent] = asyncio.Queue()

        def forward(event: ProgressEvent) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        handle = self.add_listener(forward)
        try:
            while True:
                event = await queue.get()
                yield event
                if event.final:
                    return
        finally:
            handle.remove()
