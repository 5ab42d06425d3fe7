"""MLX sampling pieces without a model: they never touch MLX's global random key, the filters
match mlx-lm's for the values they share, and no field value makes them raise (issue 13)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

from dvai_bridge.backends.mlx import sampling
from dvai_bridge.engine.types import SamplingParams

VOCAB = 64


def _logprobs(seed: int = 0) -> mx.array:
    logits = mx.array(np.random.default_rng(seed).normal(size=(1, VOCAB)).astype(np.float32))
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def _global_key() -> np.ndarray:
    state = mx.random.state[0]
    mx.eval(state)
    return np.array(state)


@pytest.mark.parametrize("fields", [{}, {"top_p": 0.9}, {"min_p": 0.05}, {"top_k": 5}])
def test_unseeded_sampling_leaves_the_global_random_key_alone(fields):
    """A step that fails after a sampler split the global key poisoned every later unseeded
    request; a sequence draws from its own key instead."""
    before = _global_key()
    sample = sampling.make_sequence_sampler(SamplingParams(temperature=0.8, **fields))
    tokens = [sample(_logprobs(i)) for i in range(3)]
    mx.eval(tokens)
    assert np.array_equal(_global_key(), before)


def test_unseeded_sequences_draw_different_streams_and_a_seed_repeats():
    def draws(params: SamplingParams) -> list[int]:
        sample = sampling.make_sequence_sampler(params)
        flat = mx.zeros((1, VOCAB))  # every token equally likely: the key decides
        return [int(sample(flat).item()) for _ in range(12)]

    assert draws(SamplingParams(seed=7)) == draws(SamplingParams(seed=7))
    assert draws(SamplingParams()) != draws(SamplingParams())


@pytest.mark.parametrize("k", [VOCAB, VOCAB + 1, 49152, 10**18, 2**64])
def test_top_k_at_or_past_the_vocabulary_keeps_every_token(k):
    lp = _logprobs()
    assert mx.array_equal(sampling.top_k_filter(lp, k), lp)
    sample = sampling.make_sequence_sampler(SamplingParams(top_k=k, seed=1))
    assert 0 <= int(sample(lp).item()) < VOCAB


@pytest.mark.parametrize("k", [1, 5, VOCAB - 1])
@pytest.mark.parametrize("p", [0.1, 0.9, 0.999])
def test_filters_match_mlx_lm_where_both_are_defined(k, p):
    lp = _logprobs(3)
    assert mx.array_equal(sampling.top_k_filter(lp, k), apply_top_k(lp, k))
    assert mx.array_equal(sampling.top_p_filter(lp, p), apply_top_p(lp, p))
    assert mx.array_equal(sampling.min_p_filter(lp, 1 - p), apply_min_p(lp, 1 - p, 1))


def test_extreme_filters_keep_the_best_token():
    lp = _logprobs(4)
    best = int(mx.argmax(lp).item())
    for out in (sampling.top_p_filter(lp, 1e-300), sampling.min_p_filter(lp, 1.0)):
        assert bool(mx.isfinite(out[0, best]).item())


def test_logit_bias_ignores_ids_outside_the_row():
    process = sampling.logit_bias(((1, 5.0), (VOCAB, 100.0), (-1, 100.0), (2**40, 1.0)))
    logits = mx.zeros((1, VOCAB))
    out = process(mx.array([0]), logits)
    expected = np.zeros((1, VOCAB), dtype=np.float32)
    expected[0, 1] = 5.0
    assert np.array_equal(np.array(out), expected)
