"""Stored responses for ``previous_response_id``: bounded by count and bytes, LRU, with a TTL.

In memory by default; with ``directory`` each response is also a JSON file there, so stored
conversations outlive a restart (the index is rebuilt from the files, oldest first). An entry is
what a continuation needs: the conversation's input items (the previous ones included) and the
response object. ``store: false`` never reaches this class.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...defaults import RESPONSES_MAX, RESPONSES_MAX_MB, RESPONSES_TTL_S

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreLimits:
    max_entries: int = RESPONSES_MAX
    max_bytes: int = RESPONSES_MAX_MB << 20  # of JSON
    ttl_s: float = RESPONSES_TTL_S
    directory: str | None = None


@dataclass
class _Entry:
    size: int
    stored_at: float
    data: dict[str, Any] | None  # None: on disk only


class ResponseStore:
    """Thread-safe. ``put``/``get``/``delete`` touch the disk only when ``directory`` is set."""

    def __init__(self, limits: StoreLimits = StoreLimits(), clock: Any = time.time) -> None:
        self.limits = limits
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._dir = Path(limits.directory) if limits.directory else None
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
            self._load_index()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def _path(self, key: str) -> Path:
        assert self._dir is not None
        return self._dir / f"{key}.json"

    def _load_index(self) -> None:
        assert self._dir is not None
        files = sorted(self._dir.glob("resp_*.json"), key=lambda p: p.stat().st_mtime)
        for path in files:
            st = path.stat()
            self._entries[path.stem] = _Entry(st.st_size, st.st_mtime, None)
            self._bytes += st.st_size
        self._evict()

    def put(self, key: str, data: dict[str, Any]) -> bool:
        """Keep ``data`` under ``key``; False when it alone is over the byte limit."""
        raw = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
        if len(raw) > self.limits.max_bytes:
            log.warning(
                "response %s not stored: %d bytes, over the store's %d",
                key,
                len(raw),
                self.limits.max_bytes,
            )
            return False
        if self._dir is not None:
            tmp = self._path(key).with_suffix(".tmp")
            tmp.write_bytes(raw)
            os.replace(tmp, self._path(key))
        with self._lock:
            self._drop(key)
            self._entries[key] = _Entry(
                len(raw), self._clock(), None if self._dir is not None else data
            )
            self._bytes += len(raw)
            self._evict()
        return True

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self._clock() - entry.stored_at > self.limits.ttl_s:
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            data = entry.data
        if data is not None:
            return data
        try:
            return json.loads(self._path(key).read_bytes())
        except (OSError, ValueError):
            with self._lock:
                self._drop(key)
            return None

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._drop(key)

    def _drop(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._bytes -= entry.size
        if self._dir is not None:
            self._path(key).unlink(missing_ok=True)
        return True

    def _evict(self) -> None:
        now = self._clock()
        for key in [k for k, e in self._entries.items() if now - e.stored_at > self.limits.ttl_s]:
            self._drop(key)
        while self._entries and (
            len(self._entries) > self.limits.max_entries or self._bytes > self.limits.max_bytes
        ):
            self._drop(next(iter(self._entries)))  # least recently used
