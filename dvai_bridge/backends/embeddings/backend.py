"""A backend that only embeds: an MLX encoder served alone on /v1/embeddings."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

from ...core.backend import Backend, Capabilities, Message, Step, Tokenizer
from ...core.embedder import Embedder
from ...core.types import CancelToken, GenerationRequest
from ...errors import NotSupported


def _refuse(model_id: str, param: str) -> NotSupported:
    return NotSupported(
        f"{model_id} is an embedding model: it serves /v1/embeddings only. Start a "
        "chat model with embedding_model set to serve both.",
        param=param,
    )


class EmbeddingTokenizer(Tokenizer):
    """The encoder's tokenizer: it tokenizes, and refuses what only a chat model does."""

    backend_name = "mlx"

    def __init__(self, embedder: Embedder) -> None:
        super().__init__()
        self._embedder = embedder
        self.vocab_size = embedder.vocab_size

    def chat_tokens(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        raise _refuse(self._embedder.model_id, "messages")

    def tokenize(self, text: str) -> list[int]:
        return self._embedder.tokenize(text)

    def decode(self, tokens: Sequence[int]) -> str:
        raise _refuse(self._embedder.model_id, "prompt")


class EmbeddingBackend(Backend):
    name = "mlx"
    capabilities = Capabilities(chat=False, completions=False, logprobs=False)

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.model_id = embedder.model_id
        self.context_length = embedder.max_tokens
        self.tokenizer = EmbeddingTokenizer(embedder)

    def generate(self, request: GenerationRequest, cancel: CancelToken) -> Generator[Step]:
        raise _refuse(self.model_id, "prompt")

    def end_thread(self) -> None:
        """Drop the engine thread's MLX state before the thread ends (as ``MLXBackend`` does:
        left to the thread's exit, it can abort a stopping interpreter)."""
        import mlx.core as mx

        if hasattr(mx, "clear_streams"):
            mx.clear_streams()
