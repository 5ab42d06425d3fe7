"""KV snapshots keyed by the token prefix they hold, under a byte budget, evicted LRU.

Backend-agnostic: a backend supplies how to measure, copy and trim its snapshots
(``SnapshotOps``). The API is narrow, after mlx-lm's ``LRUPromptCache``:

    cache.fetch_nearest(tokens) -> (snapshot or None, tokens still to prefill)
    cache.insert(tokens, snapshot)

``fetch_nearest`` hands out a copy, so the stored entry is never mutated by generation, and
always leaves at least one token to prefill (the model must see a token to predict the next).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

S = TypeVar("S")


class SnapshotOps(Protocol[S]):
    def nbytes(self, snapshot: S) -> int: ...
    def copy(self, snapshot: S) -> S: ...
    def trim(self, snapshot: S, n: int) -> bool:
        """Drop the last ``n`` positions in place; False if this snapshot cannot be trimmed."""
        ...


@dataclass
class _Entry(Generic[S]):
    snapshot: S
    nbytes: int


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PromptCache(Generic[S]):
    def __init__(
        self, ops: SnapshotOps[S], *, max_bytes: int, max_entries: int = 64, min_reuse: int = 8
    ) -> None:
        self.ops = ops
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.min_reuse = min_reuse
        self._entries: OrderedDict[tuple[int, ...], _Entry[S]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def fetch_nearest(self, tokens: Sequence[int]) -> tuple[S | None, list[int]]:
        """The snapshot sharing the longest prefix with ``tokens`` (trimmed to that prefix),
        and the tokens after it. ``(None, tokens)`` when nothing useful is cached."""
        tokens = list(tokens)
        limit = len(tokens) - 1  # leave one token to prefill
        with self._lock:
            ranked = sorted(
                ((min(_common_prefix(k, tokens), limit), k) for k in self._entries), reverse=True
            )
            for n, key in ranked:
                if n < self.min_reuse:
                    break
                snapshot = self.ops.copy(self._entries[key].snapshot)
                if n < len(key) and not self.ops.trim(snapshot, len(key) - n):
                    continue  # this kind of snapshot cannot be cut back; try a shorter one
                self._entries.move_to_end(key)
                return snapshot, tokens[n:]
        return None, tokens

    def insert(self, tokens: Sequence[int], snapshot: S) -> None:
        """Keep ``snapshot`` (KV for exactly ``tokens``). Entries that are a prefix of it
        are dropped: the longer one serves them too."""
        key = tuple(tokens)
        if len(key) < self.min_reuse:
            return
        size = self.ops.nbytes(snapshot)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            for other in [k for k in self._entries if len(k) < len(key) and key[: len(k)] == k]:
                self._bytes -= self._entries.pop(other).nbytes
            self._entries[key] = _Entry(snapshot, size)
            self._bytes += size
            while self._entries and (
                self._bytes > self.max_bytes or len(self._entries) > self.max_entries
            ):
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
