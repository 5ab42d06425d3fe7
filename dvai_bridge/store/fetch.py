"""One file over HTTP, resumable across connection cuts and across attempts.

Bytes go to ``<dest>.incomplete``, which stays on disk when the download stops (a cut that
outlasts the retries, Ctrl-C, a crash); the next attempt asks for the rest with a Range
request. Only a file whose size (and sha256, when one is expected) checks out is renamed to
``dest``: nothing at ``dest`` is ever half a file.

Before writing, the free space of ``dest``'s file system is checked against the bytes still
to come (the server's Content-Length): too little is a ``DownloadFailed`` (``disk_full``) and
nothing is written. A disk that fills up anyway (no Content-Length, or another writer) is the
same error, and the ``.incomplete`` file is deleted so the disk is not left full.

The HTTP client is huggingface_hub's shared session (``get_session()``), so proxies, client
factories and ``HF_HUB_OFFLINE`` apply to these downloads as they do to the hub's own.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from ..errors import ChecksumMismatch, DownloadFailed
from .diskspace import disk_full, ensure_space, is_disk_full

log = logging.getLogger(__name__)

CHUNK = 1 << 20
RETRIES = 5  # consecutive failures without a byte of progress
BACKOFF_S = 0.5
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
PARTIAL_SUFFIX = ".incomplete"
RETRY_STATUS = (408, 429, 500, 502, 503, 504)


class Cancelled(Exception):
    """The download was asked to stop; what arrived stays in the ``.incomplete`` file."""


class _ShortBody(Exception):
    """The response ended before the file did (retried, resuming)."""


@dataclass(frozen=True)
class Fetched:
    path: Path
    size: int
    sha256: str | None
    etag: str | None


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PARTIAL_SUFFIX)


def _open_partial(part: Path, mode: Literal["ab", "wb"]) -> BinaryIO:
    """The ``.incomplete`` file, opened for the bytes to come (tests wrap it to fill a disk)."""
    return part.open(mode)


def _hash_prefix(path: Path, size: int) -> hashlib._Hash:
    h = hashlib.sha256()
    with path.open("rb") as f:
        left = size
        while left > 0:
            chunk = f.read(min(CHUNK * 8, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h


def _total_size(headers: Mapping[str, str], position: int) -> int | None:
    get = headers.get
    content_range = get("Content-Range")
    if content_range and "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = get("Content-Length")
    return position + int(length) if length is not None else None


def fetch(
    url: str,
    dest: Path,
    *,
    headers: dict[str, str] | None = None,
    expected_size: int | None = None,
    sha256: str | None = None,
    hash_always: bool = False,
    if_range: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
    on_response: Callable[[int | None, str | None], None] | None = None,
    cancel: threading.Event | None = None,
    retries: int | None = None,
    backoff_s: float | None = None,
    label: str | None = None,
) -> Fetched:
    """Download ``url`` to ``dest``, resuming from ``dest.incomplete`` if it exists.

    ``on_bytes(position)`` is called as bytes land. ``sha256`` (hex) is checked at the end: a
    mismatch deletes the bytes and raises ``ChecksumMismatch``. ``hash_always`` computes the
    sha256 even when none is expected (returned in ``Fetched``). ``if_range`` (an ETag) makes
    the server send the whole file again if it changed since the partial bytes arrived.
    ``on_response(total, etag)`` is called when a response starts, with the file's full size
    when the server tells it.
    """
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from huggingface_hub.utils import get_session, hf_raise_for_status

    label = label or dest.name
    retries = RETRIES if retries is None else retries
    backoff_s = BACKOFF_S if backoff_s is None else backoff_s
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest)
    want_hash = bool(sha256) or hash_always
    failures = 0
    etag: str | None = None
    timeout = httpx2.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    while True:
        position = part.stat().st_size if part.exists() else 0
        if expected_size is not None and position > expected_size:
            part.unlink()
            position = 0
        hasher = (
            _hash_prefix(part, position)
            if want_hash and position
            else (hashlib.sha256() if want_hash else None)
        )
        if on_bytes and position:
            on_bytes(position)
        if expected_size is not None and position == expected_size and expected_size > 0:
            break  # every byte is here already; only the checks are left
        request_headers = {**(headers or {}), "Accept-Encoding": "identity"}
        if position:
            request_headers["Range"] = f"bytes={position}-"
            if if_range:
                request_headers["If-Range"] = if_range
        progressed = False
        try:
            with get_session().stream(
                "GET", url, headers=request_headers, timeout=timeout
            ) as response:
                if response.status_code == 416 and position:
                    part.unlink()  # the partial bytes do not fit the file; start over
                    continue
                hf_raise_for_status(response)
                etag = response.headers.get("ETag")
                if position and response.status_code != 206:
                    log.info("%s: the server sent the whole file again; restarting", label)
                    position = 0
                    hasher = hashlib.sha256() if want_hash else None
                total = _total_size(response.headers, position)
                if expected_size is None:
                    expected_size = total
                size = total if total is not None else expected_size
                if size is not None:
                    ensure_space(part.parent, size - position, label)
                if on_response:
                    on_response(total, etag)
                mode: Literal["ab", "wb"] = "ab" if position else "wb"
                try:
                    with _open_partial(part, mode) as out:
                        for chunk in response.iter_bytes():
                            out.write(chunk)
                            if hasher is not None:
                                hasher.update(chunk)
                            position += len(chunk)
                            progressed = True
                            if on_bytes:
                                on_bytes(position)
                            if cancel is not None and cancel.is_set():
                                raise Cancelled(label)
                except OSError as exc:
                    if not is_disk_full(exc):
                        raise
                    part.unlink(missing_ok=True)
                    raise disk_full(part.parent, label, position, size) from None
            if expected_size is None or position == expected_size:
                break
            raise _ShortBody(f"{label}: got {position} bytes, expected {expected_size}.")
        except (httpx2.TransportError, _ShortBody, HfHubHTTPError) as exc:
            if isinstance(exc, httpx2.ProxyError):
                raise DownloadFailed(f"Proxy error while downloading {label}: {exc}") from None
            if isinstance(exc, HfHubHTTPError) and exc.response.status_code not in RETRY_STATUS:
                raise
            failures = 0 if progressed else failures + 1
            if failures > retries:
                reason = (str(exc) or type(exc).__name__).splitlines()[0]
                raise DownloadFailed(
                    f"Download of {label} failed after {retries} retries: {reason}. The bytes "
                    f"received so far are kept in {part} and the next attempt resumes "
                    "from there."
                ) from None
            log.warning(
                "%s: %s; resuming in %.1fs",
                label,
                (str(exc) or type(exc).__name__).splitlines()[0],
                backoff_s * max(failures, 1),
            )
            if cancel is not None and cancel.wait(backoff_s * max(failures, 1)):
                raise Cancelled(label) from None
            if cancel is None:
                time.sleep(backoff_s * max(failures, 1))
        except OfflineModeIsEnabled:
            raise DownloadFailed(
                f"{label} is not downloaded and HF_HUB_OFFLINE is set.", param="model"
            ) from None

    digest = hasher.hexdigest() if hasher is not None else None
    if sha256 and digest != sha256:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"{label}: sha256 is {digest}, expected {sha256}. The file was deleted.", param="sha256"
        )
    os.replace(part, dest)
    return Fetched(dest, position, digest, etag)
