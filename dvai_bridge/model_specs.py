"""The models a server is configured with: ``--model NAME=REF`` (repeatable) and a TOML file.

    dvai-bridge serve --model chat=./qwen.gguf --model small=./smol.gguf --model all-MiniLM-L6-v2

    # models.toml (--models-file): one table per model; every key but `model` is optional
    [models.chat]
    model = "mlx-community/Qwen2.5-1.5B-Instruct-4bit"
    backend = "mlx"
    context_size = 8192
    aliases = ["gpt-4o-mini"]
    pinned = true                      # loaded at start, never unloaded
    [models.small]
    model = "./SmolLM2-135M-Instruct.Q4_1.gguf"
    threads = 2                        # its backend's options (or a backend_options table)

Each model gets its own ``StartConfig``: the server's, with the model's settings over it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends.registry import check_options, option_names
from .config import StartConfig
from .engine.model_set import ModelEntry, machine_memory
from .errors import ConfigurationInvalid

# What a model's table may set besides model/aliases/pinned: the StartConfig fields that belong
# to one model (its backend, its engine's limits), and any backend's options (by name, as
# StartConfig takes them, or in a backend_options table), checked against the model's backend.
PER_MODEL = (
    "backend",
    "context_size",
    "backend_options",
    "max_queued",
    "max_batch_size",
    "prefill_chunk",
    "prompt_cache_mb",
    "chat_template",
    "reasoning_field",
    "reasoning_budget_minimal",
    "reasoning_budget_low",
    "reasoning_budget_medium",
)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config: StartConfig  # model_path is this model's reference
    aliases: tuple[str, ...] = ()
    pinned: bool = False


def several(config: StartConfig) -> bool:
    """Does ``config`` configure a model set (rather than the one ``model_path``)?"""
    return bool(config.models or config.models_file) or any(
        getattr(config, f) is not None
        for f in ("max_loaded_models", "models_memory_mb", "idle_unload_s")
    )


def serving_models(config: StartConfig) -> list[ModelSpec]:
    """The configured models, in order: the ``models`` entries, then the file's tables."""
    if not (config.models or config.models_file):  # one model with the set's limits
        return [_one(config)]
    if config.model_path is not None:
        raise ConfigurationInvalid(
            "Give the model either as model_path or in models / models_file, not both.",
            param="models",
        )
    specs = [_from_entry(config, e) for e in config.models]
    if config.models_file:
        specs += _from_file(config, Path(config.models_file))
    seen: dict[str, str] = {}
    for spec in specs:
        for name in (spec.name, *spec.aliases):
            if name in seen:
                raise ConfigurationInvalid(
                    f"The model name {name!r} is given twice (models "
                    f"{seen[name]!r} and {spec.name!r}).",
                    param="models",
                )
            seen[name] = spec.name
    if not specs:
        raise ConfigurationInvalid("models_file names no models.", param="models_file")
    return specs


def split_entry(entry: str) -> tuple[str | None, str]:
    """``NAME=REF`` -> (NAME, REF); a bare REF (URLs and paths may hold '=') -> (None, REF)."""
    name, sep, ref = entry.partition("=")
    if sep and name and not any(c in name for c in "/\\:#?") and ref:
        return name.strip(), ref.strip()
    return None, entry.strip()


def default_name(ref: str) -> str:
    """The name a bare REF is served under: a local file's or folder's name (a GGUF file
    without its extension, as the backends name it), else the reference itself (a repo id)."""
    path = Path(os.path.expanduser(ref))
    if path.exists() or ref.lower().endswith(".gguf"):
        return path.stem if path.suffix.lower() == ".gguf" else path.name
    return ref


def _from_entry(config: StartConfig, entry: str) -> ModelSpec:
    name, ref = split_entry(entry)
    if not ref:
        raise ConfigurationInvalid(
            f"Empty model entry {entry!r}: give NAME=REF or REF.", param="models"
        )
    return ModelSpec(name or default_name(ref), _model_config(config, {"model_path": ref}))


def _one(config: StartConfig) -> ModelSpec:
    ref = config.model_path
    if ref is None:
        from .store.resolve import embedded_default_gguf

        name = default_name(str(embedded_default_gguf()))
    else:
        name = default_name(ref)
    return ModelSpec(name, _model_config(config, {"model_path": ref}), tuple(config.model_aliases))


def _from_file(config: StartConfig, path: Path) -> list[ModelSpec]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigurationInvalid(
            f"Cannot read models_file {path}: {exc.strerror}", param="models_file"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationInvalid(
            f"models_file {path} is not valid TOML: {exc}", param="models_file"
        ) from None
    unknown = set(data) - {"models"}
    tables = data.get("models", {})
    if unknown or not isinstance(tables, dict):
        raise ConfigurationInvalid(
            f"models_file {path}: only [models.NAME] tables are read; "
            f"found {sorted(unknown) or 'models = ...'}.",
            param="models_file",
        )
    specs = []
    for name, table in tables.items():
        where = f"models_file {path}, [models.{name}]"
        if not isinstance(table, dict) or not isinstance(table.get("model"), str):
            raise ConfigurationInvalid(f'{where}: set model = "REF".', param="models_file")
        table = dict(table)
        ref, aliases, pinned = (
            table.pop("model"),
            table.pop("aliases", []),
            table.pop("pinned", False),
        )
        options = option_names()
        bad = sorted(set(table) - set(PER_MODEL) - options)
        if bad:
            raise ConfigurationInvalid(
                f"{where}: unknown key(s) {bad}; a model may set model, "
                f"aliases, pinned, {', '.join(PER_MODEL)} and its backend's options "
                f"({', '.join(sorted(options))}).",
                param="models_file",
            )
        if not isinstance(table.get("backend_options", {}), dict):
            raise ConfigurationInvalid(f"{where}: backend_options is a table.", param="models_file")
        own = {k: table.pop(k) for k in list(table) if k in options}
        table["backend_options"] = {**table.get("backend_options", {}), **own}
        if not (isinstance(aliases, list) and all(isinstance(a, str) for a in aliases)):
            raise ConfigurationInvalid(f"{where}: aliases is a list of names.", param="models_file")
        specs.append(
            ModelSpec(
                name,
                _model_config(config, {"model_path": ref, **table}, where),
                tuple(aliases),
                bool(pinned),
            )
        )
    return specs


def _model_config(config: StartConfig, own: dict[str, Any], where: str = "models") -> StartConfig:
    """The server's settings with the model's over them (its backend options over the
    server's, one by one), checked against the model's backend."""
    base = config.model_dump(exclude={"models", "models_file", "model_aliases"})
    options = {**base.pop("backend_options"), **own.pop("backend_options", {})}
    try:
        model = StartConfig.build(**{**base, **own, "backend_options": options})
        check_options(model)
        return model
    except ConfigurationInvalid as exc:
        raise ConfigurationInvalid(f"{where}: {exc.message}", param="models") from None


def model_entries(specs: list[ModelSpec]) -> list[ModelEntry]:
    """The model set's entries; a model's files' size is its memory estimate until loaded."""
    return [
        ModelEntry(s.name, s.aliases, s.pinned, _files_size(s.config.model_path), s) for s in specs
    ]


def set_limits(config: StartConfig) -> dict[str, Any]:
    """The model set's limits: the memory budget defaults to half the machine's memory."""
    budget = (
        config.models_memory_mb * 2**20
        if config.models_memory_mb
        else machine_memory() // 2 or None
    )
    return {
        "max_loaded": config.max_loaded_models,
        "budget_bytes": budget,
        "idle_unload_s": config.idle_unload_s,
    }


def _files_size(ref: str | None) -> int:
    from .store.resolve import locate_model

    path = locate_model(ref)
    if path is None:
        return 0
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
