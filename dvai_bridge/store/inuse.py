"""Which models running bridges serve, across processes: a lease per running bridge.

    <our cache>/serving/<pid>-<id>.json   {"pid", "ref", "path", "base_url", "started"}
    <our cache>/serving/<pid>-<id>.lock   held (an OS file lock) while the bridge serves

A bridge takes a lease when it starts serving and gives it back when it stops. The lock is the
proof of life: the OS drops it when the process ends, however it ends, so a lease whose lock
can be taken is stale (a crashed bridge) and is swept away; a recycled pid cannot fool it.
``delete_cached_model`` asks ``running_servers()`` before it deletes anything.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import BridgeError
from .locations import serving_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunningServer:
    pid: int
    ref: str | None  # the model reference as given (None: the embedded default)
    path: Path | None  # its files on this machine
    base_url: str
    started: float


class ServingLease:
    """Held by a serving bridge; ``release()`` (idempotent) gives it back."""

    def __init__(self, ref: str | None, path: Path | None, base_url: str) -> None:
        from filelock import FileLock

        folder = serving_dir()
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = path
        self._json = folder / f"{name}.json"
        self._lock = FileLock(str(folder / f"{name}.lock"))
        self._lock.acquire(timeout=5)
        record = {
            "pid": os.getpid(),
            "ref": ref,
            "path": str(path) if path else None,
            "base_url": base_url,
            "started": time.time(),
        }
        tmp = folder / f".{name}.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self._json)

    def release(self) -> None:
        if not self._lock.is_locked:
            return
        self._json.unlink(missing_ok=True)
        lock_file = Path(self._lock.lock_file)
        self._lock.release()
        lock_file.unlink(missing_ok=True)


def take_lease(ref: str | None, base_url: str) -> ServingLease | None:
    """A lease for a bridge that now serves ``ref``; None (and a warning) if the registry
    cannot be written: serving matters more than protecting the cache."""
    from .resolve import locate_model

    try:
        path = locate_model(ref)
        return ServingLease(ref, Path(os.path.abspath(path)) if path else None, base_url)
    except Exception as exc:
        log.warning("Could not register the served model in %s: %s", serving_dir(), exc)
        return None


def running_servers() -> list[RunningServer]:
    """Every bridge serving on this machine now (stale leases are removed on the way)."""
    from filelock import FileLock, Timeout

    folder = serving_dir()
    if not folder.is_dir():
        return []
    found = []
    for record_file in sorted(folder.glob("*.json")):
        lock_file = record_file.with_suffix(".lock")
        probe = FileLock(str(lock_file))
        try:
            probe.acquire(timeout=0)
        except Timeout:
            alive = True
        else:
            alive = False
            record_file.unlink(missing_ok=True)
            probe.release()
            lock_file.unlink(missing_ok=True)
        if not alive:
            continue
        try:
            data = json.loads(record_file.read_text())
        except (OSError, ValueError):
            continue
        found.append(
            RunningServer(
                int(data.get("pid", 0)),
                data.get("ref"),
                Path(data["path"]) if data.get("path") else None,
                str(data.get("base_url", "")),
                float(data.get("started", 0.0)),
            )
        )
    return found


def _under(path: Path, target: Path) -> bool:
    return path == target or target in path.parents


def server_using(targets: list[Path], canonical_refs: set[str]) -> RunningServer | None:
    """The running bridge whose model lives at (or under) one of ``targets``, or whose
    reference is one of ``canonical_refs``; None if no bridge uses them."""
    from .refs import parse_reference

    wanted = [Path(os.path.abspath(t)) for t in targets]
    wanted += [Path(os.path.realpath(t)) for t in targets]
    for server in running_servers():
        if server.path is not None:
            mine = {Path(os.path.abspath(server.path)), Path(os.path.realpath(server.path))}
            if any(_under(p, t) for p in mine for t in wanted):
                return server
        if server.ref and canonical_refs:
            try:
                if parse_reference(server.ref).canonical in canonical_refs:
                    return server
            except BridgeError:
                pass
    return None
