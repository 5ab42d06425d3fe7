"""``dvai-bridge serve``'s options, generated from ``StartConfig``'s fields and the built-in
backends' Options models: each default, range and help text is written once, on its field.

What a field does not say is here: a flag's name where it is not the field's (the flags are
public: README, docs/usage.md), and click settings such as ``multiple`` or an environment
variable. ``tests/test_cli.py`` checks that every flag has its field's default.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin

import click
from click.core import ParameterSource
from pydantic.fields import FieldInfo

from .backends.options import declares, served_options
from .config import StartConfig


def _key_in_argv(
    ctx: click.Context, _param: click.Parameter, keys: tuple[str, ...]
) -> tuple[str, ...]:
    if keys and ctx.get_parameter_source("api_key") is ParameterSource.COMMANDLINE:
        click.echo(
            "warning: --api-key on the command line is visible to every user of this "
            "machine (ps, /proc); set DVAI_BRIDGE_API_KEY or use --api-key-file (mode "
            "600) instead.",
            err=True,
        )
    return keys


def _help(field: str) -> str:
    return StartConfig.model_fields[field].description or ""


# The flags whose name is not the field's (``--field-name``), and click settings a field's type
# does not give. "help" is added to the field's description.
FLAGS: dict[str, dict[str, Any]] = {
    "model_path": {
        "flag": "--model",
        "multiple": True,
        "help": " Repeat, or give NAME=REF, to serve several models: " + _help("models"),
    },
    "models_file": {"type": click.Path(dir_okay=False, exists=True)},
    "idle_unload_s": {"flag": "--idle-unload"},
    "model_aliases": {"flag": "--alias", "multiple": True},
    "http_base_port": {"flag": "--port"},
    "http_max_port_attempts": {"flag": "--port-attempts"},
    "api_key": {
        "multiple": True,
        "envvar": "DVAI_BRIDGE_API_KEY",
        "callback": _key_in_argv,
        "help": " Repeat for several keys; DVAI_BRIDGE_API_KEY may hold several, separated by "
        "spaces. Prefer the variable or --api-key-file: other users of this machine can read "
        "the command line (ps).",
    },
    "api_key_file": {"envvar": "DVAI_BRIDGE_API_KEY_FILE", "type": click.Path(dir_okay=False)},
    "allowed_hosts": {"flag": "--allowed-host", "multiple": True},
    "cors_origin": {
        "multiple": True,
        "callback": lambda _c, _p, v: None if "none" in v else list(v),
        "help": " Repeat for a list; 'none' lets no page in.",
    },
    "shutdown_grace_s": {"flag": "--shutdown-grace"},
    "responses_ttl_s": {"flag": "--responses-ttl"},
    "chat_template": {"type": click.Path(dir_okay=False)},
    "group_timeout_s": {"flag": "--group-timeout"},
}
NOT_FLAGS = {"models", "backend_options"}  # --model gives models; backend options are flags


def _click_type(annotation: Any) -> tuple[Any, bool]:
    """(click type, is a flag) for a field's annotation (``X | None`` counts as ``X``)."""
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is Literal:
        return click.Choice([str(a) for a in get_args(annotation)]), False
    if get_origin(annotation) is list:
        return str, False
    if annotation is bool:
        return None, True
    return annotation, False


def option_for(name: str, field: FieldInfo) -> Callable[[Any], Any]:
    """The ``serve`` option of field ``name`` (a click decorator): its flag, type, default and
    help, from the field."""
    extra = dict(FLAGS.get(name, {}))
    flag = extra.pop("flag", "--" + name.replace("_", "-"))
    help_text = (field.description or "") + extra.pop("help", "")
    kind, is_flag = _click_type(field.annotation)
    settings: dict[str, Any] = {"help": help_text, **extra}
    if is_flag:
        settings.update(is_flag=True, default=field.default)
    elif not settings.get("multiple"):
        settings.setdefault("type", kind)
        settings.update(default=field.default, show_default=field.default is not None)
    return click.option(flag, name, **settings)


def backend_fields() -> dict[str, FieldInfo]:
    """The built-in backends' options, each once (a name two backends declare has one flag)."""
    fields: dict[str, FieldInfo] = {}
    for model in served_options().values():
        for name, field in model.model_fields.items():
            if declares(model, name):
                fields.setdefault(name, field)
    return fields


def serve_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate ``serve`` with an option per field, in ``StartConfig``'s order (the backend
    options where ``backend_options`` is)."""
    options: list[Callable[[Any], Any]] = []
    for name, field in StartConfig.model_fields.items():
        if name == "backend_options":
            options += [option_for(n, f) for n, f in backend_fields().items()]
        if name not in NOT_FLAGS:
            options.append(option_for(name, field))
    for option in reversed(options):  # applied last-first, they are listed first-first
        command = option(command)
    return command


def backend_flags(ctx: click.Context, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the backend options given on the command line (or by environment)
    moved into ``backend_options``; those left at their default are not passed, so that each
    backend's own default applies."""
    names = set(backend_fields())
    rest = {k: v for k, v in options.items() if k not in names}
    given = {
        k: v
        for k, v in options.items()
        if k in names and ctx.get_parameter_source(k) is not ParameterSource.DEFAULT
    }
    return {**rest, "backend_options": given}
