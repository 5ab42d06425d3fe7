"""Command line for the model store: ``pull``, ``models ls``, ``models rm``; and the download
bar that ``pull`` and ``serve``'s first start share.

    dvai-bridge pull mlx-community/Llama-3.2-1B-Instruct-4bit
    dvai-bridge pull https://example.com/model.gguf --sha256 <hex>
    dvai-bridge models ls [--json]
    dvai-bridge models rm mlx-community/Llama-3.2-1B-Instruct-4bit [--dry-run]
    dvai-bridge models prune [--dry-run]
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import click

from .errors import BridgeError
from .progress import ProgressEvent
from .store.meter import human_bytes

LABEL_WIDTH = 48


class DownloadBar:
    """A progress listener: ``download`` events drive a progress bar on stderr (bytes, rate,
    ETA); any other event closes the bar and goes to ``fallback``."""

    def __init__(self, fallback: Callable[[ProgressEvent], None] | None = None) -> None:
        self.fallback = fallback
        self._progress: Any = None
        self._task: Any = None
        self._lock = threading.Lock()

    def __call__(self, event: ProgressEvent) -> None:
        if event.phase != "download":
            self.close()
            if self.fallback is not None:
                self.fallback(event)
            return
        with self._lock:
            if self._progress is None:
                self._start(event)
            self._progress.update(
                self._task, completed=event.bytes_received, total=event.bytes_total
            )

    def _start(self, event: ProgressEvent) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        label = event.message.rsplit(": ", 1)[0] or "download"
        if len(label) > LABEL_WIDTH:
            label = "…" + label[-(LABEL_WIDTH - 1) :]
        console = Console(stderr=True)
        if not console.is_terminal:  # a log: one line per bar, never wrapped
            console = Console(stderr=True, width=max(console.width, 160))
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            label, total=event.bytes_total, completed=event.bytes_received
        )

    def close(self) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None


def download_bar(fallback: Callable[[ProgressEvent], None] | None = None) -> DownloadBar:
    return DownloadBar(fallback)


def _fail(exc: BridgeError) -> None:
    click.echo(f"error: {exc.message}", err=True)
    sys.exit(1)


@click.command()
@click.argument("ref")
@click.option("--sha256", default=None, help="Expected sha256 of a .gguf (hex).")
def pull(ref: str, sha256: str | None) -> None:
    """Download a model into the cache (and update it to the newest revision).

    REF is an HF repo id (org/name[@revision]), org/name[@revision]/file.gguf, or a URL to a
    .gguf (optionally ending in #sha256=HEX). An interrupted download resumes.
    """
    from .store import download_model

    bar = DownloadBar(lambda e: click.echo(f"[{e.phase}] {e.message}", err=True))
    try:
        path = download_model(ref, sha256=sha256, progress=bar, refresh=True)
    except BridgeError as exc:
        bar.close()
        _fail(exc)
    except KeyboardInterrupt:
        bar.close()
        click.echo("Interrupted; run the same command again to resume.", err=True)
        sys.exit(130)
    bar.close()
    click.echo(str(path))


@click.group()
def models() -> None:
    """List and delete cached models (HF cache, GGUF cache, MLX imports of GGUF files)."""


@models.command("ls")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
def models_ls(as_json: bool) -> None:
    """List every cached model: reference, kind, size, last use, location."""
    from .store import list_cached_models

    found = list_cached_models()
    if as_json:
        click.echo(json.dumps([m.to_json() for m in found], indent=2))
        return
    if not found:
        click.echo("No cached models.")
        return
    rows = [("REF", "KIND", "BACKEND", "SIZE", "LAST USED", "PATH")]
    for m in found:
        notes = _notes(m)
        ref = f"{m.ref} ({', '.join(notes)})" if notes else m.ref
        used = m.last_used.astimezone().strftime("%Y-%m-%d %H:%M") if m.last_used else "-"
        rows.append((ref, m.kind, m.backend, human_bytes(m.bytes), used, str(m.path)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [
            cell.rjust(w) if i == 3 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=False))
        ]
        click.echo("  ".join([*cells, row[-1]]))
    click.echo(f"{len(found)} model(s), {human_bytes(sum(m.bytes for m in found))} in all.")
    prunable = [m for m in found if m.prunable]
    if prunable:
        kinds = Counter(
            "unfinished" if not m.complete else "damaged" if m.damaged else "stale"
            for m in prunable
        )
        counts = ", ".join(
            f"{kinds[k]} {k}" for k in ("stale", "damaged", "unfinished") if kinds[k]
        )
        click.echo(
            f"{counts} MLX import(s) ({human_bytes(sum(m.bytes for m in prunable))}): "
            "`dvai-bridge models prune` deletes them."
        )


def _notes(m: Any) -> list[str]:
    """What ``models ls`` says after a model's reference."""
    if m.cache == "mlx-imports" and not m.complete:
        return ["incomplete import, in progress" if m.in_use else "incomplete import"]
    return [
        n
        for n, on in (
            ("partial", not m.complete),
            ("in use", m.in_use),
            ("damaged import", bool(m.damaged)),
            ("stale import", bool(m.stale)),
        )
        if on
    ]


@models.command("rm")
@click.argument("ref")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted and freed.")
def models_rm(ref: str, dry_run: bool) -> None:
    """Delete a cached model: a repo (every revision), org/name@revision, one GGUF file
    (org/name/file.gguf), a URL's GGUF (with its MLX imports), or an MLX import's folder.
    A model a running bridge serves is refused."""
    from .store import delete_cached_model

    try:
        plan = delete_cached_model(ref, dry_run=dry_run)
    except BridgeError as exc:
        _fail(exc)
    refs = ", ".join(m.ref for m in plan.models) or ref
    if dry_run:
        click.echo(f"Would delete {refs}: {human_bytes(plan.bytes_freed)} freed.")
        for path in plan.paths:
            click.echo(f"  {path}")
    else:
        click.echo(f"Deleted {refs}: {human_bytes(plan.bytes_freed)} freed.")


@models.command("prune")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted and freed.")
def models_prune(dry_run: bool) -> None:
    """Delete the MLX imports of GGUF files that nothing will load again: stale (their GGUF
    is gone or changed, or a newer importer converted it again), damaged (their files differ
    from what was written), or left by an import that did not finish. Imports a running
    bridge serves, and imports in progress, are kept."""
    from .store import prune_stale_imports

    plan = prune_stale_imports(dry_run=dry_run)
    if not plan.models:
        click.echo("No stale, damaged or unfinished MLX imports.")
        return
    verb = "Would delete" if dry_run else "Deleted"
    click.echo(f"{verb} {len(plan.models)} MLX import(s): {human_bytes(plan.bytes_freed)} freed.")
    for m in plan.models:
        why = (
            m.stale
            if not m.complete
            else f"damaged: {m.damaged}"
            if m.damaged
            else f"stale: {m.stale}"
        )
        click.echo(f"  {m.path}  ({why})")


def register(group: click.Group) -> None:
    """Add ``pull`` and ``models`` to the ``dvai-bridge`` command group."""
    group.add_command(pull)
    group.add_command(models)
