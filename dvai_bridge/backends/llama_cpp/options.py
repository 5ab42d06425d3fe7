"""The llama backend's settings (``backend_options``; ``serve --threads`` and the like)."""

from __future__ import annotations

from pydantic import Field, field_validator

from ..options import BackendOptions


class LlamaOptions(BackendOptions):
    threads: int | None = Field(
        None, ge=1, description="llama backend: CPU threads. Default: the physical cores."
    )
    gpu_layers: int = Field(
        0, ge=-1, description="llama backend: layers to offload to the GPU (-1: all, 0: none)."
    )
    n_batch: int = Field(
        512,
        ge=16,
        description="llama backend: prompt tokens per llama_decode call (and between two "
        "checks for a cancelled request).",
    )
    embedding_mode: bool = Field(
        False,
        description="llama backend: also serve /v1/embeddings from this GGUF "
        "(mean-pooled, L2-normalized).",
    )
    # Not a llama setting: declared so that giving it here is refused with the way to do it.
    embedding_model: str | None = Field(None, exclude=True)

    @field_validator("embedding_model")
    @classmethod
    def _not_here(cls, v: str | None) -> None:
        if v:
            raise ValueError(
                "embedding_model is for the mlx backend; the llama backend serves embeddings "
                "from its own GGUF with embedding_mode=True."
            )
        return None
