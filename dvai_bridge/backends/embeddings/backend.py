"""A backend that only embeds: an MLX encoder served alone on /v1/embeddings."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ...core.backend import Backend, Capabilities, Message
from ...core.embedder import Embedder
from ...core.types import CancelToken, GenerationRequest, TokenChoice
from ...errors import NotSupported


class EmbeddingBackend(Backend):
    name = "mlx"
    capabilities = Capabilities(chat=False, completions=False, embeddings=True, logprobs=False)

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.model_id = embedder.model_id
        self.context_length = embedder.max_tokens
        self.eos_token_ids = frozenset()
        self.vocab_size = embedder.vocab_size

    def _refuse(self, param: str) -> NotSupported:
        return NotSupported(
            f"{self.model_id} is an embedding model: it serves /v1/embeddings only. Start a "
            "chat model with embedding_model set to serve both.",
            param=param,
        )

    def chat_tokens(self, messages: list[Message]) -> list[int]:
        raise self._refuse("messages")

    def tokenize(self, text: str) -> list[int]:
        return self.embedder.tokenize(text)

    def decode(self, tokens: Sequence[int]) -> str:
        raise self._refuse("prompt")

    def generate(self, request: GenerationRequest, cancel: CancelToken) -> Iterator[TokenChoice]:
        raise self._refuse("prompt")

    def embed(self, inputs: list[list[int]] | list[str]) -> list[list[float]]:
        batch = [
            self.embedder.tokenize(x) if isinstance(x, str) else self.embedder.frame(x)
            for x in inputs
        ]
        return self.embedder.embed_tokens(batch).tolist()

    def close(self) -> None:
        self.embedder.close()
