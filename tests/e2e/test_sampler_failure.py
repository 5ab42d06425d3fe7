"""A top_k past the vocabulary that reaches the MLX batch (the protocol layer refuses it first)
cannot poison sampling (issue 13 item 1).

Before, mlx-lm's top-k filter raised inside a function compiled with mlx's global random state
as input and output; the failed trace left that state unevaluable, and every later unseeded
request failed ("[eval] Attempting to eval an array without a primitive") until restart. The
filters are ours now, uncompiled and total, and each sequence draws from its own key.
"""

from __future__ import annotations

import pytest

from dvai_bridge.backends.mlx.backend import MLXBackend
from dvai_bridge.core.types import BatchLimits, GenerationRequest, SamplingParams
from dvai_bridge.progress import ProgressHub


@pytest.fixture(scope="module")
def backend():
    # Not closed: MLXBackend.close belongs to the engine thread (it clears that thread's MLX
    # streams, which this thread still needs for the next module's model).
    return MLXBackend.load(None, context_size=1024, progress=ProgressHub())


def _steps(b: MLXBackend, requests: list[GenerationRequest], n: int = 3) -> int:
    batch = b.open_batch(BatchLimits(max_batch=8))
    try:
        for key, request in enumerate(requests):
            batch.add(key, request)
        return sum(len(batch.step()) for _ in range(n))
    finally:
        batch.close()


@pytest.mark.parametrize("top_k", [49152, 50000, 10**18, 2**64])
@pytest.mark.parametrize(
    "other", [{}, {"top_p": 0.9}, {"min_p": 0.05}], ids=["plain", "top_p", "min_p"]
)
def test_top_k_past_the_vocabulary_keeps_every_token_and_poisons_nothing(backend, top_k, other):
    prompt = tuple(backend.tokenizer.chat_tokens([{"role": "user", "content": "Hi"}]))
    sampled = GenerationRequest(prompt, SamplingParams(temperature=0.8, **other), max_tokens=4)
    wide = GenerationRequest(prompt, SamplingParams(temperature=0.8, top_k=top_k), max_tokens=4)
    assert _steps(backend, [sampled, wide]) > 0  # before: ValueError / std::bad_cast
    assert _steps(backend, [sampled]) > 0  # before: RuntimeError until restart
    greedy = GenerationRequest(prompt, SamplingParams(temperature=0.0), max_tokens=4)
    assert _steps(backend, [greedy, sampled]) > 0
