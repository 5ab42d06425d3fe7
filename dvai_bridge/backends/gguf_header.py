"""A GGUF file's header: its metadata and tensor directory, never its tensor data.

One reader for both backends: the llama backend sizes its context from the metadata before
llama.cpp allocates anything (``arrays=False``: the vocabulary is skipped, not decoded), and the
GGUF -> MLX importer reads everything, vocabulary included. The file is memory-mapped and only
the header's pages are touched, so a multi-GB file costs what its header costs.

Why not ``gguf.GGUFReader`` (ggml's own package, PyPI ``gguf``, 0.19): it builds a numpy view
for every item of every array, so the vocabulary alone takes seconds. Measured on the shared
2-core test box (``python benchmarks/gguf_header.py FILE...``, best of 3, two runs):
SmolLM2-135M Q4_1 (98 MB, 49k-token vocabulary) 0.06-0.11 s here (0.02 s with
``arrays=False``), 1.9-2.2 s with ``GGUFReader``; llama.cpp's ggml-vocab-llama-bpe.gguf (128k
tokens) 0.23-0.27 s here (0.05 s), 7.7-16 s with ``GGUFReader``. Both read the same metadata
(tests/backends/mlx/gguf_import/test_import.py checks it against ``gguf``). The llama backend
reads the metadata on every load and the importer once per file: the library would add seconds
to each. The layout read here is the one the ``gguf`` package and llama.cpp's ``gguf.c`` define
(versions 2 and 3, little-endian).
"""

from __future__ import annotations

import mmap
import os
import pathlib
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ModelLoadFailed

# ggml tensor type names, indexed by type id ("-" = retired ids).
_TYPE_NAMES = [
    *("F32", "F16", "Q4_0", "Q4_1", "-", "-", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K"),
    *("Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL"),
    *("IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16"),
    *("-", "-", "-", "TQ1_0", "TQ2_0", "-", "-", "-", "MXFP4"),
]

# GGUF metadata value types: scalars by struct format and numpy dtype (8 = string, 9 = array).
_SCALARS = dict(enumerate(("<B", "<b", "<H", "<h", "<I", "<i", "<f", "<?")))
_SCALARS |= {10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {k: np.dtype(v) for k, v in _SCALARS.items()}
_STRING, _ARRAY = 8, 9


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # MLX/numpy order (GGUF stores it reversed)
    type_name: str
    offset: int  # absolute, in the file


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]  # without array values when read with arrays=False
    tensors: dict[str, TensorInfo]


class _Reader:
    def __init__(self, buf: Any, arrays: bool) -> None:
        self.buf, self.pos, self.arrays = buf, 0, arrays

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        raw = bytes(self.buf[self.pos : self.pos + n])
        if len(raw) != n:
            raise ValueError("string runs past the end of the file")
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise ValueError(f"unknown metadata value type {kind}")
        item, count = self.scalar("<I"), self.scalar("<Q")
        if not self.arrays:
            self.skip(item, count)
            return None
        if item in _NUMPY:
            arr = np.frombuffer(self.buf, dtype=_NUMPY[item], count=count, offset=self.pos)
            self.pos += arr.nbytes
            return arr.tolist()
        return [self.value(item) for _ in range(count)]

    def skip(self, item: int, count: int) -> None:
        if item in _NUMPY:
            self.pos += _NUMPY[item].itemsize * count
        elif item == _STRING:
            for _ in range(count):
                n = self.scalar("<Q")  # read first: ``self.pos += self.scalar()`` loses its step
                self.pos += n
        elif item == _ARRAY:
            for _ in range(count):
                self.skip(self.scalar("<I"), self.scalar("<Q"))
        else:
            raise ValueError(f"unknown metadata value type {item}")
        if self.pos > len(self.buf):
            raise ValueError("array runs past the end of the file")


def read_gguf_header(path: str | os.PathLike[str], *, arrays: bool = True) -> GGUFHeader:
    """Metadata and tensor directory of a GGUF file (no tensor data is read). With
    ``arrays=False`` array values (the vocabulary, per-layer lists) are skipped and left out of
    ``metadata``. Raises ``ModelLoadFailed`` for anything that is not a whole GGUF v2/v3 file."""
    path = pathlib.Path(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if mm[:4] != b"GGUF":
                raise ModelLoadFailed(f"{path.name} is not a GGUF file (bad magic)")
            r = _Reader(mm, arrays)
            r.pos = 4
            version = r.scalar("<I")
            if version not in (2, 3):
                raise ModelLoadFailed(f"{path.name}: unsupported GGUF version {version}")
            n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
            metadata = {}
            for _ in range(n_kv):
                key = r.string()
                kind = r.scalar("<I")
                value = r.value(kind)
                if kind != _ARRAY or arrays:
                    metadata[key] = value
            infos = []
            for _ in range(n_tensors):
                name = r.string()
                dims = [r.scalar("<Q") for _ in range(r.scalar("<I"))]
                kind, offset = r.scalar("<I"), r.scalar("<Q")
                infos.append((name, tuple(reversed(dims)), _type_name(kind), offset))
            align = int(metadata.get("general.alignment", 32))
            data_start = (r.pos + align - 1) // align * align
            tensors = {n: TensorInfo(n, s, t, data_start + o) for n, s, t, o in infos}
            if any(t.offset > len(mm) for t in tensors.values()):
                raise ModelLoadFailed(f"{path.name}: truncated GGUF file (tensor data missing)")
    except ModelLoadFailed:
        raise
    except (OSError, ValueError, struct.error, MemoryError) as e:
        raise ModelLoadFailed(f"cannot read GGUF file {path}: {e}") from e
    return GGUFHeader(version, metadata, tensors)


def _type_name(kind: int) -> str:
    name = _TYPE_NAMES[kind] if kind < len(_TYPE_NAMES) else "-"
    return f"type{kind}" if name == "-" else name
