"""GGUF references and metadata, without loading weights.

``resolve_gguf`` turns a model reference into a file: a ``.gguf`` path, ``org/repo/file.gguf``
(through the Hugging Face cache, downloaded unless offline), or nothing (the embedded
SmolLM2-135M-Instruct). ``read_metadata`` reads a file's key/value header (scalars and strings;
arrays are skipped), enough to size the context before llama.cpp allocates it.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

from ...errors import ModelLoadFailed
from ...progress import ProgressHub
from ...store.resolve import EMBEDDED_ID, embedded_default_gguf, hf_snapshot

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


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


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    n = _read(f, "<Q")
    return f.read(n).decode("utf-8", errors="replace")


def _skip_array(f: BinaryIO) -> None:
    kind, n = _read(f, "<I"), _read(f, "<Q")
    if kind == _STRING:
        for _ in range(n):
            f.seek(_read(f, "<Q"), 1)
    elif kind == _ARRAY:
        for _ in range(n):
            _skip_array(f)
    else:
        f.seek(struct.calcsize(_SCALARS[kind]) * n, 1)


def read_metadata(path: Path) -> dict[str, Any]:
    """Scalar and string metadata of a GGUF file (arrays are left out)."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelLoadFailed(f"{path} is not a GGUF file (bad magic).")
            version = _read(f, "<I")
            if version < 2:
                raise ModelLoadFailed(f"{path}: GGUF version {version} is too old.")
            _read(f, "<Q")  # tensor count
            n_kv = _read(f, "<Q")
            out: dict[str, Any] = {}
            for _ in range(n_kv):
                key = _string(f)
                kind = _read(f, "<I")
                if kind == _STRING:
                    out[key] = _string(f)
                elif kind == _ARRAY:
                    _skip_array(f)
                else:
                    out[key] = _read(f, _SCALARS[kind])
            return out
    except (OSError, ValueError, KeyError, struct.error) as exc:
        raise ModelLoadFailed(f"Cannot read the GGUF header of {path}: {exc}") from None
