"""How to start the bridge. ``dvai-bridge serve`` is generated from these fields (cli.py): each
default and help text is written once, here or on a backend's Options model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .backends.options import check_known, served_options
from .defaults import (
    DEVICE_LIMITS,
    MAX_BODY_MB,
    REASONING_BUDGETS,
    REASONING_FIELD,
    RESPONSES_MAX,
    RESPONSES_MAX_MB,
    RESPONSES_TTL_S,
    SHUTDOWN_GRACE_S,
)
from .errors import ConfigurationInvalid


def _by_device(i: int, only: str | None = None) -> str:
    """The engine's default ``i`` by device (defaults.DEVICE_LIMITS), for the help texts."""
    if only is not None:
        return f"{DEVICE_LIMITS[only][i]:.0%}"
    names = {"cpu": "CPU", "cuda": "CUDA", "metal": "Metal"}
    return ", ".join(f"{names.get(k, k)} {values[i]}" for k, values in DEVICE_LIMITS.items())


class StartConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str = Field(
        "auto",
        description="Inference backend: mlx, llama, coreml, or auto (by model kind). "
        "Backends from plugins register more names.",
    )
    model_path: str | None = Field(
        None,
        description="Model: an HF repo id (mlx-community/...), a local MLX folder or a "
        ".gguf file. Empty: the embedded SmolLM2-135M-Instruct.",
    )
    context_size: int | None = Field(
        None, ge=16, description="Context window in tokens. Default: the model's own."
    )
    # Each backend's own settings (threads, gpu_layers, embedding_model, shard, ...). An option
    # a built-in backend declares is validated here, at once; all are validated against the
    # chosen backend's Options model before anything loads (backends/registry.py). The
    # built-in backends' options are also accepted as keywords of their own, a documented
    # pass-through kept for the public API: StartConfig(threads=4) is
    # StartConfig(backend_options={"threads": 4}).
    backend_options: dict[str, Any] = Field(
        default_factory=dict,
        description="The chosen backend's own settings, by name (see docs/backends.md).",
    )
    model_aliases: list[str] = Field(
        default_factory=list,
        description="More names for the served model, listed by /v1/models beside its id.",
    )
    strict_model_names: bool = Field(
        False,
        description="Answer only requests naming the served model (its id, an alias or "
        "'default'); other names get 404. Off: on this one-model server any name is served by "
        "the model, as client libraries often send a fixed name such as gpt-4o-mini.",
    )
    # -- several models behind one port (docs/models.md#several-models) ----------------------
    models: list[str] = Field(
        default_factory=list,
        description="Models served behind one port, each 'NAME=REF' or "
        "a bare REF (named by its id): a request's model picks one, loaded on first use.",
    )
    models_file: str | None = Field(
        None,
        description="A TOML file of models with per-model settings ([models.NAME] "
        "tables: model, backend, context_size, aliases, pinned, backend options).",
    )
    max_loaded_models: int | None = Field(
        None,
        ge=1,
        description="Several models: at most this many loaded at once; loading "
        "one more unloads the least recently used idle one. Default: no count limit.",
    )
    models_memory_mb: int | None = Field(
        None,
        ge=1,
        description="Several models: memory the loaded models may take, in MiB; "
        "over it the least recently used idle one is unloaded. Default: half the machine's.",
    )
    idle_unload_s: float | None = Field(
        None,
        ge=0,
        description="Several models: unload a model nobody used for this many "
        "seconds (pinned ones stay; a request's keep_alive overrides it). Default: never.",
    )

    host: str = Field(
        "127.0.0.1",
        description="Address to bind. Keep it loopback; any other address without "
        "an API key logs a loud warning.",
    )
    http_base_port: int = Field(
        38883, ge=0, le=65535, description="First port to try (0: any free port)."
    )
    http_max_port_attempts: int = Field(
        16, ge=1, le=1024, description="Ports to try: base, base+1, ..."
    )
    cors_origin: str | list[str] | None = Field(
        default_factory=list,
        description="Web pages that may call the server (CORS): pages "
        "on loopback origins (http(s)://localhost, 127.0.0.1, [::1], any port) always, plus "
        "this origin or list of origins; '*' lets any web page in; None lets no page in, "
        "loopback ones included. A request whose Origin is not allowed gets 403.",
    )
    api_key: str | list[str] | None = Field(
        None,
        description="Require 'Authorization: Bearer <key>' with this key, or one of these "
        "keys, on every route but /health (optional).",
    )
    api_key_file: str | None = Field(
        None,
        description="A file of API keys, one per line ('#' comments and blank lines are "
        "skipped), accepted besides api_key. Read when the server starts.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header names accepted besides the loopback "
        "names (127.0.0.1, localhost, [::1]) and the bound address; '.example.com' matches its "
        "subdomains, '*' any name. Others get 403: this guards against DNS rebinding.",
    )
    max_body_mb: int = Field(
        MAX_BODY_MB, ge=1, le=1024, description="Largest request body, in MiB; larger ones get 413."
    )
    shutdown_grace_s: float = Field(
        SHUTDOWN_GRACE_S,
        ge=0,
        le=3600,
        description="On stop, seconds in-flight requests may run on (new "
        "ones get 503); then streams end with an error frame.",
    )
    max_queued: int = Field(64, ge=1, description="Requests allowed to wait; more get 429.")
    max_batch_size: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Sequences decoded together (1: one at a time). "
        f"Default: by device ({_by_device(0)}).",
    )
    prefill_chunk: int | None = Field(
        None,
        ge=16,
        description="Prompt tokens processed per engine step; smaller keeps "
        f"running streams smoother while a long prompt is read. Default: by device "
        f"({_by_device(1)}).",
    )
    prompt_cache_mb: int | None = Field(
        None,
        ge=0,
        description="Memory for cached conversation prefixes (KV), in MiB; "
        f"0 turns the prompt cache off. Default: by device ({_by_device(2)}; at most "
        f"{_by_device(3, 'cuda')} of a GPU's memory).",
    )
    # Stored responses (POST /v1/responses with store, read back by previous_response_id).
    responses_max: int = Field(
        RESPONSES_MAX,
        ge=0,
        description="Stored responses kept at most (least recently used go first); 0 stores none.",
    )
    responses_max_mb: int = Field(
        RESPONSES_MAX_MB, ge=1, description="Stored responses' size limit, in MiB of JSON."
    )
    responses_ttl_s: float = Field(
        RESPONSES_TTL_S, gt=0, description="Seconds a stored response lives."
    )
    responses_dir: str | None = Field(
        None,
        description="Keep stored responses in this "
        "directory (they outlive a restart); default: memory.",
    )
    chat_template: str | None = Field(
        None,
        description="A Jinja chat template file used instead of the model's own (for a "
        "model whose template is broken or missing; both backends).",
    )
    reasoning_field: Literal["reasoning_content", "reasoning", "both"] = Field(
        REASONING_FIELD,  # type: ignore[arg-type]
        description="The message field a reasoning model's thinking is "
        "returned in: reasoning_content (llama-server, DeepSeek), reasoning (vLLM, Ollama, "
        "mlx-lm) or both.",
    )
    reasoning_budget_minimal: int = Field(
        REASONING_BUDGETS["minimal"],
        ge=1,
        description="Reasoning tokens allowed at reasoning_effort 'minimal'.",
    )
    reasoning_budget_low: int = Field(
        REASONING_BUDGETS["low"],
        ge=1,
        description="Reasoning tokens allowed at reasoning_effort 'low'.",
    )
    reasoning_budget_medium: int = Field(
        REASONING_BUDGETS["medium"],
        ge=1,
        description="Reasoning tokens allowed at reasoning_effort 'medium' ('high': "
        "up to max_tokens).",
    )
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")

    @model_validator(mode="before")
    @classmethod
    def _backend_keywords(cls, data: Any) -> Any:
        """The built-in backends' options given as keywords go to ``backend_options``."""
        if not isinstance(data, dict):
            return data
        names = {f for m in served_options().values() for f in m.model_fields}
        given = {k: data[k] for k in data if k in names and k not in cls.model_fields}
        if not given:
            return data
        rest = {k: v for k, v in data.items() if k not in given}
        return {**rest, "backend_options": {**(rest.get("backend_options") or {}), **given}}

    @field_validator("backend_options")
    @classmethod
    def _options_valid(cls, v: dict[str, Any]) -> dict[str, Any]:
        """Each option a built-in backend declares is checked now (an invalid one raises
        ``ConfigurationInvalid`` naming it and the backend); the chosen backend checks the
        rest when it loads (``backends.registry.check_options``)."""
        return check_known(v, served_options())[0]

    @field_validator("backend")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.strip().lower()

    @field_validator("api_key")
    @classmethod
    def _keys(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list):
            v = [k.strip() for k in v if k.strip()]
            return v or None
        return v.strip() or None if v is not None else None

    @field_validator("model_path", "chat_template")
    @classmethod
    def _strip(cls, v: str | None) -> str | None:
        return v.strip() or None if v is not None else None

    @classmethod
    def build(cls, **kwargs: object) -> StartConfig:
        """Construct, turning validation problems into ``ConfigurationInvalid``."""
        try:
            return cls(**kwargs)  # type: ignore[arg-type]
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ConfigurationInvalid(f"Invalid {field}: {first['msg']}", param=field) from None
