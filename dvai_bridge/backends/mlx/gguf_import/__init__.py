"""Import a llama-architecture GGUF file as an MLX (mlx-lm) checkpoint folder.

The weights are not dequantized: ``mlx.core.load`` already returns GGUF Q4_0/Q4_1/Q8_0 tensors as
MLX affine-quantized triples (``weight`` uint32, ``scales``, ``biases``; group size 32), which are
bit-exact with llama.cpp's blocks. They are renamed to the Hugging Face llama layout, the rows of
Q and K are un-permuted (llama.cpp's converter interleaves them for its RoPE), and mlx-lm's
per-layer ``quantization`` config records each layer's bits. The tokenizer is rebuilt from the
GGUF vocabulary (``tokenizer.py``). The header is read by ``backends/gguf_header.py``; the weights
and ``config.json`` are written by ``checkpoint.py`` and ``config.py``.

    import_gguf(path, out_dir)   -> out_dir, written atomically (temp sibling + rename)
    cached_import(path)          -> a folder under ~/.cache/dvai-bridge/mlx-imports/, reused
                                    while its files match the record written with them

Every import records each file's size and sha256 in ``dvai_import.json`` (``store.imports``);
``cached_import`` checks them before reusing a folder and imports again, with a warning naming
the folder, when they differ (a truncated or overwritten ``model.safetensors``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
import uuid

from ....errors import ModelLoadFailed
from ....store import imports
from .checkpoint import IMPORTER_VERSION, write_checkpoint

__all__ = ["cached_import", "import_gguf"]

log = logging.getLogger(__name__)


def _write_import(gguf_path: str | os.PathLike, tmp: pathlib.Path) -> None:
    path = pathlib.Path(gguf_path)
    if not path.is_file():
        raise ModelLoadFailed(f"GGUF file not found: {path}")
    try:
        write_checkpoint(path, tmp)
    except ModelLoadFailed:
        raise
    except Exception as e:
        raise ModelLoadFailed(f"cannot import {path.name} into {tmp.parent}: {e!r}") from e


def _set_aside(folder: pathlib.Path) -> None:
    """Move ``folder`` out of the way (a hidden sibling, deleted at once: a leftover if this
    process dies before it is gone)."""
    aside = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(folder, aside)
    except FileNotFoundError:  # another process moved it first
        return
    shutil.rmtree(aside, ignore_errors=True)


def import_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> pathlib.Path:
    """Convert a llama-architecture GGUF into an MLX checkpoint folder loadable by
    ``mlx_lm.load(out_dir)``. Atomic: writes into a temp sibling dir, then renames; an existing
    ``out_dir`` is replaced."""
    out = pathlib.Path(out_dir).absolute()
    with imports.temp_folder(out.parent, out.name) as tmp:
        _write_import(gguf_path, tmp)
        try:
            if out.exists():
                _set_aside(out)
            os.rename(tmp, out)
        except OSError as e:
            raise ModelLoadFailed(f"cannot move the import into {out}: {e}") from e
    return out


def default_cache_root() -> pathlib.Path:
    """``$DVAI_BRIDGE_CACHE/mlx-imports``, else ``~/.cache/dvai-bridge/mlx-imports``."""
    from dvai_bridge.store.locations import mlx_imports_dir

    return mlx_imports_dir()


def cache_key(gguf_path: str | os.PathLike) -> str:
    """Folder name of an import: file name, size, mtime and the importer version."""
    path = pathlib.Path(gguf_path)
    try:
        stat = path.stat()
    except OSError as e:
        raise ModelLoadFailed(f"cannot read GGUF file {path}: {e}") from e
    ident = f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0{IMPORTER_VERSION}"
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem)[:80]
    return f"{stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def cached_import(
    gguf_path: str | os.PathLike, cache_root: pathlib.Path | None = None
) -> pathlib.Path:
    """Import once and reuse. ``cache_root`` is the folder holding the imports (default
    ``default_cache_root()``). A folder whose files no longer match their record (sizes and a
    sampled sha256; every byte's sha256 up to ``integrity.FULL_CHECK_MAX_BYTES``) is imported
    again, with a warning naming it. Temp folders that crashed or killed imports left are
    deleted first. Concurrent callers may both convert; the first rename wins and the others
    use the winner's folder."""
    root = pathlib.Path(cache_root) if cache_root is not None else default_cache_root()
    name = cache_key(gguf_path)
    out = root / name
    if out.exists():
        damaged = imports.check_import(out, full=None)
        if not damaged:
            return out
        log.warning(
            "The MLX import %s is damaged (%s); importing %s again",
            out,
            damaged,
            pathlib.Path(gguf_path).name,
        )
        _set_aside(out)
    for left in imports.sweep_leftovers(root):
        log.info("Deleted %s, left by an import that did not finish", left)
    with imports.temp_folder(root, name) as tmp:
        _write_import(gguf_path, tmp)
        try:
            os.rename(tmp, out)
        except OSError:
            if imports.check_import(out):
                raise ModelLoadFailed(f"cannot store the import of {gguf_path} in {out}") from None
    return out
