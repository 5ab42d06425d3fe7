"""Sampling pieces for MLX: small pure functions over logits, testable without a model."""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, greedy_sampler

from ...engine.grammar import Grammar, TokenMatcher
from ...engine.types import SamplingParams

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


def openai_penalties(presence: float, frequency: float, prompt_len: int) -> LogitsProcessor:
    """OpenAI's presence/frequency penalties over the tokens generated so far.

    ``logits[j] -= presence * (count[j] > 0) + frequency * count[j]``, where counts cover the
    completion only (not the prompt), as OpenAI documents it.
    """

    def process(tokens: mx.array, logits: mx.array) -> mx.array:
        generated = tokens[prompt_len:]
        if generated.size == 0:
            return logits
        vocab = logits.shape[-1]
        counts = mx.zeros((vocab,), dtype=logits.dtype).at[generated].add(1.0)
        penalty = frequency * counts + presence * (counts > 0).astype(logits.dtype)
        return logits - penalty

    return process


def repetition_penalty(penalty: float, context: int = 64) -> LogitsProcessor:
    """CTRL-style repetition penalty over the last ``context`` tokens (prompt included)."""

    def process(tokens: mx.array, logits: mx.array) -> mx.array:
        recent = tokens[-context:]
        if recent.size == 0:
            return logits
        selected = logits[:, recent]
        selected = mx.where(selected < 0, selected * penalty, selected / penalty)
        logits[:, recent] = selected
        return logits

    return process


def logit_bias(bias: tuple[tuple[int, float], ...]) -> LogitsProcessor:
    ids = mx.array([i for i, _ in bias])
    values = mx.array([v for _, v in bias])

    def process(tokens: mx.array, logits: mx.array) -> mx.array:
        return logits.at[:, ids].add(values.astype(logits.dtype))

    return process


def grammar_mask(matcher: TokenMatcher) -> LogitsProcessor:
    """Constrained decoding: tokens the grammar forbids get -inf.

    Called once per step with the context so far; from the second call on, the context's last
    token is the one chosen at the previous step, which the matcher consumes first. (A grammar
    is its own state machine, so this needs the tokens in order, not the whole context.)
    """
    state = {"first": True}

    def process(tokens: mx.array, logits: mx.array) -> mx.array:
        # Start this step's forward pass now, so it runs while the mask is computed here.
        mx.async_eval(logits)
        if state["first"]:
            state["first"] = False
        else:
            matcher.advance(int(tokens[-1].item()))
        allowed = mx.array(matcher.allowed(logits.shape[-1]))
        return mx.where(allowed, logits, mx.array(-float("inf"), dtype=logits.dtype))

    return process


def make_sequence_sampler(params: SamplingParams) -> Sampler:
    """A sampler for one sequence. With a seed it draws from its own random key, so its
    output does not depend on which other sequences share the batch."""
    if params.temperature == 0.0:
        return greedy_sampler  # one shared object: the batch samples greedy rows in one call
    filters: list[Callable[[mx.array], mx.array]] = []
    if 0.0 < params.top_p < 1.0:
        filters.append(lambda x: apply_top_p(x, params.top_p))
    if params.min_p > 0.0:
        filters.append(lambda x: apply_min_p(x, params.min_p, 1))
    if params.top_k > 0:
        filters.append(lambda x: apply_top_k(x, params.top_k))
    inv_temp = 1.0 / params.temperature
    seed = None if params.seed is None else params.seed % (2**64)
    state = {"key": mx.random.key(seed) if seed is not None else None}

    def sample(logprobs: mx.array) -> mx.array:
        for f in filters:
            logprobs = f(logprobs)
        key = state["key"]
        if key is None:
            return mx.random.categorical(logprobs * inv_temp)
        state["key"], sub = mx.random.split(key)
        return mx.random.categorical(logprobs * inv_temp, key=sub)

    return sample


def logits_processors(params: SamplingParams, prompt_len: int,
                      grammar: Grammar | None = None) -> list[LogitsProcessor]:
    """The logits processors one request asks for (in the order OpenAI applies them); a
    grammar's mask goes last, so nothing can lift a forbidden token back."""
    processors: list[LogitsProcessor] = []
    if params.logit_bias:
        processors.append(logit_bias(params.logit_bias))
    if params.presence_penalty or params.frequency_penalty:
        processors.append(openai_penalties(params.presence_penalty, params.frequency_penalty,
                                           prompt_len))
    if params.repetition_penalty != 1.0:
        processors.append(repetition_penalty(params.repetition_penalty))
    if grammar is not None:
        processors.append(grammar_mask(grammar.matcher()))
    return processors
