"""GGUF references and metadata, without loading weights.

``resolve_gguf`` turns a model reference into a file: a ``.gguf`` path, ``org/repo/file.gguf``
(through the Hugging Face cache, downloaded unless offline), or nothing (the embedded
SmolLM2-135M-Instruct). ``read_metadata`` reads a file's key/value header (scalars and strings;
arrays are skipped; ``backends/gguf_header.py``), enough to size the context before llama.cpp
allocates it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import ModelLoadFailed
from ...progress import ProgressHub
from ...store.resolve import EMBEDDED_ID, embedded_default_gguf, hf_snapshot
from ..gguf_header import read_gguf_header


def resolve_gguf(ref: str | None, progress: ProgressHub | None = None) -> tuple[Path, str]:
    """The GGUF file for a reference, and the id to serve it under."""
    if ref is None:
        return embedded_default_gguf(), EMBEDDED_ID
    from ...store import resolve

    download_model = getattr(resolve, "download_model", None)  # the full reference grammar
    if download_model is not None:
        path = Path(download_model(ref, progress=progress))
    else:
        path = _resolve_simple(ref, progress)
    if not path.is_file() or path.suffix.lower() != ".gguf":
        raise ModelLoadFailed(
            f"{ref!r} is not a GGUF file; the llama backend serves .gguf models (an MLX "
            "checkpoint runs on backend='mlx').",
            param="model_path",
        )
    return path, path.stem


def _resolve_simple(ref: str, progress: ProgressHub | None) -> Path:
    path = Path(ref).expanduser()
    if path.exists():
        return path
    parts = ref.split("/")
    if len(parts) >= 3 and ref.lower().endswith(".gguf"):
        repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
        return hf_snapshot(repo, patterns=[filename], progress=progress) / filename
    raise ModelLoadFailed(
        f"Model {ref!r} not found: the llama backend takes a .gguf file path or "
        "org/repo/file.gguf.",
        param="model_path",
    )


def read_metadata(path: Path) -> dict[str, Any]:
    """Scalar and string metadata of a GGUF file (arrays are left out)."""
    return read_gguf_header(path, arrays=False).metadata
