"""MLX imports of GGUF files, as the store sees them: ``<bridge cache>/mlx-imports/<name>/``.

The importer (``backends/mlx/gguf_import.py``) writes each folder with ``dvai_import.json``:
the source GGUF's path, size and mtime, and the importer's version. It never loads an import
again once the source is gone or changed, or once a newer importer has imported the same
source: such an import is *stale*, only disk space.

    scan_imports()  -> [MLXImport], newest first
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .locations import mlx_imports_dir

META = "dvai_import.json"


@dataclass(frozen=True)
class MLXImport:
    folder: Path
    source: Path | None  # the GGUF it was imported from (None: no record)
    version: int
    bytes: int
    why: str  # why it is stale: nothing will load it again ("" if it is current)


def _size(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _read(folder: Path) -> dict:
    try:
        return json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return {}


def _source_matches(meta: dict) -> str:
    """"" if the recorded source is still the file that was imported; else why not."""
    source = meta.get("source")
    if not source:
        return "no record of its source"
    try:
        stat = os.stat(source)
    except OSError:
        return f"its source {source} is gone"
    if stat.st_size != meta.get("size") or stat.st_mtime_ns != meta.get("mtime_ns"):
        return f"its source {source} has changed"
    return ""


def _ident(meta: dict) -> tuple:
    """The GGUF file as it was imported."""
    return meta.get("source"), meta.get("size"), meta.get("mtime_ns")


def _version(meta: dict) -> int:
    return int(meta.get("importer_version") or 0)


def scan_imports() -> list[MLXImport]:
    """Every complete import folder (temp folders of imports in progress are skipped)."""
    root = mlx_imports_dir()
    if not root.is_dir():
        return []
    metas = {p: _read(p) for p in root.iterdir()
             if p.is_dir() and not p.name.startswith(".") and (p / "config.json").is_file()}
    newest: dict[tuple, int] = {}
    for meta in metas.values():
        newest[_ident(meta)] = max(newest.get(_ident(meta), 0), _version(meta))
    found = []
    for folder, meta in metas.items():
        why = _source_matches(meta)
        if not why and newest[_ident(meta)] > _version(meta):
            why = f"importer version {newest[_ident(meta)]} imported its source again"
        source = meta.get("source")
        found.append(MLXImport(folder, Path(source) if source else None, _version(meta),
                               _size(folder), why))
    return sorted(found, key=lambda m: -(m.folder / "config.json").stat().st_mtime)


def import_folder_for(path: Path) -> Path | None:
    """The import folder ``path`` is (or is inside), or None."""
    root = Path(os.path.abspath(mlx_imports_dir()))
    absolute = Path(os.path.abspath(path))
    if root in absolute.parents:
        return root / absolute.relative_to(root).parts[0]
    return None
