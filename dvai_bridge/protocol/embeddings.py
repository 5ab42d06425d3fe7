"""/v1/embeddings: OpenAI request in, OpenAI response out, over a backend's ``Embedder``.

Inputs are a string, a list of strings, a list of token ids or a list of such lists. Every
vector is pooled and L2-normalized by the embedder; ``dimensions`` shortens vectors (then
normalizes again) only for models trained for it (Matryoshka), and equal to the model's size
is always accepted. ``encoding_format="base64"`` is the little-endian float32 bytes, as OpenAI
sends them.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from ..core.embedder import Embedder, l2_normalize
from ..errors import BridgeError, ContextLengthExceeded, InvalidRequest, NotSupported
from .schema import EmbeddingRequest

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request


def unavailable(backend: str, model_id: str, hint: str | None) -> BridgeError:
    """Why this model serves no embeddings, and how to get them."""
    if hint:  # a backend that could embed with another setting says which
        return NotSupported(hint, param="model")
    return NotSupported(
        f"The model {model_id!r} on the {backend} backend is a chat model and "
        "serves no embeddings. Start the bridge with backend='llama' and embedding_mode=True, "
        "or on the mlx backend set embedding_model (for example all-MiniLM-L6-v2), to use "
        "/v1/embeddings.",
        param="model",
    )


def split_inputs(req: EmbeddingRequest) -> list[str | list[int]]:
    """The request's inputs, each a text or token ids, checked for shape."""
    raw = req.input
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif not raw:
        raise InvalidRequest("input must not be empty.", param="input")
    elif all(isinstance(x, int) for x in raw):
        items = [list(raw)]
    else:
        items = list(raw)
    if len(items) > MAX_INPUTS:
        raise InvalidRequest(
            f"input holds {len(items)} items; at most {MAX_INPUTS} are accepted per request.",
            param="input",
        )
    for i, item in enumerate(items):
        if not item:
            where = "input" if len(items) == 1 else f"input[{i}]"
            raise InvalidRequest(
                f"{where} is empty; every input needs at least one token.", param="input"
            )
    return items


def _dimensions(req: EmbeddingRequest, embedder: Embedder) -> int:
    want = req.dimensions
    if want is None or want == embedder.dimensions:
        return embedder.dimensions
    if want > embedder.dimensions:
        raise InvalidRequest(
            f"dimensions {want} is more than this model's {embedder.dimensions}.",
            param="dimensions",
        )
    if not embedder.truncatable:
        raise InvalidRequest(
            f"{embedder.model_id} makes {embedder.dimensions}-dimensional vectors and was not "
            "trained to be shortened (Matryoshka), so dimensions must be "
            f"{embedder.dimensions} or left out.",
            param="dimensions",
        )
    return want


def _tokens(embedder: Embedder, items: list[str | list[int]]) -> list[list[int]]:
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            tokens = embedder.tokenize(item)
        else:
            if any(not 0 <= t < embedder.vocab_size for t in item):
                raise InvalidRequest(
                    f"input[{i}] holds token ids outside the vocabulary "
                    f"(0..{embedder.vocab_size - 1}).",
                    param="input",
                )
            tokens = embedder.frame(item)
        if len(tokens) > embedder.max_tokens:
            where = "input" if len(items) == 1 else f"input[{i}]"
            raise ContextLengthExceeded(
                f"{where} is {len(tokens)} tokens; {embedder.model_id} embeds at most "
                f"{embedder.max_tokens}. Split the text.",
                param="input",
            )
        out.append(tokens)
    return out


def _encode(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


async def create_embeddings(
    embedder: Embedder,
    req: EmbeddingRequest,
    on_device: Callable[[Callable[[], Any]], Awaitable[Any]],
) -> dict[str, Any]:
    """``on_device`` runs the model on the thread that owns the device (the engine's)."""
    items = split_inputs(req)
    dims = _dimensions(req, embedder)
    batch = await asyncio.to_thread(_tokens, embedder, items)  # tokenizers: any thread
    vectors = await on_device(lambda: embedder.embed_tokens(batch))
    if dims < vectors.shape[1]:
        vectors = l2_normalize(vectors[:, :dims])
    used = sum(len(t) for t in batch)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encode(v, req.encoding_format)}
            for i, v in enumerate(vectors)
        ],
        "model": embedder.model_id,
        "usage": {"prompt_tokens": used, "total_tokens": used},
    }
