"""Sampling pieces for MLX: small pure functions over logits, testable without a model.

mlx-lm's ``sample_utils`` is used where it does the same thing: the greedy sampler and the
repetition penalty (``make_repetition_penalty``, over the last 64 tokens as llama.cpp's default
window). The rest is ours, each for a reason:

- Nothing here touches MLX's global random key: every sampled sequence draws from its own key
  (from its seed, or from the host's RNG when it has none), so a seeded sequence's tokens do
  not depend on which others share its batch. mlx-lm's ``make_sampler`` draws from the global
  key, and its top-k, top-p and min-p are compiled with the global random state as input and
  output. When one of those raised while being traced (``top_k`` >= the vocabulary), the global
  state was left a placeholder of the failed trace, and every later unseeded request failed
  with "[eval] Attempting to eval an array without a primitive" until restart (issue 13).
  Compiled, they were also traced again for every distinct float value a client sends. Our
  filters are total: ``top_k`` at or past the vocabulary keeps every token (mlx-lm's raises),
  and top-p always keeps the best token.
- Presence and frequency penalties count the completion only, as OpenAI documents them;
  mlx-lm's ``make_presence_penalty``/``make_frequency_penalty`` count the last 20 tokens,
  prompt included.
- ``logit_bias`` drops ids outside the logits row; mlx-lm's would index past it.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from typing import cast

import mlx.core as mx
from mlx_lm.sample_utils import greedy_sampler, make_repetition_penalty

from ...core.grammar import Matcher, MatcherSource
from ...core.types import SamplingParams

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]

REPETITION_CONTEXT = 64  # tokens the repetition penalty looks back over, prompt included


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


def logit_bias(bias: tuple[tuple[int, float], ...]) -> LogitsProcessor:
    """Add each bias to its token's logit. Ids outside the logits row are dropped (the
    protocol layer refuses them first; an index past the row must never reach MLX)."""

    def process(tokens: mx.array, logits: mx.array) -> mx.array:
        vocab = logits.shape[-1]
        kept = [(i, v) for i, v in bias if 0 <= i < vocab]
        if not kept:
            return logits
        ids = mx.array([i for i, _ in kept])
        values = mx.array([v for _, v in kept], dtype=logits.dtype)
        return logits.at[:, ids].add(values)

    return process


def top_k_filter(logprobs: mx.array, k: int) -> mx.array:
    """Keep the ``k`` most likely tokens; ``k`` at or past the vocabulary keeps them all."""
    vocab = logprobs.shape[-1]
    if k <= 0 or k >= vocab:
        return logprobs
    drop = mx.argpartition(-logprobs, kth=k - 1, axis=-1)[..., k:]
    return mx.put_along_axis(logprobs, drop, mx.array(-math.inf, logprobs.dtype), axis=-1)


def top_p_filter(logprobs: mx.array, top_p: float) -> mx.array:
    """Nucleus: keep the most likely tokens whose mass reaches ``top_p`` (at least one)."""
    sorted_lp = mx.sort(logprobs, axis=-1)
    probs = mx.exp(sorted_lp.astype(mx.float32))
    above = mx.cumsum(probs, axis=-1, reverse=True, inclusive=False)
    total = above[..., :1] + probs[..., :1]
    dropped = (above >= top_p * total).sum(axis=-1, keepdims=True)
    dropped = mx.minimum(dropped, logprobs.shape[-1] - 1)  # the best token always stays
    threshold = mx.take_along_axis(sorted_lp, dropped, axis=-1)
    return mx.where(logprobs < threshold, mx.array(-math.inf, logprobs.dtype), logprobs)


def min_p_filter(logprobs: mx.array, min_p: float) -> mx.array:
    """Drop tokens less likely than ``min_p`` times the most likely one (which stays)."""
    if min_p <= 0.0:
        return logprobs
    floor = mx.max(logprobs, axis=-1, keepdims=True) + math.log(min(min_p, 1.0))
    return mx.where(logprobs < floor, mx.array(-math.inf, logprobs.dtype), logprobs)


def grammar_mask(matcher: Matcher) -> LogitsProcessor:
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
            matcher.advance(cast(int, tokens[-1].item()))  # an int array's item is an int
        allowed = mx.array(matcher.allowed(logits.shape[-1]))
        return mx.where(allowed, logits, mx.array(-float("inf"), dtype=logits.dtype))

    return process


def make_sequence_sampler(params: SamplingParams) -> Sampler:
    """A sampler for one sequence, drawing from its own random key: from its seed (so its
    output does not depend on which other sequences share the batch), else from the host's
    RNG. MLX's global key is never used (see the module docstring)."""
    if params.temperature == 0.0:
        return greedy_sampler  # one shared object: the batch samples greedy rows in one call
    filters: list[Callable[[mx.array], mx.array]] = []
    if 0.0 < params.top_p < 1.0:
        filters.append(lambda x: top_p_filter(x, params.top_p))
    if params.min_p > 0.0:
        filters.append(lambda x: min_p_filter(x, params.min_p))
    if params.top_k > 0:
        filters.append(lambda x: top_k_filter(x, params.top_k))
    inv_temp = 1.0 / params.temperature
    seed = secrets.randbits(64) if params.seed is None else params.seed % (2**64)
    state = {"key": mx.random.key(seed)}

    def sample(logprobs: mx.array) -> mx.array:
        for f in filters:
            logprobs = f(logprobs)
        state["key"], sub = mx.random.split(state["key"])
        return mx.random.categorical(logprobs * inv_temp, key=sub)

    return sample


def logits_processors(
    params: SamplingParams, prompt_len: int, grammar: MatcherSource | None = None
) -> list[LogitsProcessor]:
    """The logits processors one request asks for (in the order OpenAI applies them); a
    grammar's mask goes last, so nothing can lift a forbidden token back."""
    processors: list[LogitsProcessor] = []
    if params.logit_bias:
        processors.append(logit_bias(params.logit_bias))
    if params.presence_penalty or params.frequency_penalty:
        processors.append(
            openai_penalties(params.presence_penalty, params.frequency_penalty, prompt_len)
        )
    if params.repetition_penalty != 1.0:
        processors.append(make_repetition_penalty(params.repetition_penalty, REPETITION_CONTEXT))
    if grammar is not None:
        processors.append(grammar_mask(grammar.matcher()))
    return processors
