"""Embedding models: one small contract, implemented on llama.cpp and on MLX.

A backend that serves ``/v1/embeddings`` carries an ``Embedder`` (``backend.embedder``): the
llama backend in embedding mode (mean-pooled hidden states of the GGUF), or an MLX encoder
(BERT family, e.g. all-MiniLM-L6-v2) beside an MLX chat model or alone. The protocol layer
tokenizes through it, checks lengths, and asks it for vectors; every vector comes back pooled
and L2-normalized.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np


class Embedder(ABC):
    """A loaded embedding model. Thread-safe: calls are serialized on an internal lock."""

    model_id: str
    dimensions: int  # length of every vector
    max_tokens: int  # the longest input, in tokens, framing tokens included
    vocab_size: int
    # Whether a prefix of a vector is itself a good embedding (Matryoshka training), which is
    # what lets `dimensions` shorten vectors.
    truncatable: bool = False

    def __init__(self) -> None:
        self.lock = threading.Lock()

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """The model's input for a text, framing tokens (BOS, [CLS] ... [SEP]) included."""

    def frame(self, tokens: Sequence[int]) -> list[int]:
        """Token-id input as the model needs it: framing tokens added where missing."""
        return list(tokens)

    @abstractmethod
    def _embed(self, batch: list[list[int]]) -> np.ndarray:
        """(len(batch), dimensions) pooled vectors, not yet normalized."""

    def embed_tokens(self, batch: list[list[int]]) -> np.ndarray:
        """Pooled, L2-normalized float32 vectors, one row per input."""
        if not batch:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        with self.lock:
            vectors = np.asarray(self._embed(batch), dtype=np.float32)
        return l2_normalize(vectors)

    def close(self) -> None:  # noqa: B027 (optional: most embedders hold nothing to free)
        """Free the model."""


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    out: np.ndarray = vectors / np.maximum(norms, 1e-12)
    return out


__all__ = ["Embedder", "l2_normalize"]
