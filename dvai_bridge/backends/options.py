"""Each backend's own settings: a pydantic ``Options`` model per backend, validated once.

A backend declares its settings (their defaults, ranges and help) on its Options model; the
registry validates the options given for the chosen backend against it and hands the factory
only that validated model, in a ``BackendLoad``. ``StartConfig`` carries the raw options
(``backend_options``); the CLI's backend flags are generated from these models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ConfigurationInvalid


class BackendOptions(BaseModel):
    """Base of every backend's Options: immutable, unknown names refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class NoOptions(BackendOptions):
    """A backend without settings of its own."""


@dataclass(frozen=True)
class BackendLoad:
    """What a backend factory gets: the model to load, its context, and its own options."""

    model_path: str | None
    context_size: int | None
    options: BackendOptions


def validate_options(
    backend: str, model: type[BackendOptions], raw: Mapping[str, Any]
) -> BackendOptions:
    """``model`` built from ``raw``; an unknown or invalid option is ``ConfigurationInvalid``
    naming the option (its ``param``) and the backend."""
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            takes = ", ".join(f for f in model.model_fields if declares(model, f)) or "no options"
            message = f"Unknown option {field!r} for the {backend} backend (it takes: {takes})."
        else:
            message = f"Invalid {field} for the {backend} backend: {first['msg']}"
        raise ConfigurationInvalid(message, param=field) from None


def served_options() -> dict[str, type[BackendOptions]]:
    """The Options of the backends ``StartConfig`` and ``dvai-bridge serve`` document (their
    names are ``StartConfig`` keywords and ``serve`` flags); the registry knows every backend's."""
    from .llama_cpp.options import LlamaOptions
    from .mlx.options import MLXOptions

    return {"mlx": MLXOptions, "llama": LlamaOptions}


def declares(model: type[BackendOptions], name: str) -> bool:
    """Is ``name`` one of ``model``'s settings? (A field with ``exclude=True`` is another
    backend's setting, declared only to refuse it with a pointer.)"""
    field = model.model_fields.get(name)
    return field is not None and not field.exclude


def check_known(
    raw: Mapping[str, Any], models: Mapping[str, type[BackendOptions]]
) -> tuple[dict[str, Any], list[str]]:
    """Validate each option of ``raw`` against every backend of ``models`` that declares it
    (before the backend is chosen: ``backend="auto"``). Returns the options, each as its
    backend reads it (``"2"`` -> ``2``), and the names no backend of ``models`` declares."""
    checked: dict[str, Any] = {}
    unknown = []
    for key, value in raw.items():
        checked[key] = value
        for name, model in models.items():
            if declares(model, key):
                checked[key] = getattr(validate_options(name, model, {key: value}), key)
        if not any(declares(m, key) for m in models.values()):
            unknown.append(key)
    return checked, unknown
