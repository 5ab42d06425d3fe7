"""Hugging Face repos into the standard HF cache, with byte progress and resume.

A download is three steps, all through huggingface_hub's public API:

1. list: ``repo_info`` (revision -> commit) and ``list_repo_tree`` (files and sizes), so the
   total is known before the first byte and only the files a backend needs are fetched;
2. fetch the missing blobs, several files at once. Plain HTTP files go through
   ``fetch.fetch`` into ``blobs/<etag>.incomplete`` (the name huggingface_hub's cache tools
   know as a partial download), so a cut or an interrupted run resumes where it stopped.
   huggingface_hub 2.x discards its own partial files on failure; Xet-stored files go through
   ``hf_hub_download``, whose Xet client keeps fetched chunks in its own cache;
3. link: ``snapshot_download(revision=<commit>)`` finds every blob present and writes the
   snapshot symlinks, the tree listing and the refs, exactly as it would for its own downloads.

Offline (``HF_HUB_OFFLINE``, or the Hub unreachable) the cache answers alone; a model that is
not there completely is a ``DownloadFailed`` that says so.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ChecksumMismatch, DownloadFailed
from ..progress import ProgressEvent, ProgressHub
from .diskspace import ensure_space
from .fetch import Cancelled, fetch
from .locations import hf_cache_dir, hf_endpoint, offline
from .meter import DownloadMeter, SilentBar

log = logging.getLogger(__name__)

MAX_WORKERS = 8


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS files
    xet: bool
    oid: str = ""  # git blob id

    @property
    def etag(self) -> str:
        """The name of its blob in the HF cache, as the Hub's HEAD answer will give it."""
        return self.sha256 or self.oid


class _Unreachable(Exception):
    """The Hub could not be reached (no network, DNS, timeout)."""


def _is_commit(revision: str | None) -> bool:
    from huggingface_hub.file_download import REGEX_COMMIT_HASH

    return bool(revision) and bool(REGEX_COMMIT_HASH.fullmatch(str(revision)))


def storage_folder(repo_id: str, cache: Path | None = None) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return (cache or hf_cache_dir()) / repo_folder_name(repo_id=repo_id, repo_type="model")


@contextmanager
def hub_errors(ref: str) -> Iterator[None]:
    """Translate huggingface_hub / HTTP failures into ``DownloadFailed``, once, here."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = hf_endpoint() or "https://huggingface.co"
    login = "log in with `hf auth login` or set HF_TOKEN"
    try:
        yield
    except (DownloadFailed, Cancelled, _Unreachable):
        raise
    except GatedRepoError:
        raise DownloadFailed(
            f"{ref} is a gated repo: accept its terms on {endpoint}/{ref.split('@')[0]} with "
            f"your account, then {login}.",
            param="model",
            code="gated_repo",
        ) from None
    except RevisionNotFoundError:
        raise DownloadFailed(
            f"{ref}: no such revision on {endpoint}.", param="model", code="revision_not_found"
        ) from None
    except RemoteEntryNotFoundError:
        raise DownloadFailed(
            f"{ref}: no such file in the repo on {endpoint}.", param="model", code="file_not_found"
        ) from None
    except RepositoryNotFoundError:
        raise DownloadFailed(
            f"{ref}: no such model repo on {endpoint} (if it is private, {login}).",
            param="model",
            code="repo_not_found",
        ) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise DownloadFailed(
                f"{ref}: not authorized on {endpoint}; {login}.",
                param="model",
                code="repo_not_found",
            ) from None
        raise DownloadFailed(
            f"Could not download {ref}: HTTP {status}: {exc}", param="model"
        ) from None
    except (httpx2.ConnectError, httpx2.TimeoutException, OfflineModeIsEnabled) as exc:
        raise _Unreachable(str(exc) or type(exc).__name__) from None


# -- what is already here --------------------------------------------------------------
def local_snapshot(repo_id: str, revision: str | None, patterns: list[str] | None) -> Path | None:
    """The complete cached snapshot of ``repo_id@revision``, without touching the network."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=patterns,
                local_files_only=True,
                cache_dir=hf_cache_dir(),
                tqdm_class=SilentBar,
            )
        )
    except Exception:
        return None
    return folder if folder.is_dir() and any(folder.iterdir()) else None


def local_file(repo_id: str, revision: str | None, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, revision=revision, cache_dir=hf_cache_dir())
    return Path(found) if isinstance(found, str) else None


# -- download ----------------------------------------------------------------------------
def _xet_usable() -> bool:
    from huggingface_hub import constants

    return not constants.HF_HUB_DISABLE_XET and importlib.util.find_spec("hf_xet") is not None


def list_remote(repo_id: str, revision: str | None) -> tuple[str, list[RemoteFile]]:
    """(commit, files) of a repo revision. Raises through ``hub_errors``' classes."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=hf_endpoint())
    commit = revision if _is_commit(revision) else api.repo_info(repo_id, revision=revision).sha
    if not commit:
        raise DownloadFailed(f"The Hub returned no commit for {repo_id}.", param="model")
    files = [
        RemoteFile(
            f.path,
            int(f.lfs.size if f.lfs else f.size),
            f.lfs.sha256 if f.lfs else None,
            bool(f.xet_hash),
            f.blob_id or "",
        )
        for f in api.list_repo_tree(repo_id, revision=commit, recursive=True)
        if isinstance(f, RepoFile)
    ]
    return commit, files


def _write_ref(storage: Path, revision: str, commit: str) -> None:
    ref = storage / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    if ref.is_file() and ref.read_text() == commit:
        return
    tmp = ref.with_name(f"{ref.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(commit)
    os.replace(tmp, ref)


def download_snapshot(
    repo_id: str,
    revision: str | None,
    patterns: list[str] | None,
    *,
    progress: ProgressHub | None = None,
    label: str | None = None,
    check: Callable[[list[RemoteFile]], str | None] | None = None,
    use_hf_download: Callable[[RemoteFile], bool] | None = None,
) -> Path:
    """Fetch the files of ``repo_id@revision`` that match ``patterns``; the snapshot folder.

    ``check(files)`` (every file of the revision) may veto the download with a message (e.g.
    "not an MLX repo"), before any byte moves. ``use_hf_download(file)`` picks the files
    huggingface_hub downloads itself (default: Xet-stored files, when hf_xet is installed).
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
    from huggingface_hub.utils import WeakFileLock, build_hf_headers, filter_repo_objects

    ref = f"{repo_id}@{revision}" if revision else repo_id
    label = label or ref
    endpoint, cache = hf_endpoint(), hf_cache_dir()
    with hub_errors(ref):
        commit, files = list_remote(repo_id, revision)
    wanted = list(filter_repo_objects(files, allow_patterns=patterns, key=lambda f: f.path))
    problem = check(files) if check else (None if wanted else f"{ref} has no matching files.")
    if problem:
        raise DownloadFailed(problem, param="model", code="not_a_model")
    storage = storage_folder(repo_id, cache)
    (storage / "snapshots").mkdir(parents=True, exist_ok=True)  # scannable while partial
    snapshot = storage / "snapshots" / commit
    meter = DownloadMeter(label, sum(f.size for f in wanted), progress)
    todo = []
    need = 0  # bytes still to write: the whole model must fit before the first byte moves
    for f in wanted:
        if (snapshot / f.path).exists():
            meter.done(f.path, f.size)
            continue
        todo.append(f)
        need += f.size
        kept = storage / "blobs" / f"{f.etag}.incomplete"
        if f.etag and kept.is_file():  # bytes of an earlier attempt count from the start
            meter.at(f.path, kept.stat().st_size)
            need -= kept.stat().st_size
        elif f.etag and (storage / "blobs" / f.etag).is_file():
            need -= f.size  # the blob is here (another revision): only a link is missing
    ensure_space(storage / "blobs", need, label)
    meter.start()
    hf_download = use_hf_download or (lambda f: f.xet and _xet_usable())
    cancel = threading.Event()

    def fetch_one(f: RemoteFile) -> None:
        with hub_errors(f"{ref}/{f.path}"):
            if hf_download(f):
                hf_hub_download(
                    repo_id,
                    f.path,
                    revision=commit,
                    cache_dir=cache,
                    endpoint=endpoint,
                    tqdm_class=meter.tqdm_class(f.path),
                )
                meter.done(f.path, f.size)
                return
            url = hf_hub_url(repo_id, f.path, revision=commit, endpoint=endpoint)
            headers = build_hf_headers()
            meta = get_hf_file_metadata(url, headers=headers, endpoint=endpoint)
            if not meta.etag:
                raise DownloadFailed(f"{ref}/{f.path}: the Hub sent no ETag.", param="model")
            location = meta.location or url
            if urlsplit(location).netloc != urlsplit(url).netloc:
                headers.pop("authorization", None)  # a signed CDN URL: no token off the Hub
            blob = storage / "blobs" / meta.etag
            lock = cache / ".locks" / storage.name / f"{meta.etag}.lock"
            lock.parent.mkdir(parents=True, exist_ok=True)
            with WeakFileLock(lock):
                if not blob.exists():
                    fetch(
                        location,
                        blob,
                        headers=headers,
                        expected_size=meta.size or f.size,
                        on_bytes=lambda pos: meter.at(f.path, pos),
                        cancel=cancel,
                        label=f"{ref}/{f.path}",
                    )
            meter.done(f.path, f.size)

    try:
        if todo:
            with ThreadPoolExecutor(
                max_workers=min(MAX_WORKERS, len(todo)), thread_name_prefix="dvai-download"
            ) as pool:
                futures = [pool.submit(fetch_one, f) for f in todo]
                try:
                    for future in as_completed(futures):
                        future.result()
                except BaseException:
                    cancel.set()
                    for future in futures:
                        future.cancel()
                    raise
        with hub_errors(ref):
            folder = Path(
                snapshot_download(
                    repo_id,
                    revision=commit,
                    allow_patterns=patterns,
                    cache_dir=cache,
                    endpoint=endpoint,
                    tqdm_class=SilentBar,
                    max_workers=MAX_WORKERS,
                )
            )
    except _Unreachable as exc:
        raise DownloadFailed(
            f"Lost the connection to the Hub while downloading {ref} ({exc}); run the same "
            "command again to resume.",
            param="model",
            code="network_unreachable",
        ) from None
    except Cancelled:
        raise DownloadFailed(
            f"Download of {ref} was cancelled; it resumes on the next attempt.",
            param="model",
            code="cancelled",
        ) from None
    if not _is_commit(revision):
        _write_ref(storage, revision or "main", commit)
    meter.finish()
    return folder


def ensure_snapshot(
    repo_id: str,
    revision: str | None,
    patterns: list[str] | None,
    *,
    progress: ProgressHub | None = None,
    refresh: bool = False,
    check: Callable[[list[RemoteFile]], str | None] | None = None,
) -> Path:
    """The snapshot folder, from the cache when it is there (and ``refresh`` is off), else
    downloaded; offline or unreachable, the cache alone answers."""
    ref = f"{repo_id}@{revision}" if revision else repo_id
    if not refresh or offline():
        folder = local_snapshot(repo_id, revision, patterns)
        if folder is not None:
            return folder
        if offline():
            raise DownloadFailed(
                f"{ref} is not in the Hugging Face cache ({hf_cache_dir()}) and HF_HUB_OFFLINE "
                "is set; unset it to download, or pull the model on a connected machine.",
                param="model",
                code="offline",
            )
    try:
        return download_snapshot(repo_id, revision, patterns, progress=progress, check=check)
    except _Unreachable as exc:
        folder = local_snapshot(repo_id, revision, patterns)
        if folder is not None:
            log.warning("Hub unreachable (%s); using the cached %s", exc, ref)
            return folder
        raise DownloadFailed(
            f"Cannot reach the Hub ({hf_endpoint() or 'https://huggingface.co'}: {exc}) and "
            f"{ref} is not in the cache.",
            param="model",
            code="network_unreachable",
        ) from None


def ensure_file(
    repo_id: str,
    revision: str | None,
    filename: str,
    *,
    sha256: str | None = None,
    progress: ProgressHub | None = None,
    refresh: bool = False,
) -> Path:
    """One file of a repo (a GGUF), through the same steps as a snapshot."""
    ref = f"{repo_id}@{revision}/{filename}" if revision else f"{repo_id}/{filename}"
    path = None if refresh and not offline() else local_file(repo_id, revision, filename)
    if path is None:
        if offline():
            raise DownloadFailed(
                f"{ref} is not in the Hugging Face cache and HF_HUB_OFFLINE is set.",
                param="model",
                code="offline",
            )

        def check(files: list[RemoteFile]) -> str | None:
            found = next((f for f in files if f.path == filename), None)
            if found is None:
                return f"{ref}: no such file in the repo."
            if sha256 and found.sha256 and found.sha256 != sha256:
                raise ChecksumMismatch(
                    f"{ref}: the Hub lists sha256 {found.sha256}, expected {sha256}.",
                    param="sha256",
                )
            return None

        try:
            folder = download_snapshot(
                repo_id,
                revision,
                [glob.escape(filename)],
                progress=progress,
                label=ref,
                check=check,
            )
        except _Unreachable as exc:
            path = local_file(repo_id, revision, filename)
            if path is None:
                raise DownloadFailed(
                    f"Cannot reach the Hub ({exc}) and {ref} is not in the cache.",
                    param="model",
                    code="network_unreachable",
                ) from None
        else:
            path = folder / filename
    if sha256:
        verify_sha256(path, sha256, progress=progress, label=ref)
    return path


def verify_sha256(
    path: Path, sha256: str, *, progress: ProgressHub | None = None, label: str | None = None
) -> None:
    """Check a cached file's sha256. A blob named by its sha256 (an LFS file in the HF cache)
    checks by name; other files are hashed."""
    real = Path(os.path.realpath(path))
    if real.name == sha256:
        return
    import hashlib

    if progress is not None:
        progress.emit(ProgressEvent("verify", message=f"Checking the sha256 of {label or path}"))
    h = hashlib.sha256()
    with real.open("rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    if h.hexdigest() != sha256:
        raise ChecksumMismatch(
            f"{label or path}: sha256 is {h.hexdigest()}, expected {sha256}.", param="sha256"
        )
