"""The process-wide bridge: load a model, serve it on loopback, stop cleanly.

from dvai_bridge import shared, StartConfig

server = shared.start_blocking(StartConfig(backend="mlx"))   # or: await shared.start(...)
print(server.base_url)                                       # http://127.0.0.1:38883/v1
shared.stop()

with shared.serving(StartConfig()) as server:                # stops on exit
    ...
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from .backends.mlx.distributed.group import GroupInfo, launched_backend
from .backends.registry import check_options, create_backend
from .config import StartConfig
from .core.backend import Backend
from .core.types import BatchLimits
from .defaults import SHUTDOWN_GRACE_S
from .engine.async_engine import AsyncEngine
from .engine.limits import describe, resolve_limits
from .engine.model_set import ModelSet
from .engine.scheduler import Scheduler
from .errors import AlreadyStarted, BridgeError, ConfigurationInvalid
from .fdlimit import keep_file_limit
from .http.app import create_app
from .http.connections import guarded_h11, serve
from .http.drain import Drain
from .http.listen import bind_port
from .http.security import SecurityOptions
from .model_specs import ModelSpec, model_entries, serving_models, set_limits, several
from .progress import ProgressEvent, ProgressHub
from .protocol.openai_responses.store import StoreLimits
from .protocol.reasoning import ReasoningOptions
from .protocol.router import ModelRouter
from .protocol.service import OpenAIService
from .store.inuse import ServingLease, take_lease

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoundServer:
    base_url: str
    port: int
    backend: str
    model_id: str
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class BridgeStatus:
    running: bool
    backend: str | None = None
    base_url: str | None = None
    model_id: str | None = None


class _Running:
    def __init__(
        self,
        bound: BoundServer,
        server: uvicorn.Server,
        thread: threading.Thread,
        close: Callable[[], None],
        refs: list[str | None],
        drain: Drain,
    ) -> None:
        self.bound, self.server, self.thread, self.close = bound, server, thread, close
        self.drain = drain  # the app's, begun on stop
        self.refs = refs  # the model references it serves (None: the embedded default)


class Bridge:
    """Starts and stops one server. ``dvai_bridge.shared`` is the process-wide instance."""

    def __init__(self) -> None:
        self.progress = ProgressHub()
        self._lock = threading.Lock()
        self._starting = False
        self._running: _Running | None = None
        self._leases: list[ServingLease] = []  # tell other processes what we serve

    # -- lifecycle -------------------------------------------------------------------
    async def start(self, config: StartConfig | None = None, **options: Any) -> BoundServer:
        """Load the model and serve it. Returns once the server accepts requests."""
        return await asyncio.to_thread(self.start_blocking, config, **options)

    def start_blocking(self, config: StartConfig | None = None, **options: Any) -> BoundServer:
        config = config or StartConfig.build(**options)
        with self._lock:
            if self._running is not None or self._starting:
                raise AlreadyStarted("The bridge is already running; call stop() first.")
            self._starting = True
        try:
            self._running = self._start(config)
            leases = (take_lease(ref, self._running.bound.base_url) for ref in self._running.refs)
            self._leases = [lease for lease in leases if lease is not None]
            return self._running.bound
        except BaseException as exc:
            message = exc.message if isinstance(exc, BridgeError) else str(exc)
            self.progress.emit(ProgressEvent("error", message=message))
            raise
        finally:
            self._starting = False

    def _start(self, config: StartConfig) -> _Running:
        security = SecurityOptions.from_config(config)  # a bad key file fails before the load
        _check_group(config)  # under mlx.launch, only rank 0 gets here
        models = serving_models(config) if several(config) else None
        for each in [m.config for m in models] if models is not None else [config]:
            check_options(each)  # a bad backend option fails before the load
        sock = bind_port(config.host, config.http_base_port, config.http_max_port_attempts)
        close: Callable[[], None] | None = None
        service: OpenAIService | ModelRouter
        try:
            if models is not None:
                service, close, backend_name, model_id = self._model_set(config, models)
                refs = [m.config.model_path for m in models]
            else:
                service, close = self._one_model(config)
                backend_name, model_id = service.engine.name, service.engine.model_id
                refs = [config.model_path]
            app = create_app(
                service,
                **security.app_options(),
                shutdown_grace_s=config.shutdown_grace_s,
                responses_store=StoreLimits(
                    config.responses_max,
                    config.responses_max_mb << 20,
                    config.responses_ttl_s,
                    config.responses_dir,
                ),
            )
            server = uvicorn.Server(
                uvicorn.Config(
                    app,
                    log_level=config.log_level.lower(),
                    lifespan="off",
                    timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S),
                    access_log=False,
                    http=guarded_h11(),
                )
            )
            thread = threading.Thread(
                target=lambda: asyncio.run(serve(server, sock)), name="dvai-http", daemon=True
            )
            thread.start()
            while not server.started:
                if not thread.is_alive():
                    raise ConfigurationInvalid("The HTTP server failed to start; see the log.")
                time.sleep(0.01)
        except BaseException:
            sock.close()
            if close is not None:
                close()
            raise
        host, port = sock.getsockname()[:2]
        url_host = f"[{host}]" if ":" in host else host
        bound = BoundServer(f"http://{url_host}:{port}/v1", port, backend_name, model_id, host)
        self.progress.emit(
            ProgressEvent(
                "ready", percent=100.0, message=f"Serving {bound.model_id} at {bound.base_url}"
            )
        )
        return _Running(bound, server, thread, close, refs, app.state.drain)

    def _one_model(self, config: StartConfig) -> tuple[OpenAIService, Callable[[], None]]:
        # The model loads on the engine's thread, which then runs every step on it.
        scheduler = _scheduler(config, self.progress)
        try:
            watch = getattr(scheduler.backend, "watch", None)  # an MLX distributed rank 0
            if watch is not None:
                watch(scheduler.fail)
            return OpenAIService(
                AsyncEngine(scheduler),
                reasoning=ReasoningOptions.from_config(config),
                aliases=config.model_aliases,
                strict_model_names=config.strict_model_names,
            ), scheduler.close
        except BaseException:
            scheduler.close()
            raise

    def _model_set(
        self, config: StartConfig, models: list[ModelSpec]
    ) -> tuple[ModelRouter, Callable[[], None], str, str]:
        """Several models: each loads on first use (pinned ones now), into its own engine."""
        model_set = ModelSet(
            model_entries(models),
            lambda e: _scheduler(e.spec.config, self.progress),
            release=_free_device_cache,
            **set_limits(config),
        )
        for entry in model_set.slots.values():
            if entry.entry.pinned:  # a failure is that model's state; the others serve
                try:
                    model_set.load(entry.name)
                except BridgeError:
                    pass
        backends = {m.config.backend for m in models}
        return (
            ModelRouter(model_set, strict_model_names=config.strict_model_names),
            model_set.close,
            backends.pop() if len(backends) == 1 else "several",
            models[0].name,
        )

    def stop(self) -> None:
        """Stop serving and free the model. Safe to call twice, or when never started.

        New requests get 503 at once; those in flight run on for ``shutdown_grace_s``, after
        which streams end with an error frame and ``[DONE]`` (others with a 503 envelope).
        Then the port is closed and the model freed.
        """
        with self._lock:
            running, self._running = self._running, None
        if running is None:
            return
        _drain(running.drain)
        running.server.should_exit = True
        running.thread.join(SHUTDOWN_GRACE_S + 5)
        running.close()
        leases, self._leases = self._leases, []
        for lease in leases:
            lease.release()

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    @property
    def model_path(self) -> Path | None:
        """Where the served model's files are on this machine (None when stopped)."""
        leases = self._leases
        return leases[0].path if leases and self._running is not None else None

    def status(self) -> BridgeStatus:
        r = self._running
        if r is None:
            return BridgeStatus(False)
        return BridgeStatus(True, r.bound.backend, r.bound.base_url, r.bound.model_id)

    # -- context manager -------------------------------------------------------------
    def serving(self, config: StartConfig | None = None, **options: Any) -> _Serving:
        """``with bridge.serving(cfg) as server:`` (or ``async with``): stops on exit."""
        return _Serving(self, config, options)


def _scheduler(config: StartConfig, progress: ProgressHub) -> Scheduler:
    return Scheduler(
        lambda: _keeping_file_limit(config, progress),
        max_queued=config.max_queued,
        limits=lambda b: _limits(config, b),
    )


def _free_device_cache() -> None:
    """After a model of a model set is freed: MLX keeps freed buffers for reuse; give them
    back so that the process's memory falls (llama.cpp frees its own)."""
    mx = sys.modules.get("mlx.core")
    if mx is not None:
        try:
            mx.clear_cache()
        except Exception:
            log.exception("freeing MLX's buffer cache failed")


def _keeping_file_limit(config: StartConfig, progress: ProgressHub) -> Backend:
    with keep_file_limit():  # mlx_lm lowers RLIMIT_NOFILE when first imported
        if _group() is not None:  # one model across an MLX distributed group
            from .backends.mlx import distributed

            return distributed.load(config, progress)
        return create_backend(config, progress)


def _group() -> GroupInfo | None:
    """This process's place in the MLX distributed group it was launched into, if any."""
    if launched_backend() is None:
        return None  # mlx is not even imported
    from .backends.mlx import distributed

    found = distributed.current()
    return None if found is None else found[1]


def _check_group(config: StartConfig) -> None:
    """In an MLX distributed group, rank 0 serves (the others run ``run_follower``), and
    only through MLX."""
    info = _group()
    if info is None:
        return
    if info.rank != 0:
        raise ConfigurationInvalid(
            f"This is rank {info.rank} of an MLX distributed group: only rank 0 serves HTTP; "
            "the others run dvai_bridge.backends.mlx.distributed.run_follower (dvai-bridge "
            "serve does this by itself)."
        )
    if config.backend not in ("auto", "mlx"):
        raise ConfigurationInvalid(
            f"Only the mlx backend serves across an MLX distributed group, not {config.backend!r}.",
            param="backend",
        )


def _limits(config: StartConfig, backend: Backend) -> BatchLimits:
    limits = resolve_limits(
        backend.device_kind,
        max_batch=config.max_batch_size,
        prefill_chunk=config.prefill_chunk,
        prompt_cache_mb=config.prompt_cache_mb,
        device_memory=backend.device_memory,
    )
    if getattr(backend, "group_info", None) is not None and limits.max_batch < 2:
        raise ConfigurationInvalid(
            "An MLX distributed group runs every sequence in a batch: "
            "max_batch_size must be at least 2.",
            param="max_batch_size",
        )
    log.info("engine on %s", describe(backend.device_kind, limits))
    return limits


def _drain(drain: Drain) -> None:
    drain.begin()
    if drain.wait_idle(drain.grace_s):
        return
    log.warning(
        "%d request(s) still running after the %gs grace period; ending them with an error",
        drain.inflight,
        drain.grace_s,
    )
    drain.abort()
    if not drain.wait_idle(SHUTDOWN_GRACE_S):
        log.error("%d request(s) did not end after being cancelled", drain.inflight)


class _Serving:
    def __init__(self, bridge: Bridge, config: StartConfig | None, options: dict) -> None:
        self.bridge, self.config, self.options = bridge, config, options

    def __enter__(self) -> BoundServer:
        return self.bridge.start_blocking(self.config, **self.options)

    def __exit__(self, *exc: object) -> None:
        self.bridge.stop()

    async def __aenter__(self) -> BoundServer:
        return await self.bridge.start(self.config, **self.options)

    async def __aexit__(self, *exc: object) -> None:
        await self.bridge.astop()


shared = Bridge()
