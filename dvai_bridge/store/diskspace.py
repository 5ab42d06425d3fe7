"""Disk space for downloads: checked before the first byte, and a full disk answered cleanly.

ensure_space(folder, need, label)   DownloadFailed (code ``disk_full``) naming the need and
                                    the free space, when ``folder``'s file system lacks it
is_disk_full(exc)                   ENOSPC / EDQUOT
disk_full(folder, label, ...)       the DownloadFailed for a write that hit a full disk
os_errors(label)                    context manager: any other file-system failure of a
                                    download -> DownloadFailed naming the path (no traceback)
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import BridgeError, DownloadFailed
from .meter import human_bytes

CODE = "disk_full"
_FULL = {errno.ENOSPC, errno.EDQUOT}


def _existing(folder: Path) -> Path:
    """``folder``, or its nearest ancestor that exists (where it will be created)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(_existing(folder)).free


def ensure_space(folder: Path, need: int, label: str) -> None:
    """Raise ``DownloadFailed`` (``disk_full``) unless ``need`` bytes fit under ``folder``."""
    if need <= 0:
        return
    try:
        free = free_bytes(folder)
    except OSError:  # cannot tell: let the writes find out
        return
    if need > free:
        raise DownloadFailed(
            f"Not enough disk space for {label}: it needs {human_bytes(need)} more and "
            f"{_existing(folder)} has {human_bytes(free)} free. Free some space (`dvai-bridge "
            "models ls` shows what the caches hold) and run it again.",
            param="model",
            code=CODE,
        )


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _FULL


def disk_full(folder: Path, label: str, written: int, total: int | None) -> DownloadFailed:
    try:
        free = human_bytes(free_bytes(folder))
    except OSError:
        free = "an unknown amount"
    of = f" of {human_bytes(total)}" if total else ""
    return DownloadFailed(
        f"The disk filled up while downloading {label}: {human_bytes(written)}{of} had been "
        f"written under {_existing(folder)}, which now has {free} free. The partial file was "
        "deleted so the disk is not left full; free some space and run it again.",
        param="model",
        code=CODE,
    )


@contextmanager
def os_errors(label: str) -> Iterator[None]:
    """File-system failures while fetching ``label`` as ``DownloadFailed`` (a full disk as
    ``disk_full``), never a bare ``OSError``."""
    try:
        yield
    except BridgeError:
        raise
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        if is_disk_full(exc):
            folder = Path(exc.filename).parent if exc.filename else Path.cwd()
            raise DownloadFailed(
                f"The disk is full: cannot write{where} while fetching {label}, "
                f"{human_bytes(free_bytes(folder))} free. Free some space and run it again.",
                param="model",
                code=CODE,
            ) from None
        raise DownloadFailed(
            f"File-system error while fetching {label}{where}: {exc.strerror or exc}", param="model"
        ) from None
