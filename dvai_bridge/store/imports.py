"""MLX imports of GGUF files, as the store sees them: ``<bridge cache>/mlx-imports/<name>/``.

The importer (``backends/mlx/gguf_import/``) writes each folder with ``dvai_import.json``:
the source GGUF's path, size and mtime, the importer's version, and each file it wrote with
its size and hashes (``integrity``). It never loads an import again once the source is gone or
changed, or once a newer importer has imported the same source: such an import is *stale*,
only disk space. An import whose files no longer match the record is *damaged*; the importer
makes it again on the next load.

An import is written into a hidden temp folder beside its final place, ``.<name>.tmp-<pid>-<id>``,
and renamed into place when complete. While it writes, the importer holds an OS file lock on
the sibling ``<temp folder>.lock`` (``temp_folder``); the OS drops the lock when the process
ends, however it ends. A hidden folder whose lock is free is a *leftover* of an import that did
not finish (a crash, a SIGKILL): nothing will load it, and ``remove`` deletes it.

    scan_imports()           -> [MLXImport], newest first, leftovers and imports in progress too
    check_import(folder)     -> "" if its files match the record, else why not
    record_files(folder)     -> the files record the importer stores in ``META``
    temp_folder(root, name)  -> context manager: a locked temp folder path for an import
    remove(folder)           -> delete an import folder (a leftover only while its lock is free)
    sweep_leftovers(root)    -> delete every leftover under ``root``
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import integrity
from .locations import mlx_imports_dir

META = "dvai_import.json"
LOCK_SUFFIX = ".lock"
UNFINISHED = "an import that did not finish (its process ended before it was complete)"


@dataclass(frozen=True)
class MLXImport:
    folder: Path
    source: Path | None  # the GGUF it was imported from (None: no record)
    version: int
    bytes: int
    why: str  # why it is stale: nothing will load it again ("" if it is current)
    damaged: str = ""  # how its files differ from what was written ("" if they match)
    complete: bool = True  # False: a temp folder (an import in progress, or a leftover)
    importing: bool = False  # a temp folder whose import is still running


def _size(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _read(folder: Path) -> dict:
    try:
        return json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return {}


def _source_matches(meta: dict) -> str:
    """ "" if the recorded source is still the file that was imported; else why not."""
    source = meta.get("source")
    if not source:
        return "no record of its source"
    try:
        stat = os.stat(source)
    except OSError:
        return f"its source {source} is gone"
    if stat.st_size != meta.get("size") or stat.st_mtime_ns != meta.get("mtime_ns"):
        return f"its source {source} has changed"
    return ""


def _ident(meta: dict) -> tuple:
    """The GGUF file as it was imported."""
    return meta.get("source"), meta.get("size"), meta.get("mtime_ns")


def _version(meta: dict) -> int:
    return int(meta.get("importer_version") or 0)


# -- integrity ---------------------------------------------------------------------------
def record_files(folder: Path) -> dict[str, dict[str, Any]]:
    """The record of every file in ``folder`` (but ``META``), for ``META``'s ``files``."""
    names = [p.name for p in folder.iterdir() if p.is_file() and p.name != META]
    return integrity.record(folder, names)


def check_import(folder: Path, *, full: bool | None = False) -> str:
    """ "" if the import's files match its record; else why not. ``full``: hash every byte
    (None: when the import is at most ``integrity.FULL_CHECK_MAX_BYTES``); else sizes and a
    sampled hash. An import without a files record (importer version 1) is not checked."""
    if not (folder / "config.json").is_file():
        return "config.json is missing"
    files = _read(folder).get("files")
    if not isinstance(files, dict):
        return ""
    if full is None:
        full = integrity.recorded_bytes(files) <= integrity.FULL_CHECK_MAX_BYTES
    return integrity.check(folder, files, full=full)


# -- temp folders and leftovers ----------------------------------------------------------
def _lock_path(temp: Path) -> Path:
    return temp.with_name(temp.name + LOCK_SUFFIX)


def is_temp(folder: Path) -> bool:
    return folder.name.startswith(".")


@contextmanager
def temp_folder(root: Path, name: str) -> Iterator[Path]:
    """A fresh temp folder path for an import of ``name`` (not created), locked while the
    block runs; on leaving, whatever is still at that path is deleted. Rename it into place
    inside the block."""
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    temp = root / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    lock = FileLock(str(_lock_path(temp)))
    lock.acquire(timeout=0)  # a fresh name: nobody else holds it
    try:
        yield temp
    finally:
        shutil.rmtree(temp, ignore_errors=True)
        lock.release()
        _lock_path(temp).unlink(missing_ok=True)


def _in_progress(temp: Path) -> bool:
    """Whether the import writing ``temp`` still runs (its lock is held)."""
    from filelock import FileLock, Timeout

    probe = FileLock(str(_lock_path(temp)))
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:  # a read-only cache: nobody can be importing into it
        return False
    with suppress(OSError):  # its owner is gone: the lock file is ours to remove
        _lock_path(temp).unlink(missing_ok=True)
    probe.release()
    return False


def _remove_leftover(temp: Path) -> bool:
    """Delete ``temp`` unless an import still writes it; whether it is gone."""
    from filelock import FileLock, Timeout

    probe = FileLock(str(_lock_path(temp)))
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return False
    try:
        shutil.rmtree(temp, ignore_errors=True)
        with suppress(OSError):
            _lock_path(temp).unlink(missing_ok=True)
    finally:
        probe.release()
    return not temp.exists()


def remove(folder: Path) -> bool:
    """Delete an import folder; a temp folder only while no import writes it. Whether it
    is gone."""
    if is_temp(folder):
        return _remove_leftover(folder)
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()


def _temp_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and is_temp(p))


def sweep_leftovers(root: Path) -> list[Path]:
    """Delete the leftovers of imports that did not finish under ``root``; the ones deleted.
    Lock files without a folder go too."""
    if not root.is_dir():
        return []
    gone = [p for p in _temp_folders(root) if _remove_leftover(p)]
    for lock in root.glob(f".*{LOCK_SUFFIX}"):
        temp = lock.with_name(lock.name.removesuffix(LOCK_SUFFIX))
        if not temp.exists():
            _in_progress(temp)  # removes the lock file when nobody holds it
    return gone


# -- scanning ----------------------------------------------------------------------------
def _when(folder: Path) -> float:
    try:
        return (folder / "config.json").stat().st_mtime
    except OSError:
        try:
            return folder.stat().st_mtime
        except OSError:
            return 0.0


def scan_imports() -> list[MLXImport]:
    """Every import folder: complete ones (stale or damaged ones marked), and the temp folders
    of imports in progress (``importing``) or left by imports that did not finish (stale)."""
    root = mlx_imports_dir()
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and not is_temp(p)]
    metas = {p: _read(p) for p in folders}
    newest: dict[tuple, int] = {}
    for meta in metas.values():
        newest[_ident(meta)] = max(newest.get(_ident(meta), 0), _version(meta))
    found = []
    for folder, meta in metas.items():
        why = _source_matches(meta)
        if not why and newest[_ident(meta)] > _version(meta):
            why = f"importer version {newest[_ident(meta)]} imported its source again"
        source = meta.get("source")
        found.append(
            MLXImport(
                folder,
                Path(source) if source else None,
                _version(meta),
                _size(folder),
                why,
                damaged=check_import(folder),
            )
        )
    for temp in _temp_folders(root):
        importing = _in_progress(temp)
        found.append(
            MLXImport(
                temp,
                None,
                0,
                _size(temp),
                "" if importing else UNFINISHED,
                complete=False,
                importing=importing,
            )
        )
    return sorted(found, key=lambda m: -_when(m.folder))


def import_folder_for(path: Path) -> Path | None:
    """The import folder ``path`` is (or is inside), or None."""
    root = Path(os.path.abspath(mlx_imports_dir()))
    absolute = Path(os.path.abspath(path))
    if root in absolute.parents:
        return root / absolute.relative_to(root).parts[0]
    return None
