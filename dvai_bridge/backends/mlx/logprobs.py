"""A generated token as the engine takes it: the token, its logprob and the best alternatives."""

from __future__ import annotations

from typing import Any, cast

from ...core.types import TokenChoice


def token_choice(token: int, logprobs: Any, top_n: int) -> TokenChoice:
    """The chosen token with its logprob and the ``top_n`` best (-1: no logprobs)."""
    if top_n < 0:
        return TokenChoice(token)
    import mlx.core as mx

    chosen = float(logprobs[token].item())
    if top_n == 0:
        return TokenChoice(token, chosen)
    idx = mx.argpartition(-logprobs, kth=top_n - 1)[:top_n]
    vals = logprobs[idx]
    order = mx.argsort(-vals)
    ids = cast(list[int], idx[order].tolist())  # 1-d arrays: plain lists of Python numbers
    top = tuple(zip(ids, cast(list[float], vals[order].tolist()), strict=True))
    return TokenChoice(token, chosen, top)
