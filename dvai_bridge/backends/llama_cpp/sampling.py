"""Sampling on the llama backend: a llama.cpp sampler chain per request, plus logprobs.

Picking the token runs in C (``llama_sampler_sample`` over the context's last logits row), in
the same order the MLX backend applies the request's fields: logit bias, repetition penalty
(the last 64 tokens, prompt included), OpenAI presence/frequency penalties (the completion
only), then top-k, top-p, min-p, temperature and the seeded draw (or greedy at temperature 0).

Logprobs are what the sampler saw before truncation and temperature: the model's logits with
the bias and penalties applied, log-softmaxed. They are computed in numpy from the same row,
only when a request asks for them; ``adjusted_logits`` is the pure function of that.
"""

from __future__ import annotations

import ctypes
from collections import Counter
from collections.abc import Sequence

import numpy as np

from ...core.types import SamplingParams

REPETITION_WINDOW = 64  # tokens the repetition penalty looks back over, as on the MLX backend
_RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp draws a random seed


def adjusted_logits(
    raw: np.ndarray, params: SamplingParams, generated: Sequence[int], recent: Sequence[int]
) -> np.ndarray:
    """The logits the sampler truncates and draws from (a new array; ``raw`` is untouched).

    ``generated`` is the completion so far (presence/frequency count over it, as OpenAI
    documents); ``recent`` is the repetition-penalty window (prompt tail + completion).
    """
    logits = np.array(raw, dtype=np.float32, copy=True)
    for token, bias in _known(params.logit_bias, len(logits)):
        logits[token] += bias
    if params.repetition_penalty != 1.0 and len(recent):
        ids = np.unique(np.asarray(recent[-REPETITION_WINDOW:], dtype=np.int64))
        sel = logits[ids]
        logits[ids] = np.where(
            sel <= 0, sel * params.repetition_penalty, sel / params.repetition_penalty
        )
    if (params.presence_penalty or params.frequency_penalty) and len(generated):
        counts = Counter(generated)
        ids = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        n = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
        logits[ids] -= params.frequency_penalty * n + params.presence_penalty
    return logits


def _known(bias: tuple[tuple[int, float], ...], n_vocab: int) -> list[tuple[int, float]]:
    """The biases whose token exists (the protocol layer refuses the others first; a negative
    id would index from the end of the row)."""
    return [(t, v) for t, v in bias if 0 <= t < n_vocab]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def top_entries(logprobs: np.ndarray, n: int) -> tuple[tuple[int, float], ...]:
    """The n most likely tokens with their logprobs, best first."""
    if n <= 0:
        return ()
    idx = np.argpartition(-logprobs, n - 1)[:n]
    idx = idx[np.argsort(-logprobs[idx], kind="stable")]
    return tuple((int(i), float(logprobs[i])) for i in idx)


class SamplerChain:
    """One request's llama.cpp sampler chain. ``sample`` accepts the token it returns."""

    def __init__(
        self, params: SamplingParams, *, n_vocab: int, prompt: Sequence[int], max_tokens: int
    ) -> None:
        import llama_cpp as lc

        self._lc = lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if not chain:
            raise MemoryError("llama_sampler_chain_init failed")
        self._chain = chain
        # Nothing but the argmax of the logits: the batch takes it from the row itself,
        # the same token (the first of equal maxima, as llama.cpp's greedy sampler) for less.
        self.argmax_only = (
            params.greedy
            and not _known(params.logit_bias, n_vocab)
            and params.repetition_penalty == 1.0
            and not (params.presence_penalty or params.frequency_penalty)
        )
        try:
            self._build(params, n_vocab, prompt, max_tokens)
        except BaseException:
            self.close()
            raise

    def _build(
        self, p: SamplingParams, n_vocab: int, prompt: Sequence[int], max_tokens: int
    ) -> None:
        lc, add = self._lc, self._add
        known = _known(p.logit_bias, n_vocab)
        if known:
            bias = (lc.llama_logit_bias * len(known))()
            for i, (token, value) in enumerate(known):
                bias[i].token, bias[i].bias = token, value
            add(lc.llama_sampler_init_logit_bias(n_vocab, len(known), bias))
        if p.repetition_penalty != 1.0:
            rep = lc.llama_sampler_init_penalties(
                n_vocab, REPETITION_WINDOW, p.repetition_penalty, 0.0, 0.0
            )
            for token in prompt[-REPETITION_WINDOW:]:  # the window starts in the prompt
                lc.llama_sampler_accept(rep, token)
            add(rep)
        if p.presence_penalty or p.frequency_penalty:
            add(
                lc.llama_sampler_init_penalties(
                    n_vocab, max(1, max_tokens), 1.0, p.frequency_penalty, p.presence_penalty
                )
            )
        if p.greedy:
            add(lc.llama_sampler_init_greedy())
            return
        if 0 < p.top_k < n_vocab:  # at or past the vocabulary it keeps every token
            add(lc.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            add(lc.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            add(lc.llama_sampler_init_min_p(p.min_p, 1))
        if p.temperature != 1.0:
            add(lc.llama_sampler_init_temp(p.temperature))
        seed = _RANDOM_SEED if p.seed is None else p.seed & 0xFFFFFFFF
        if seed == _RANDOM_SEED and p.seed is not None:
            seed = 0xFFFFFFFE  # a fixed seed must stay fixed
        add(lc.llama_sampler_init_dist(seed))

    def _add(self, sampler: ctypes.c_void_p) -> None:
        if not sampler:
            raise MemoryError("a llama.cpp sampler could not be created")
        self._lc.llama_sampler_chain_add(self._chain, sampler)

    def sample(self, ctx: ctypes.c_void_p, idx: int = -1) -> int:
        """Pick from the logits row of output ``idx`` of the last decode (-1: the last)."""
        return int(self._lc.llama_sampler_sample(self._chain, ctx, idx))

    def close(self) -> None:
        if self._chain:
            self._lc.llama_sampler_free(self._chain)
            self._chain = None
