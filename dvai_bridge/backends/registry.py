"""Backends register through one door: ``register_backend(name, factory, options)``.

Built-in backends use it below, lazily (their libraries are imported only when chosen);
third-party backends use it through the ``dvai_bridge.backends`` entry-point group, whose
entries name a factory with the same signature (its Options model as the factory's ``Options``
attribute, if it has settings).

A factory is called as ``factory(load, progress)``: ``load`` is a ``BackendLoad`` (the model
reference, the context size and the backend's own validated Options), never the whole
``StartConfig``. The options given (``StartConfig.backend_options``) are validated here against
the chosen backend's Options: an option no backend declares, or an invalid value, is
``ConfigurationInvalid`` naming the option and the backend; an option another backend declares is
left out (a server-wide ``--threads`` applies to the llama models of a model set only).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import platform
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from ..config import StartConfig
from ..core.backend import Backend
from ..errors import BackendUnavailable, BridgeError, ConfigurationInvalid
from ..progress import ProgressHub
from . import probe
from .options import BackendLoad, BackendOptions, NoOptions, check_known, validate_options

log = logging.getLogger(__name__)

BackendFactory = Callable[[BackendLoad, ProgressHub], Backend]

_factories: dict[str, BackendFactory | str] = {}
_options: dict[str, type[BackendOptions] | str] = {}
_discovered = False


def register_backend(
    name: str, factory: BackendFactory | str, options: type[BackendOptions] | str | None = None
) -> None:
    """Make a backend selectable by name. ``factory`` may be ``"module:attr"`` (lazy), and so
    may ``options``, the backend's Options model (default: the factory's ``Options`` attribute,
    else none: the backend takes no options)."""
    _factories[name] = factory
    if options is not None:
        _options[name] = options
    else:
        _options.pop(name, None)


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
    elif config.backend_options.get("embedding_mode") and importlib.util.find_spec("llama_cpp"):
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
        model: Path | None = embedded_default_gguf()
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


def _load(ref: Any) -> Any:
    if isinstance(ref, str):
        module, _, attr = ref.partition(":")
        return getattr(importlib.import_module(module), attr)
    return ref


def _factory(name: str) -> BackendFactory:
    _discover()
    factory = _factories.get(name)
    if factory is None:
        raise ConfigurationInvalid(
            f"Unknown backend {name!r}; available: {', '.join(available())}.", param="backend"
        )
    return _load(factory)  # type: ignore[no-any-return]


def options_model(name: str) -> type[BackendOptions]:
    """The Options model of the backend registered as ``name``."""
    model = _options.get(name)
    if model is None:
        return getattr(_factory(name), "Options", NoOptions)
    return _load(model)  # type: ignore[no-any-return]


def _declared() -> dict[str, type[BackendOptions]]:
    """Every backend's Options that is known without loading a backend."""
    _discover()
    return {name: _load(model) for name, model in _options.items()}


def option_names() -> set[str]:
    """The options some registered backend declares (``threads``, ``shard``, ...)."""
    return {f for m in _declared().values() for f in m.model_fields}


def options_for(name: str, raw: Mapping[str, Any]) -> BackendOptions:
    """Backend ``name``'s Options from the options given: those another backend declares are
    left out; any other unknown one, or an invalid value, is refused."""
    model = options_model(name)
    others = {f for n, m in _declared().items() if n != name for f in m.model_fields}
    own = {k: v for k, v in raw.items() if k in model.model_fields or k not in others}
    return validate_options(name, model, own)


def check_options(config: StartConfig) -> None:
    """Refuse, before any model loads, options that the configured backend (or, for
    ``auto``, every backend) would refuse."""
    raw = config.backend_options
    _discover()
    if config.backend != "auto":
        if config.backend in _factories:  # an unknown backend is refused by its name
            options_for(config.backend, raw)
        return
    _, unknown = check_known(raw, _declared())
    if unknown:
        takes = sorted(option_names())
        raise ConfigurationInvalid(
            f"Unknown backend option {unknown[0]!r}: no backend takes it (backend auto; "
            f"the backends' options: {', '.join(takes)}).",
            param=unknown[0],
        )


def backend_load(config: StartConfig, name: str) -> BackendLoad:
    """What backend ``name``'s factory gets from ``config``."""
    return BackendLoad(
        config.model_path, config.context_size, options_for(name, config.backend_options)
    )


def create_backend(config: StartConfig, progress: ProgressHub) -> Backend:
    name = resolve_name(config)
    factory = _factory(name)
    load = backend_load(config, name)
    template = read_chat_template(config.chat_template)  # a bad file fails before the load
    backend = factory(load, progress)
    if template is not None:
        try:
            backend.tokenizer.set_chat_template(template)
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


def _mlx(load: BackendLoad, progress: ProgressHub) -> Backend:
    from .embeddings.mlx import load_embedder, load_embedding_backend
    from .mlx.options import MLXOptions

    options = load.options
    assert isinstance(options, MLXOptions)
    only = load_embedding_backend(load, progress)  # model_path is an embedding model
    if only is not None:
        return only
    from .mlx.backend import MLXBackend

    backend = MLXBackend.load(load.model_path, context_size=load.context_size, progress=progress)
    if options.embedding_model:  # a model of its own beside the chat model, closed with it
        try:
            backend.embedder = load_embedder(options.embedding_model, progress)
        except BaseException:
            backend.close()
            raise
    return backend


def _coreml(load: BackendLoad, progress: ProgressHub) -> Backend:
    if platform.system() != "Darwin":
        raise BackendUnavailable(
            f"The coreml backend runs on Apple platforms only; this is {platform.system()}. "
            "Use backend='mlx' or backend='llama'."
        )
    raise BackendUnavailable(
        "The coreml backend is not available in this release; use backend='mlx'."
    )


def _llama(load: BackendLoad, progress: ProgressHub) -> Backend:
    from .llama_cpp.backend import LlamaBackend

    return LlamaBackend.load(load, progress)


def _fake(load: BackendLoad, progress: ProgressHub) -> Backend:
    from .fake import FakeBackend, FakeOptions

    assert isinstance(load.options, FakeOptions)
    return FakeBackend(context_length=load.context_size or 4096, **load.options.model_dump())


register_backend("mlx", _mlx, "dvai_bridge.backends.mlx.options:MLXOptions")
register_backend("coreml", _coreml)
register_backend("llama", _llama, "dvai_bridge.backends.llama_cpp.options:LlamaOptions")
register_backend("fake", _fake, "dvai_bridge.backends.fake:FakeOptions")
