"""GGUF files from plain URLs, in our GGUF cache.

    <gguf cache>/<sha256(url)[:16]>/<file name>.gguf     the file, once complete and checked
    <gguf cache>/<sha256(url)[:16]>/<file name>.gguf.incomplete   bytes so far (resumable)
    <gguf cache>/<sha256(url)[:16]>/source.json          url, sha256, size, etag, times

One folder per URL keeps the file's own name (the served model id is its stem) and lets two
URLs with the same file name live side by side. A given sha256 is checked after the download:
a mismatch deletes the file and raises ``ChecksumMismatch``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import ChecksumMismatch, DownloadFailed
from ..progress import ProgressEvent, ProgressHub
from .fetch import Cancelled, fetch, partial_path
from .locations import gguf_cache_dir, offline
from .meter import DownloadMeter

log = logging.getLogger(__name__)

SOURCE = "source.json"


def url_folder(url: str) -> Path:
    return gguf_cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16]


def file_name(url: str) -> str:
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or "model.gguf"
    return re.sub(r"[^\w.\-]", "_", name)


def cached_path(url: str) -> Path:
    return url_folder(url) / file_name(url)


def read_source(folder: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((folder / SOURCE).read_text()))
    except (OSError, ValueError):
        return {}


def _write_source(folder: Path, **fields: Any) -> None:
    data = {**read_source(folder), **fields}
    tmp = folder / f"{SOURCE}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, folder / SOURCE)


@contextmanager
def url_errors(url: str) -> Iterator[None]:
    """Translate HTTP failures of a plain download into ``DownloadFailed``."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        yield
    except (DownloadFailed, Cancelled):
        raise
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        code = {404: "file_not_found", 401: "not_authorized", 403: "not_authorized"}.get(
            status or 0, "download_failed"
        )
        raise DownloadFailed(
            f"Could not download {url}: HTTP {status}.", param="model", code=code
        ) from None
    except OfflineModeIsEnabled:
        raise DownloadFailed(
            f"{url} is not cached and HF_HUB_OFFLINE is set.", param="model", code="offline"
        ) from None
    except httpx2.HTTPError as exc:
        raise DownloadFailed(
            f"Cannot reach {url}: {exc}", param="model", code="network_unreachable"
        ) from None


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def ensure_url(
    url: str,
    *,
    sha256: str | None = None,
    progress: ProgressHub | None = None,
    refresh: bool = False,
) -> Path:
    """The cached GGUF for ``url``; downloaded (resuming a partial one) when missing."""
    folder, dest = url_folder(url), cached_path(url)
    source = read_source(folder)
    if dest.is_file() and not refresh:
        if not sha256 or source.get("sha256") == sha256:
            return dest
        if progress is not None:
            progress.emit(ProgressEvent("verify", message=f"Checking the sha256 of {dest.name}"))
        digest = _hash_file(dest)
        _write_source(folder, sha256=digest)
        if digest == sha256:
            return dest
        log.warning("%s: cached sha256 %s differs from %s; downloading again", url, digest, sha256)
        dest.unlink()
    if offline():
        raise DownloadFailed(
            f"{url} is not in the GGUF cache ({gguf_cache_dir()}) and HF_HUB_OFFLINE is set.",
            param="model",
            code="offline",
        )
    folder.mkdir(parents=True, exist_ok=True)
    _write_source(folder, url=url, started=time.time())
    meter = DownloadMeter(dest.name, None, progress)

    def on_response(total: int | None, etag: str | None) -> None:
        meter.set_total(total)
        meter.start()
        if etag:
            _write_source(folder, etag=etag)

    if refresh and dest.exists():
        dest.unlink()
    try:
        with url_errors(url):
            got = fetch(
                url,
                dest,
                sha256=sha256,
                hash_always=True,
                if_range=source.get("etag") if partial_path(dest).exists() else None,
                on_bytes=lambda pos: meter.at(dest.name, pos),
                on_response=on_response,
                label=dest.name,
            )
    except ChecksumMismatch:
        if not any(p for p in folder.iterdir() if p.name != SOURCE):
            shutil.rmtree(folder, ignore_errors=True)
        raise
    except Cancelled:
        raise DownloadFailed(
            f"Download of {url} was cancelled; it resumes on the next attempt.",
            param="model",
            code="cancelled",
        ) from None
    _write_source(
        folder, url=url, sha256=got.sha256, size=got.size, etag=got.etag, completed=time.time()
    )
    meter.set_total(got.size)
    meter.finish()
    if sha256 and progress is not None:
        progress.emit(
            ProgressEvent("verify", percent=100.0, message=f"sha256 of {dest.name} checks out")
        )
    return dest
