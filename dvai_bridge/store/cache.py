"""What is cached, over both caches, and deleting it: plan first, then execute.

The HF cache is read with huggingface_hub's ``scan_cache_dir`` and emptied with its delete
strategies (``delete_revisions``, ``delete_files``), so refs, snapshots and shared blobs stay
consistent for every other tool that reads that cache. The GGUF cache is ours (``gguf``), and
so are the MLX imports of GGUF files (``imports``): deleting a GGUF deletes its imports too.

    list_cached_models()                 -> [CachedModel]
    delete_cached_model(ref, dry_run=..) -> DeletePlan (executed unless dry_run)
    prune_stale_imports(dry_run=..)      -> DeletePlan of the imports nothing will load again
                                            (stale, damaged, or left by an unfinished import)

A model that a running bridge serves (``inuse``) is refused with ``ModelInUse``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from ..errors import ModelInUse, ModelNotFound
from . import gguf, imports
from .inuse import running_servers, server_using
from .locations import gguf_cache_dir, hf_cache_dir
from .refs import ModelRef, parse_reference

log = logging.getLogger(__name__)

BACKEND_FOR = {"mlx": "mlx", "gguf": "llama"}


@dataclass(frozen=True)
class CachedModel:
    """One model in a cache. ``ref`` downloads it again (and deletes it)."""

    ref: str
    kind: Literal["mlx", "gguf"]
    backend: str  # the backend that reads this format natively (mlx also imports GGUF)
    bytes: int  # on disk, partial downloads included: what deleting it frees
    path: Path  # the folder or file a backend loads (a partial file while incomplete)
    last_used: datetime | None  # last access of its files, as the file system records it
    cache: Literal["hf", "gguf", "mlx-imports"]
    complete: bool = True  # False: only a partial download is there
    in_use: bool = False  # a running bridge serves it
    revisions: tuple[str, ...] = ()  # HF refs (or short commits) cached
    source: Path | None = None  # an MLX import: the GGUF it was converted from
    stale: str = ""  # an MLX import nothing will load again: why
    damaged: str = ""  # an MLX import whose files differ from what was written: how

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "kind": self.kind,
            "backend": self.backend,
            "bytes": self.bytes,
            "path": str(self.path),
            "last_used": self.last_used.isoformat() if self.last_used else None,
            "cache": self.cache,
            "complete": self.complete,
            "in_use": self.in_use,
            "revisions": list(self.revisions),
            "source": str(self.source) if self.source else None,
            "stale": self.stale or None,
            "damaged": self.damaged or None,
        }

    @property
    def prunable(self) -> bool:
        """An MLX import ``models prune`` deletes: stale, damaged or unfinished, not in use."""
        return self.cache == "mlx-imports" and bool(self.stale or self.damaged) and not self.in_use


@dataclass(frozen=True)
class DeletePlan:
    """What deleting ``ref`` removes. ``executed`` is False for a dry run."""

    ref: str
    models: tuple[CachedModel, ...]
    paths: tuple[Path, ...]
    bytes_freed: int
    executed: bool
    _strategy: Any = field(default=None, repr=False, compare=False)
    _folders: tuple[Path, ...] = field(default=(), repr=False, compare=False)  # rmtree these


def _when(timestamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, UTC) if timestamp else None


def _scan() -> Any:
    from huggingface_hub import scan_cache_dir

    folder = hf_cache_dir()
    if not folder.is_dir():
        return None
    return scan_cache_dir(folder)


def _revision_names(revision: Any) -> tuple[str, ...]:
    return tuple(sorted(revision.refs)) or (revision.commit_hash[:12],)


# -- listing -----------------------------------------------------------------------------
def _hf_models(info: Any, served: list[Path]) -> list[CachedModel]:
    if info is None:
        return []
    partials: dict[Path, int] = defaultdict(int)
    for partial in info.incomplete_files:
        partials[partial.file_path.parent.parent] += partial.size_on_disk
    models: list[CachedModel] = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        revisions = sorted(repo.revisions, key=lambda r: ("main" not in r.refs, -r.last_modified))
        ggufs: dict[str, list[tuple[Any, Any]]] = defaultdict(list)
        rest: list[tuple[Any, Any]] = []
        for revision in revisions:
            for f in revision.files:
                rel = f.file_path.relative_to(revision.snapshot_path).as_posix()
                (ggufs[rel] if rel.lower().endswith(".gguf") else rest).append((revision, f))
        partial = partials.get(repo.repo_path, 0)
        names = {f.file_path.name for _, f in rest}
        listed = len(models)
        if "config.json" in names and any(n.endswith(".safetensors") for n in names):
            blobs = {f.blob_path: f for _, f in rest}
            with_files = [r for r in revisions if any(rv is r for rv, _ in rest)]
            models.append(
                _hf_entry(
                    repo.repo_id,
                    "mlx",
                    with_files[0].snapshot_path,
                    sum(f.size_on_disk for f in blobs.values()) + partial,
                    blobs.values(),
                    with_files,
                    served,
                )
            )
        for rel, found in sorted(ggufs.items()):
            revision, f = found[0]
            ref = (
                repo.repo_id
                if "main" in revision.refs
                else f"{repo.repo_id}@{_revision_names(revision)[0]}"
            )
            models.append(
                _hf_entry(
                    f"{ref}/{rel}",
                    "gguf",
                    f.file_path,
                    f.size_on_disk,
                    [f],
                    [r for r, _ in found],
                    served,
                )
            )
        if partial and len(models) == listed:  # only a partial download of this repo
            models.append(
                CachedModel(
                    repo.repo_id,
                    "mlx",
                    "mlx",
                    partial,
                    repo.repo_path,
                    _when(repo.last_accessed),
                    "hf",
                    complete=False,
                )
            )
    return models


def _hf_entry(
    ref: str,
    kind: Literal["mlx", "gguf"],
    path: Path,
    size: int,
    files: Any,
    revisions: list[Any],
    served: list[Path],
) -> CachedModel:
    last = max((f.blob_last_accessed for f in files), default=None)
    names: list[str] = []
    for revision in revisions:
        for name in _revision_names(revision):
            if name not in names:
                names.append(name)
    return CachedModel(
        ref,
        kind,
        BACKEND_FOR[kind],
        size,
        path,
        _when(last),
        "hf",
        in_use=_served(path, served),
        revisions=tuple(names),
    )


def _served(path: Path, served: list[Path]) -> bool:
    targets = {Path(os.path.abspath(path)), Path(os.path.realpath(path))}
    return any(p == t or t in p.parents for p in served for t in targets)


def _gguf_models(served: list[Path]) -> list[CachedModel]:
    root = gguf_cache_dir()
    if not root.is_dir():
        return []
    models = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        source = gguf.read_source(folder)
        files = [p for p in folder.iterdir() if p.is_file() and p.name != gguf.SOURCE]
        complete = [p for p in files if p.suffix.lower() == ".gguf"]
        if not files:
            continue
        path = complete[0] if complete else files[0]
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        models.append(
            CachedModel(
                str(source.get("url") or path.name),
                "gguf",
                "llama",
                size,
                path,
                _when(path.stat().st_atime),
                "gguf",
                complete=bool(complete),
                in_use=_served(path, served),
            )
        )
    return models


def _atime(path: Path) -> float | None:
    try:
        return path.stat().st_atime
    except OSError:
        return None


def _import_models(served: list[Path]) -> list[CachedModel]:
    """The MLX imports; a temp folder is an incomplete one, ``in_use`` while its import
    runs (an import in progress is usually a bridge starting)."""
    models = []
    for found in imports.scan_imports():
        in_use = (
            found.importing
            or _served(found.folder, served)
            or (found.source is not None and _served(found.source, served))
        )
        last = _atime(found.folder / "config.json") or _atime(found.folder)
        models.append(
            CachedModel(
                str(found.folder),
                "mlx",
                "mlx",
                found.bytes,
                found.folder,
                _when(last),
                "mlx-imports",
                complete=found.complete,
                in_use=in_use,
                source=found.source,
                stale=found.why,
                damaged=found.damaged,
            )
        )
    return models


def list_cached_models() -> list[CachedModel]:
    """Every model in the HF cache (MLX checkpoints, GGUF files), in the GGUF cache, and the
    MLX imports of GGUF files."""
    served = [Path(os.path.abspath(s.path)) for s in running_servers() if s.path]
    return _hf_models(_scan(), served) + _gguf_models(served) + _import_models(served)


# -- deleting ----------------------------------------------------------------------------
def _gguf_folder_for(model: ModelRef) -> Path | None:
    if model.kind == "url" and model.url:
        folder = gguf.url_folder(model.url)
        return folder if folder.is_dir() else None
    if model.path is not None:
        root = gguf_cache_dir().resolve()
        path = model.path.resolve()
        if root in path.parents:
            return root / path.relative_to(root).parts[0]
    return None


def _hf_target(model: ModelRef, info: Any) -> tuple[Any, Any] | None:
    """(strategy, repo) deleting what ``model`` names in the HF cache."""
    if info is None:
        return None
    if model.kind in ("local-dir", "local-gguf") and model.path is not None:
        model = _ref_for_cache_path(model.path, info) or model
    if model.kind not in ("hf-repo", "hf-file"):
        return None
    repo = next(
        (r for r in info.repos if r.repo_type == "model" and r.repo_id == model.repo_id), None
    )
    if repo is None:
        return None
    revisions = list(repo.revisions)
    if model.revision:
        revisions = [
            r
            for r in revisions
            if model.revision in r.refs or r.commit_hash.startswith(model.revision)
        ]
    if model.kind == "hf-repo":
        if not model.revision:
            return (
                info.delete_revisions(*(r.commit_hash for r in revisions)) if revisions else None
            ), repo
        return (
            info.delete_revisions(*(r.commit_hash for r in revisions)) if revisions else False
        ), repo
    files = [
        f
        for r in revisions
        for f in r.files
        if f.file_path.relative_to(r.snapshot_path).as_posix() == model.filename
    ]
    return (info.delete_files(*files) if files else False), repo


def _ref_for_cache_path(path: Path, info: Any) -> ModelRef | None:
    """A path inside the HF cache (a snapshot, or a file of one), as a reference."""
    absolute = Path(os.path.abspath(path))
    for repo in info.repos:
        for revision in repo.revisions:
            snap = revision.snapshot_path
            if absolute == snap or snap in absolute.parents:
                rel = absolute.relative_to(snap).as_posix()
                rev = revision.commit_hash
                if rel == "." or not rel.lower().endswith(".gguf"):
                    return ModelRef("hf-repo", str(path), repo_id=repo.repo_id, revision=rev)
                return ModelRef(
                    "hf-file", str(path), repo_id=repo.repo_id, revision=rev, filename=rel
                )
    return None


def plan_delete(ref: str) -> DeletePlan:
    """What ``delete_cached_model(ref)`` would remove, with the MLX imports of any GGUF it
    removes; raises ``ModelNotFound``."""
    everything = list_cached_models()
    plan = _plan(ref, everything)
    victims = [
        m
        for m in everything
        if m.cache == "mlx-imports"
        and m.source is not None
        and m.path not in plan.paths
        and any(m.source == p or p in m.source.parents for p in plan.paths)
    ]
    if not victims:
        return plan
    return DeletePlan(
        plan.ref,
        plan.models + tuple(victims),
        plan.paths + tuple(m.path for m in victims),
        plan.bytes_freed + sum(m.bytes for m in victims),
        False,
        _strategy=plan._strategy,
        _folders=plan._folders + tuple(m.path for m in victims),
    )


def _plan(ref: str, everything: list[CachedModel]) -> DeletePlan:
    model = parse_reference(ref)
    imported = None
    if model.kind == "local-dir" and model.path is not None:
        imported = imports.import_folder_for(model.path)
    if imported is not None:
        hit = tuple(m for m in everything if m.cache == "mlx-imports" and m.path == imported)
        if hit:
            return DeletePlan(ref, hit, (imported,), hit[0].bytes, False, _folders=(imported,))
    folder = _gguf_folder_for(model)
    if folder is not None:
        files = [p for p in folder.iterdir() if p.is_file()]
        hit = tuple(m for m in everything if m.cache == "gguf" and m.path.parent == folder)
        return DeletePlan(
            ref, hit, (folder,), sum(p.stat().st_size for p in files), False, _folders=(folder,)
        )
    info = _scan()
    target = _hf_target(model, info)
    if target is not None:
        strategy, repo = target
        if strategy is False:
            raise ModelNotFound(
                f"{ref}: that revision or file is not cached. "
                "`dvai-bridge models ls` lists what is.",
                param="ref",
            )
        if strategy is None:  # a repo with only partial downloads
            partial = sum(m.bytes for m in everything if m.path == repo.repo_path)
            hit = tuple(m for m in everything if m.path == repo.repo_path)
            return DeletePlan(
                ref, hit, (repo.repo_path,), partial, False, _folders=(repo.repo_path,)
            )
        paths = tuple(
            sorted(
                {
                    *strategy.repos,
                    *strategy.snapshots,
                    *strategy.files,
                    *strategy.refs,
                    *strategy.blobs,
                }
            )
        )
        freed = strategy.expected_freed_size
        if repo.repo_path in strategy.repos:
            freed += sum(
                p.size_on_disk
                for p in info.incomplete_files
                if p.file_path.parent.parent == repo.repo_path
            )
        hit = tuple(
            m
            for m in everything
            if m.cache == "hf" and any(m.path == p or p in m.path.parents for p in paths)
        )
        return DeletePlan(ref, hit, paths, freed, False, _strategy=strategy)
    if model.kind in ("local-dir", "local-gguf"):
        raise ModelNotFound(
            f"{model.path} is not in a model cache; dvai-bridge deletes only what it downloaded.",
            param="ref",
        )
    raise ModelNotFound(
        f"{model.canonical} is not cached. `dvai-bridge models ls` lists what is.", param="ref"
    )


def delete_cached_model(ref: str, *, dry_run: bool = False) -> DeletePlan:
    """Delete a cached model (all of a repo's revisions, one ``@revision``, one GGUF file, or
    a URL's GGUF). Returns the plan; with ``dry_run`` nothing is deleted. Raises
    ``ModelInUse`` if a running bridge serves it, ``ModelNotFound`` if it is not cached."""
    plan = plan_delete(ref)
    refs = {m.ref for m in plan.models} | {parse_reference(ref).canonical}
    sources = [m.source for m in plan.models if m.cache == "mlx-imports" and m.source]
    importing = next(
        (m for m in plan.models if m.cache == "mlx-imports" and not m.complete and m.in_use), None
    )
    if importing is not None:
        raise ModelInUse(
            f"{importing.path} is an MLX import in progress; let it finish.", param="ref"
        )
    server = server_using([*plan.paths, *sources], refs)
    if server is not None:
        raise ModelInUse(
            f"{ref} is in use: the bridge at {server.base_url} (pid {server.pid}) serves it. "
            "Stop that bridge first.",
            param="ref",
        )
    if dry_run:
        return plan
    return _execute(plan)


def _execute(plan: DeletePlan) -> DeletePlan:
    if plan._strategy is not None:
        plan._strategy.execute()
    for folder in plan._folders:
        if imports.import_folder_for(folder) == Path(os.path.abspath(folder)):
            imports.remove(folder)  # a temp folder only if its import is not running
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return DeletePlan(plan.ref, plan.models, plan.paths, plan.bytes_freed, True)


def prune_stale_imports(*, dry_run: bool = False) -> DeletePlan:
    """Delete the MLX imports nothing will load again: stale ones (source gone or changed, or
    imported again by a newer importer), damaged ones (files differ from what was written;
    the next load imports again) and the temp folders of imports that did not finish. Kept:
    those a running bridge serves, and imports in progress."""
    victims = tuple(m for m in list_cached_models() if m.prunable)
    folders = tuple(m.path for m in victims)
    plan = DeletePlan(
        "stale MLX imports",
        victims,
        folders,
        sum(m.bytes for m in victims),
        False,
        _folders=folders,
    )
    return plan if dry_run else _execute(plan)
