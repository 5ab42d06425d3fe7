"""Backends register through one door: ``register_backend(name, factory)``.

Built-in backends use it below, lazily (their libraries are imported only when chosen);
third-party backends use it through the ``dvai_bridge.backends`` entry-point group, whose
entries name a factory with the same signature.
"""

from __future__ import annotations

import importlib
import logging
import platform
from collections.abc import Callable
from importlib.metadata import entry_points

from ..config import StartConfig
from ..errors import BackendUnavailable, ConfigurationInvalid
from ..progress import ProgressHub
from .base import Backend

log = logging.getLogger(__name__)

BackendFactory = Callable[[StartConfig, ProgressHub], Backend]

_factories: dict[str, BackendFactory | str] = {}
_discovered = False


def register_backend(name: str, factory: BackendFactory | str) -> None:
    """Make a backend selectable by name. ``factory`` may be ``"module:attr"`` (lazy)."""
    _factories[name] = factory


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for ep in entry_points(group="dvai_bridge.backends"):
        if ep.name not in _factories:
            register_backend(ep.name, ep.value)


def available() -> list[str]:
    _discover()
    return sorted(_factories)


def resolve_name(config: StartConfig) -> str:
    """The backend ``auto`` stands for, given the model reference."""
    if config.backend != "auto":
        return config.backend
    # MLX serves every kind of reference this release knows, .gguf included (imported into
    # MLX). When the llama backend ships, auto will weigh it for .gguf files.
    return "mlx"


def create_backend(config: StartConfig, progress: ProgressHub) -> Backend:
    _discover()
    name = resolve_name(config)
    factory = _factories.get(name)
    if factory is None:
        raise ConfigurationInvalid(
            f"Unknown backend {name!r}; available: {', '.join(available())}.", param="backend")
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(config, progress)


def _mlx(config: StartConfig, progress: ProgressHub) -> Backend:
    from .mlx.backend import MLXBackend

    return MLXBackend.load(config.model_path, context_size=config.context_size,
                           progress=progress)


def _coreml(config: StartConfig, progress: ProgressHub) -> Backend:
    if platform.system() != "Darwin":
        raise BackendUnavailable(
            f"The coreml backend runs on Apple platforms only; this is {platform.system()}. "
            "Use backend='mlx' or backend='llama'.")
    raise BackendUnavailable("The coreml backend is not available in this release; "
                             "use backend='mlx'.")


def _llama(config: StartConfig, progress: ProgressHub) -> Backend:
    raise BackendUnavailable(
        "The llama (GGUF) backend is not available in this release yet; backend='mlx' "
        "serves .gguf files of llama architecture by importing them into MLX.")


def _fake(config: StartConfig, progress: ProgressHub) -> Backend:
    from .fake import FakeBackend

    return FakeBackend(context_length=config.context_size or 4096)


register_backend("mlx", _mlx)
register_backend("coreml", _coreml)
register_backend("llama", _llama)
register_backend("fake", _fake)
