"""Backends register through one door: ``register_backend(name, factory)``.

Built-in backends use it below, lazily (their libraries are imported only when chosen);
third-party backends use it through the ``dvai_bridge.backends`` entry-point group, whose
entries name a factory with the same signature.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import platform
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from ..config import StartConfig
from ..errors import BackendUnavailable, BridgeError, ConfigurationInvalid
from ..progress import ProgressHub
from . import probe
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
    """The backend ``auto`` stands for, given the model reference; logged when it chooses.

    A ``.gguf`` file (and the embedded default, which is one) goes to MLX where MLX has a GPU
    (Metal, CUDA), and to llama.cpp where MLX would run on the CPU or is not installed (when
    llama-cpp-python is installed and its probe decodes here; else MLX imports the GGUF).
    Everything else is MLX's.
    """
    if config.backend != "auto":
        return config.backend
    ref = config.model_path
    if ref is not None and not ref.lower().endswith(".gguf"):
        name, why = "mlx", "an MLX model reference"
    elif config.embedding_mode and importlib.util.find_spec("llama_cpp") is not None:
        name, why = "llama", "embedding_mode is served by the llama backend"
    else:
        name, why = _choose_for_gguf()
        if name == "llama" and probe.installed("llama"):
            name, why = _unless_llama_fails(ref, why)
    log.info("backend auto: chose %s for %s (%s)", name, ref or "the embedded default", why)
    return name


def _choose_for_gguf() -> tuple[str, str]:
    try:
        from .mlx.device import select_device

        mlx_device: str | None = select_device().kind
    except (BackendUnavailable, ImportError) as exc:
        mlx_device, reason = None, getattr(exc, "message", str(exc))
    if mlx_device is not None and mlx_device != "cpu":
        return "mlx", f"MLX has a {mlx_device} device"
    if importlib.util.find_spec("llama_cpp") is None:
        if mlx_device is None:
            return "llama", f"MLX is unavailable ({reason}) and so is llama-cpp-python"
        return "mlx", "llama-cpp-python is not installed; MLX imports the GGUF (CPU device)"
    if mlx_device is None:
        return "llama", "MLX is unavailable here"
    return "llama", "MLX would run on the CPU; llama.cpp is the faster CPU engine for GGUF"


def _unless_llama_fails(ref: str | None, why: str) -> tuple[str, str]:
    """Keep llama only if its probe decodes here (a build for another CPU, or kernels that
    crash on this one, would kill the server at its first request)."""
    from ..store.resolve import embedded_default_gguf

    try:  # the build is what is probed: the small embedded model is the fast witness
        model = embedded_default_gguf()
    except BridgeError:
        model = Path(ref).expanduser() if ref and Path(ref).expanduser().is_file() else None
        if model is None:
            return "llama", why + " (not probed: no local GGUF to probe with)"
    result = probe.probe("llama", model)
    if result.ok:
        return "llama", why
    log.warning(
        "backend auto: llama-cpp-python cannot generate on this machine (%s); "
        "serving through MLX instead. `dvai-bridge doctor` shows the probes.",
        result.detail,
    )
    return "mlx", f"llama-cpp-python failed its probe here: {result.detail}"


def create_backend(config: StartConfig, progress: ProgressHub) -> Backend:
    _discover()
    name = resolve_name(config)
    factory = _factories.get(name)
    if factory is None:
        raise ConfigurationInvalid(
            f"Unknown backend {name!r}; available: {', '.join(available())}.", param="backend"
        )
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    template = read_chat_template(config.chat_template)  # a bad file fails before the load
    backend = factory(config, progress)
    if template is not None:
        try:
            backend.set_chat_template(template)
        except BaseException:
            backend.close()
            raise
    return backend


def read_chat_template(path: str | None) -> str | None:
    """The Jinja source of ``--chat-template FILE``, checked to compile."""
    if path is None:
        return None
    import jinja2

    try:
        source = Path(path).expanduser().read_text(encoding="utf-8")
        jinja2.Environment().parse(source)
    except (OSError, UnicodeDecodeError, jinja2.TemplateSyntaxError) as exc:
        raise ConfigurationInvalid(
            f"chat_template {path!r} cannot be used: {exc}", param="chat_template"
        ) from None
    return source


def _mlx(config: StartConfig, progress: ProgressHub) -> Backend:
    from .embeddings.mlx import attach_embedder, load_embedding_backend

    only = load_embedding_backend(config, progress)  # model_path is an embedding model
    if only is not None:
        return only
    from .mlx.backend import MLXBackend

    backend = MLXBackend.load(
        config.model_path, context_size=config.context_size, progress=progress
    )
    if config.embedding_model:
        try:
            attach_embedder(backend, config.embedding_model, progress)
        except BaseException:
            backend.close()
            raise
    return backend


def _coreml(config: StartConfig, progress: ProgressHub) -> Backend:
    if platform.system() != "Darwin":
        raise BackendUnavailable(
            f"The coreml backend runs on Apple platforms only; this is {platform.system()}. "
            "Use backend='mlx' or backend='llama'."
        )
    raise BackendUnavailable(
        "The coreml backend is not available in this release; use backend='mlx'."
    )


def _llama(config: StartConfig, progress: ProgressHub) -> Backend:
    if config.embedding_model:
        raise ConfigurationInvalid(
            "embedding_model is for the mlx backend; the llama backend serves embeddings "
            "from its own GGUF with embedding_mode=True.",
            param="embedding_model",
        )
    from .llama_cpp.backend import LlamaBackend

    return LlamaBackend.load(config, progress)


def _fake(config: StartConfig, progress: ProgressHub) -> Backend:
    from .fake import FakeBackend

    return FakeBackend(context_length=config.context_size or 4096)


register_backend("mlx", _mlx)
register_backend("coreml", _coreml)
register_backend("llama", _llama)
register_backend("fake", _fake)
