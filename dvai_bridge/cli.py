"""Command line: ``dvai-bridge serve``, ``dvai-bridge doctor``."""

from __future__ import annotations

import logging
import platform
import signal
import sys
import threading
from typing import Any

import click

from .bridge import shared
from .cli_options import backend_flags, serve_options
from .config import StartConfig
from .errors import BridgeError
from .progress import ProgressEvent


def _print_progress(event: ProgressEvent) -> None:
    if event.phase in ("load", "download", "verify") and event.message:
        click.echo(f"[{event.phase}] {event.message}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dvai-bridge")
def main() -> None:
    """On-device LLM inference behind a local OpenAI-compatible server."""


@main.command()
@serve_options
def serve(**options: Any) -> None:
    """Serve a model until Ctrl-C. Prints the base_url for OpenAI clients.

    Under mlx.launch, rank 0 serves and the other ranks compute with it (docs/distributed.md).
    """
    logging.basicConfig(
        level=options["log_level"].upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options = backend_flags(click.get_current_context(), options)
    _follow_if_not_rank_0(options)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    handle = shared.progress.add_listener(download_bar(_print_progress))
    try:
        server = shared.start_blocking(StartConfig.build(**_model_options(options)))
    except BridgeError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    finally:
        handle.remove()
    click.echo(f"Serving {server.model_id} ({server.backend}) at {server.base_url}")
    click.echo("Press Ctrl-C to stop.", err=True)
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        click.echo("Stopping...", err=True)
        shared.stop()
        click.echo("Stopped.", err=True)


def _model_options(options: dict[str, Any]) -> dict[str, Any]:
    """One bare ``--model REF`` is the one model (``model_path``); several, or ``NAME=REF``,
    make a model set (``models``)."""
    from .model_specs import split_entry

    refs = list(options.pop("model_path") or ())
    if (
        not options.get("models_file")
        and len(refs) <= 1
        and (not refs or split_entry(refs[0])[0] is None)
    ):
        return {**options, "model_path": refs[0] if refs else None}
    return {**options, "model_path": None, "models": refs}


def _follow_if_not_rank_0(options: dict[str, Any]) -> None:
    """Ranks > 0 of an MLX distributed group compute for rank 0 and speak no HTTP: they run
    here until rank 0 stops the group (exit 0) or the group is lost (exit 1)."""
    from .backends.mlx.distributed import current, launched_backend, run_follower

    if launched_backend() is None:
        return
    try:
        found = current()
        if found is None or found[1].rank == 0:
            return
        code = run_follower(StartConfig.build(**_model_options(options)), shared.progress)
    except BridgeError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    sys.exit(code)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per server.")
def ps(as_json: bool) -> None:
    """List running bridges on this machine: each one's models, their state and memory."""
    import json

    from .store.inuse import running_servers

    servers: dict[str, Any] = {}
    for found in running_servers():  # one lease per served model; one row per server
        servers.setdefault(found.base_url, found)
    for url, found in servers.items():
        health = _health(url)
        if as_json:
            click.echo(json.dumps({"base_url": url, "pid": found.pid, "health": health}))
            continue
        click.echo(f"{url}  pid {found.pid}")
        if health is None:
            click.echo("  (no answer from /health)")
            continue
        models = health.get("models") or [
            {"name": health.get("model"), "state": "loaded", "backend": health.get("backend")}
        ]
        for m in models:
            memory = m.get("memory_bytes")
            size = f"{memory / 2**20:8.0f} MiB" if memory else " " * 12
            click.echo(
                f"  {m['name']:<32} {m['state']:<9} {size}  {m.get('backend') or ''}"
                + (f"  {m['reason']}" if m.get("reason") else "")
            )


def _health(base_url: str) -> dict[str, Any] | None:
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(base_url.removesuffix("/v1") + "/health", timeout=5) as r:
            return json.loads(r.read())
    except Exception as exc:
        body = getattr(exc, "read", None)
        try:
            return json.loads(body()) if body else None
        except Exception:
            return None


@main.command()
@click.option("--no-probe", is_flag=True, help="Skip the backends' test decodes.")
def doctor(no_probe: bool) -> None:
    """Show what this machine offers each backend, and whether each really generates here."""
    from .backends import probe
    from .engine.limits import describe, resolve_limits

    click.echo(f"python    {platform.python_version()} on {platform.system()} {platform.machine()}")
    try:
        from .backends.mlx.device import select_device

        device = select_device()
        extra = f", BLAS: {device.blas}" if device.is_cpu else ""
        click.echo(f"mlx       device {device.kind}{extra}")
        click.echo(f"engine    defaults on {describe(device.kind, resolve_limits(device.kind))}")
    except BridgeError as exc:
        click.echo(f"mlx       unavailable: {exc.message}")
    _doctor_group()
    if not no_probe:
        for backend in ("mlx", "llama"):
            if not probe.installed(backend):
                click.echo(f"probe     {backend}: not installed")
                continue
            try:
                result = probe.probe(backend)
            except BridgeError as exc:  # no model to probe llama with
                click.echo(f"probe     {backend}: not run ({exc.message})")
                continue
            state = "ok" if result.ok else "FAILED"
            click.echo(f"probe     {backend}: {state}: {result.detail}")
    try:
        from .store.resolve import embedded_default_gguf

        click.echo(f"default   {embedded_default_gguf()}")
    except BridgeError as exc:
        click.echo(f"default   {exc.message}")


def _doctor_group() -> None:
    from .backends.mlx.distributed import current, launched_backend

    if launched_backend() is None:
        click.echo(
            "group     none: one process (start under mlx.launch to split a model "
            "across processes or machines; docs/distributed.md)"
        )
        return
    try:
        found = current()
    except BridgeError as exc:
        click.echo(f"group     FAILED: {exc.message}")
        return
    click.echo(f"group     {found[1].describe()}" if found else "group     one rank")


from .cli_store import download_bar, register  # noqa: E402  (pull, models ls/rm)

register(main)
