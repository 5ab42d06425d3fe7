"""Byte counting for a download of several files, reported as ``download`` progress events.

``DownloadMeter`` keeps, per file, the furthest byte it has seen; the model's
``bytes_received`` is their sum. A file that restarts from zero (a server that ignored a
Range request) therefore never makes the count go back: events are monotonic, and the last
one says ``bytes_received == bytes_total``.

``meter.tqdm_class(name)`` is the same counter dressed as the tqdm class huggingface_hub
accepts (``hf_hub_download(tqdm_class=...)``), for the downloads the hub library runs itself.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from ..progress import ProgressEvent, ProgressHub

if TYPE_CHECKING:
    from typing import Self

EMIT_INTERVAL_S = 0.1


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class DownloadMeter:
    def __init__(
        self,
        label: str,
        total: int | None,
        progress: ProgressHub | None,
        interval_s: float = EMIT_INTERVAL_S,
    ) -> None:
        self.label, self.total, self.progress = label, total, progress
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._interval = interval_s
        self._last_emit = 0.0
        self._last_sent = -1

    @property
    def received(self) -> int:
        with self._lock:
            seen = sum(self._seen.values())
        return seen if self.total is None else min(seen, self.total)

    def set_total(self, total: int | None) -> None:
        """The size, once a server tells it (a plain URL has no listing to ask first)."""
        if total is not None and self.total is None:
            self.total = total

    def at(self, name: str, position: int) -> None:
        """File ``name`` now has ``position`` bytes on disk."""
        with self._lock:
            if position <= self._seen.get(name, 0):
                return
            self._seen[name] = position
            now = time.monotonic()
            if now - self._last_emit < self._interval:
                return
            self._last_emit = now
        self._emit()

    def done(self, name: str, size: int) -> None:
        self.at(name, size)

    def start(self) -> None:
        self._emit(force=True)

    def finish(self) -> None:
        with self._lock:
            if self.total is None:
                self.total = sum(self._seen.values())
            self._seen = {"*": self.total}  # every file is complete
        self._emit(force=True)

    def _emit(self, force: bool = False) -> None:
        if self.progress is None:
            return
        received = self.received
        with self._lock:
            if received == self._last_sent and not force:
                return
            if received < self._last_sent:
                return
            self._last_sent = received
        total = self.total
        if total is None:
            percent, of = None, ""
        else:
            percent = round(100.0 * received / total, 2) if total else 100.0
            of = f" of {human_bytes(total)}"
        self.progress.emit(
            ProgressEvent(
                "download",
                bytes_received=received,
                bytes_total=total,
                percent=percent,
                message=f"{self.label}: {human_bytes(received)}{of}",
            )
        )

    def tqdm_class(self, name: str) -> type:
        """A tqdm stand-in for huggingface_hub that feeds file ``name`` into this meter.

        huggingface_hub instantiates it itself (one bar per file), calls ``update(n)`` with
        the bytes written (and ``update_transfer(n)`` with the bytes received, which we skip:
        for Xet the two differ, and the file's bytes are what the total counts).
        """
        meter = self

        class _FileBar:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self.n = int(kwargs.get("initial") or 0)
                self.total = kwargs.get("total")
                self.disable = False
                self.format_dict: dict[str, Any] = {}
                meter.at(name, self.n)

            def update(self, n: float | None = 1) -> None:
                self.n += int(n or 0)
                meter.at(name, self.n)

            def update_transfer(self, n: float | None = 1) -> None:
                pass

            def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
                pass

            set_transfer_postfix_str = set_description = set_description_str = set_postfix_str

            def refresh(self, *args: Any, **kwargs: Any) -> None:
                pass

            def reset(self, total: float | None = None) -> None:
                self.n, self.total = 0, total

            def close(self) -> None:
                pass

            def __enter__(self) -> Self:
                return self

            def __exit__(self, *exc: object) -> None:
                pass

            @classmethod
            def get_lock(cls) -> threading.RLock:
                return _LOCK

            @classmethod
            def set_lock(cls, lock: Any) -> None:
                pass

        return _FileBar


_LOCK = threading.RLock()


class SilentBar:
    """A tqdm stand-in that shows nothing (for the hub calls that only link cached files)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.n, self.total, self.disable = 0, kwargs.get("total"), True
        self.format_dict: dict[str, Any] = {}

    def update(self, n: float | None = 1) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __iter__(self) -> Any:
        return iter(())

    @classmethod
    def get_lock(cls) -> threading.RLock:
        return _LOCK

    @classmethod
    def set_lock(cls, lock: Any) -> None:
        pass
