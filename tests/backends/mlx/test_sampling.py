"""MLX sampling pieces without a model: they never touch MLX's global random key, the filters
match mlx-lm's for the values they share, and no field value makes them raise (issue 13)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

from dvai_bridge.backends.mlx import sampling
from dvai_bridge.core.types import SamplingParams

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


# ---------------------------------------------------------------- each piece on small arrays

PROBS = [0.5, 0.3, 0.15, 0.05]


def _lp(probs: list[float]) -> mx.array:
    return mx.log(mx.array([probs], dtype=mx.float32))


def _kept(out: mx.array) -> list[int]:
    return [i for i, ok in enumerate(np.isfinite(np.array(out[0]))) if ok]


@pytest.mark.parametrize(("k", "kept"), [(1, [0]), (2, [0, 1]), (3, [0, 1, 2]), (0, [0, 1, 2, 3])])
def test_top_k_keeps_the_k_most_likely(k, kept):
    out = sampling.top_k_filter(_lp(PROBS), k)
    assert _kept(out) == kept
    assert np.allclose(np.array(out[0])[kept], np.log(PROBS)[kept])  # the kept are untouched


@pytest.mark.parametrize(
    ("p", "kept"), [(0.5, [0]), (0.8, [0, 1]), (0.81, [0, 1, 2]), (0.99, [0, 1, 2, 3])]
)
def test_top_p_keeps_the_smallest_set_reaching_the_mass(p, kept):
    assert _kept(sampling.top_p_filter(_lp(PROBS), p)) == kept


@pytest.mark.parametrize(
    ("min_p", "kept"), [(0.0, [0, 1, 2, 3]), (0.2, [0, 1, 2]), (0.5, [0, 1]), (0.9, [0])]
)
def test_min_p_drops_tokens_below_a_share_of_the_best(min_p, kept):
    assert _kept(sampling.min_p_filter(_lp(PROBS), min_p)) == kept


def test_filters_work_row_by_row_on_a_batch():
    rows = mx.log(mx.array([PROBS, PROBS[::-1]], dtype=mx.float32))
    out = np.isfinite(np.array(sampling.top_k_filter(rows, 1)))
    assert out.tolist() == [[True, False, False, False], [False, False, False, True]]
    out = np.isfinite(np.array(sampling.top_p_filter(rows, 0.8)))
    assert out.tolist() == [[True, True, False, False], [False, False, True, True]]


def test_openai_penalties_count_the_completion_only():
    process = sampling.openai_penalties(presence=0.5, frequency=0.25, prompt_len=3)
    logits = mx.zeros((1, 6))
    assert mx.array_equal(process(mx.array([1, 2, 3]), logits), logits)  # nothing generated
    out = np.array(process(mx.array([1, 2, 3, 4, 4, 5]), logits))  # prompt 1 2 3; 4 twice
    assert out[0].tolist() == pytest.approx([0, 0, 0, 0, -0.5 - 0.5, -0.5 - 0.25])


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    (process,) = sampling.logits_processors(SamplingParams(repetition_penalty=2.0), prompt_len=0)
    logits = mx.array([[4.0, -4.0, 4.0, -4.0]])
    out = np.array(process(mx.array([0, 1]), logits))
    assert out[0].tolist() == [2.0, -8.0, 4.0, -4.0]


def test_repetition_penalty_looks_back_over_the_last_64_tokens_only():
    (process,) = sampling.logits_processors(SamplingParams(repetition_penalty=2.0), prompt_len=0)
    tokens = mx.array([0] + [1] * sampling.REPETITION_CONTEXT)  # token 0 is 65 tokens back
    out = np.array(process(tokens, mx.array([[4.0, 4.0, 4.0]])))
    assert out[0].tolist() == [4.0, 2.0, 4.0]


def test_logit_bias_adds_to_its_tokens():
    process = sampling.logit_bias(((0, -100.0), (2, 3.5)))
    out = np.array(process(mx.array([0]), mx.ones((1, 4))))
    assert out[0].tolist() == [-99.0, 1.0, 4.5, 1.0]


def test_processors_come_in_openais_order_with_the_grammar_last():
    assert sampling.logits_processors(SamplingParams(), prompt_len=5) == []

    class Grammar:
        def matcher(self):
            return Matcher([True, False, True, False])

    params = SamplingParams(logit_bias=((1, 50.0),), presence_penalty=1.0, repetition_penalty=2.0)
    processors = sampling.logits_processors(params, prompt_len=1, grammar=Grammar())
    assert len(processors) == 4
    logits, tokens = mx.array([[1.0, 1.0, 1.0, 1.0]]), mx.array([0, 1])
    for process in processors:
        logits = process(tokens, logits)
    # token 1: +50 bias, -1 presence (generated once), then / 2 repetition; then masked
    out = np.array(logits)[0]
    assert out[0] == 0.5 and out[2] == 1.0 and np.isneginf(out[1]) and np.isneginf(out[3])


class Matcher:
    def __init__(self, allowed: list[bool]) -> None:
        self.mask, self.consumed = np.array(allowed), []

    def allowed(self, n_vocab: int) -> np.ndarray:
        assert n_vocab == len(self.mask)
        return self.mask

    def advance(self, token_id: int) -> None:
        self.consumed.append(token_id)


def test_the_grammar_mask_forbids_tokens_and_consumes_each_chosen_one():
    matcher = Matcher([False, True, True])
    process = sampling.grammar_mask(matcher)
    out = np.array(process(mx.array([7, 8]), mx.zeros((1, 3))))
    assert np.isneginf(out[0, 0]) and out[0, 1:].tolist() == [0.0, 0.0]
    assert matcher.consumed == []  # the first step: the prompt's last token is not the grammar's
    process(mx.array([7, 8, 2]), mx.zeros((1, 3)))
    assert matcher.consumed == [2]


def test_temperature_zero_is_argmax_for_every_row():
    sample = sampling.make_sequence_sampler(SamplingParams(temperature=0.0))
    rows = mx.log(mx.array([PROBS, PROBS[::-1]], dtype=mx.float32))
    assert sample(rows).tolist() == [0, 3]


def test_sampled_tokens_stay_inside_the_filters():
    for fields, allowed in [
        ({"top_k": 2}, {0, 1}),
        ({"top_p": 0.5}, {0}),
        ({"min_p": 0.5}, {0, 1}),
    ]:
        sample = sampling.make_sequence_sampler(SamplingParams(seed=3, **fields))
        assert {int(sample(_lp(PROBS)).item()) for _ in range(40)} <= allowed


def test_temperature_sharpens_and_flattens():
    def counts(temperature: float) -> np.ndarray:
        sample = sampling.make_sequence_sampler(SamplingParams(temperature=temperature, seed=5))
        return np.bincount([int(sample(_lp(PROBS)).item()) for _ in range(400)], minlength=4)

    assert counts(0.05)[0] == 400  # near-greedy: 0.3/0.5 to the 20th power is ~4e-5
    flat = counts(10.0)  # nearly uniform: every token drawn often
    assert flat.min() > 60


def test_a_seed_repeats_and_another_seed_differs():
    def draws(seed: int) -> list[int]:
        sample = sampling.make_sequence_sampler(SamplingParams(seed=seed))
        return [int(sample(mx.zeros((1, VOCAB))).item()) for _ in range(16)]

    assert draws(11) == draws(11)
    assert draws(11) != draws(12)
    assert draws(2**64 + 11) == draws(11)  # seeds are taken modulo 2**64
