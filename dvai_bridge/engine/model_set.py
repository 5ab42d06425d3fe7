"""Several models behind one server: each loaded on demand into its own engine, within limits.

A request leases the engine of the model it names (``acquire``): a loaded model is leased at
once; an unloaded one is loaded first, by the first request that wants it, while the others that
want it wait for that load (one load, never two). Loads run one at a time, so that each one's
memory (the process's RSS before and after) is measured and the budget is known.

Room is made before a load: while ``max_loaded`` models are loaded, or the loaded ones plus the
new one would pass ``budget_bytes``, the least recently used model that is not pinned is
unloaded, idle ones first; a model that still has requests finishes them first (new requests
for it wait and load it again afterwards). A model nobody used for its keep-alive (the set's
``idle_unload_s``, or what the last request asked for) is unloaded by a watcher thread. A model
that fails to load stays ``failed`` (its requests get the ``ModelLoadFailed``) until someone
loads it explicitly; the others keep serving.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import BridgeError, ModelLoadFailed
from .async_engine import AsyncEngine
from .scheduler import Scheduler

log = logging.getLogger(__name__)

UNLOADED, LOADING, LOADED, UNLOADING, FAILED = (
    "unloaded",
    "loading",
    "loaded",
    "unloading",
    "failed",
)


def process_rss() -> int:
    """This process's resident memory in bytes (Linux /proc; psutil elsewhere if present)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        try:
            import psutil

            return int(psutil.Process().memory_info().rss)
        except Exception:
            return 0


def machine_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):
        return 0


@dataclass(frozen=True)
class ModelEntry:
    name: str
    aliases: tuple[str, ...] = ()
    pinned: bool = False
    size_hint: int = 0  # bytes a first load is expected to take (its files), for the budget
    spec: Any = None  # what the loader needs (a ModelSpec)


@dataclass
class Slot:
    entry: ModelEntry
    state: str = UNLOADED
    error: BridgeError | None = None
    scheduler: Scheduler | None = None
    engine: AsyncEngine | None = None
    memory: int = 0  # measured at its last load
    load_s: float | None = None
    loads: int = 0
    inflight: int = 0
    last_used: float = 0.0
    keep_alive: float | None = None  # seconds; None: the set's idle_unload_s
    generation: int = 0  # bumped at each load

    @property
    def name(self) -> str:
        return self.entry.name


@dataclass
class Lease:
    """One request's hold on a loaded model; ``release()`` once it is done (idempotent)."""

    models: ModelSet
    slot: Slot
    engine: AsyncEngine
    generation: int
    _released: bool = field(default=False, repr=False)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.models._release(self.slot)


class ModelSet:
    def __init__(
        self,
        entries: Sequence[ModelEntry],
        load: Callable[[ModelEntry], Scheduler],
        *,
        max_loaded: int | None = None,
        budget_bytes: int | None = None,
        idle_unload_s: float | None = None,
        rss: Callable[[], int] = process_rss,
        clock: Callable[[], float] = time.monotonic,
        release: Callable[[], None] | None = None,
    ) -> None:
        """``release``: called after a model is freed, to hand the device allocator's cached
        buffers back (MLX keeps freed buffers for reuse)."""
        self.slots = {e.name: Slot(e) for e in entries}
        self.on_free: list[Callable[[str], None]] = []  # drop references before a model goes
        self._release_memory = release
        self._load, self._rss, self._clock = load, rss, clock
        self.max_loaded, self.budget_bytes = max_loaded, budget_bytes
        self.idle_unload_s = idle_unload_s
        self._cv = threading.Condition()
        self._load_lock = threading.Lock()  # one load (and its room-making) at a time
        self._closed = False
        self._watcher = threading.Thread(
            target=self._watch_idle, name="dvai-idle-unload", daemon=True
        )
        self._watcher.start()

    # -- leasing -----------------------------------------------------------------------
    async def acquire(self, name: str, keep_alive: float | None = None) -> Lease:
        """The loaded engine of ``name`` (loading it first if need be), leased."""
        slot = self.slots[name]
        with self._cv:
            if slot.state == LOADED:
                return self._lease(slot, keep_alive)
        return await asyncio.to_thread(self.acquire_blocking, name, keep_alive)

    def acquire_blocking(self, name: str, keep_alive: float | None = None) -> Lease:
        slot = self.slots[name]
        while True:
            with self._cv:
                while slot.state in (LOADING, UNLOADING):
                    self._cv.wait()
                if self._closed:
                    raise ModelLoadFailed("The server is stopping.")
                if slot.state == LOADED:
                    return self._lease(slot, keep_alive)
                if slot.state == FAILED:
                    assert slot.error is not None
                    raise slot.error
                slot.state = LOADING
            self._load_into(slot)

    def _lease(self, slot: Slot, keep_alive: float | None) -> Lease:
        slot.inflight += 1
        slot.last_used = self._clock()
        if keep_alive is not None:
            slot.keep_alive = keep_alive
        assert slot.engine is not None
        return Lease(self, slot, slot.engine, slot.generation)

    def _release(self, slot: Slot) -> None:
        with self._cv:
            slot.inflight -= 1
            slot.last_used = self._clock()
            self._cv.notify_all()

    # -- loading -----------------------------------------------------------------------
    def _load_into(self, slot: Slot) -> None:
        """Load ``slot`` (its state is LOADING, set by the caller); LOADED or FAILED after."""
        try:
            with self._load_lock:
                self._make_room(slot)
                before, start = self._rss(), time.monotonic()
                scheduler = self._load(slot.entry)
                took, grown = time.monotonic() - start, self._rss() - before
        except BaseException as exc:
            error = (
                exc
                if isinstance(exc, ModelLoadFailed)
                else ModelLoadFailed(
                    f"The model {slot.name!r} failed to load: "
                    f"{exc.message if isinstance(exc, BridgeError) else exc}"
                )
            )
            log.error("model %s failed to load: %s", slot.name, error.message)
            with self._cv:
                slot.state, slot.error = FAILED, error
                self._cv.notify_all()
            if not isinstance(exc, Exception):
                raise
            return
        log.info("model %s loaded in %.2fs (+%.0f MiB)", slot.name, took, grown / 2**20)
        with self._cv:
            slot.scheduler, slot.engine = scheduler, AsyncEngine(scheduler)
            slot.memory = grown if grown > 0 else slot.entry.size_hint
            slot.load_s = took
            slot.state, slot.error, slot.keep_alive = LOADED, None, None
            slot.loads += 1
            slot.generation += 1
            slot.last_used = self._clock()
            self._cv.notify_all()

    def _make_room(self, slot: Slot) -> None:
        need = slot.memory or slot.entry.size_hint
        while True:
            with self._cv:
                loaded = [s for s in self.slots.values() if s.state == LOADED]
                over_count = self.max_loaded is not None and len(loaded) >= self.max_loaded
                over_memory = (
                    self.budget_bytes is not None
                    and loaded
                    and sum(s.memory for s in loaded) + need > self.budget_bytes
                )
                if not (over_count or over_memory):
                    return
                victims = sorted(
                    (s for s in loaded if not s.entry.pinned),
                    key=lambda s: (s.inflight > 0, s.last_used),
                )
                if not victims:
                    log.warning(
                        "loading %s passes the model limits, but every loaded model is pinned",
                        slot.name,
                    )
                    return
                victim = victims[0]
                why = "max_loaded_models" if over_count else "the memory budget"
                log.info(
                    "unloading %s (least recently used) to make room for %s (%s)",
                    victim.name,
                    slot.name,
                    why,
                )
                victim.state = UNLOADING  # its new requests wait; running ones finish
                while victim.inflight:
                    self._cv.wait()
            self._free(victim)

    def _free(self, slot: Slot) -> None:
        """Close ``slot``'s engine (its state is UNLOADING and nothing runs on it)."""
        scheduler = slot.scheduler
        slot.scheduler = slot.engine = None
        for forget in self.on_free:
            forget(slot.name)
        if scheduler is not None:
            scheduler.close()
        del scheduler
        gc.collect()  # the weights go with the last reference to the backend
        if self._release_memory is not None:
            self._release_memory()
        with self._cv:
            slot.state = UNLOADED
            self._cv.notify_all()
        log.info("model %s unloaded", slot.name)

    # -- explicit control ----------------------------------------------------------------
    def load(self, name: str) -> Slot:
        """Load ``name`` now (a failed one is tried again); returns its slot."""
        slot = self.slots[name]
        with self._cv:
            if slot.state == FAILED:
                slot.state, slot.error = UNLOADED, None
        self.acquire_blocking(name).release()
        return slot

    def unload(self, name: str) -> bool:
        """Unload ``name`` once its running requests end; False if it was not loaded."""
        slot = self.slots[name]
        with self._cv:
            while slot.state in (LOADING, UNLOADING):
                self._cv.wait()
            if slot.state != LOADED:
                return False
            slot.state = UNLOADING
            while slot.inflight:
                self._cv.wait()
        self._free(slot)
        return True

    # -- idle unload ---------------------------------------------------------------------
    def _keep_alive(self, slot: Slot) -> float | None:
        return slot.keep_alive if slot.keep_alive is not None else self.idle_unload_s

    def _watch_idle(self) -> None:
        while True:
            with self._cv:
                if self._closed:
                    return
                self._cv.wait(0.25)
                now = self._clock()
                idle = [
                    s
                    for s in self.slots.values()
                    if s.state == LOADED
                    and not s.entry.pinned
                    and s.inflight == 0
                    and (k := self._keep_alive(s)) is not None
                    and k >= 0
                    and now - s.last_used >= k
                ]
                for s in idle:
                    s.state = UNLOADING
            for s in idle:
                log.info("model %s idle for %.1fs: unloading", s.name, self._keep_alive(s) or 0)
                self._free(s)

    # -- state ---------------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        with self._cv:
            out = []
            for s in self.slots.values():
                item: dict[str, Any] = {
                    "name": s.name,
                    "state": s.state,
                    "pinned": s.entry.pinned,
                    "loads": s.loads,
                }
                if s.entry.aliases:
                    item["aliases"] = list(s.entry.aliases)
                if s.state == FAILED and s.error is not None:
                    item["reason"] = s.error.message
                if s.state == LOADED and s.scheduler is not None:
                    m = s.scheduler.metrics
                    item.update(
                        backend=s.scheduler.backend.name,
                        model=s.scheduler.backend.model_id,
                        memory_bytes=s.memory,
                        queued=m.queue_depth,
                        running=m.running,
                    )
                    why = s.scheduler.health()
                    if why is not None:
                        item["reason"] = why
                if s.load_s is not None:
                    item["load_seconds"] = round(s.load_s, 3)
                out.append(item)
            return out

    def loaded(self) -> list[Slot]:
        with self._cv:
            return [s for s in self.slots.values() if s.state == LOADED]

    def close(self) -> None:
        """Stop the watcher and free every model (requests still running end with 503)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            slots = [s for s in self.slots.values() if s.scheduler is not None]
            for s in slots:
                s.state = UNLOADING
        self._watcher.join(5)
        for s in slots:
            self._free(s)
