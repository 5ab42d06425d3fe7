"""Continuous batching on MLX through mlx-lm's ``BatchGenerator``, with a prompt cache.

mlx-lm does the batched prefill and decode (padding, per-sequence samplers and logits
processors, per-sequence KV extraction). We add what it leaves to its server: the mapping from
engine keys to its uids, the prompt cache lookup before a sequence joins, and keeping each
leaving sequence's KV so the next turn of the conversation (or another conversation with the
same system prompt) prefills only what is new.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

from ...core.backend import Batch
from ...core.prompt_cache import PromptCache
from ...core.types import GenerationRequest, TokenChoice
from . import sampling
from .logprobs import token_choice

log = logging.getLogger(__name__)

KV = list[Any]  # one mlx-lm cache object per layer


class MLXCacheOps:
    """How the engine's ``PromptCache`` measures, copies and trims mlx-lm KV caches."""

    def nbytes(self, snapshot: KV) -> int:
        return sum(c.nbytes for c in snapshot)

    def copy(self, snapshot: KV) -> KV:
        return copy.deepcopy(snapshot)

    def trim(self, snapshot: KV, n: int) -> bool:
        if not can_trim_prompt_cache(snapshot):
            return False
        return trim_prompt_cache(snapshot, n) == n


class MLXBatch(Batch):
    def __init__(
        self,
        model: Any,
        *,
        tick: Callable[[], None] | None = None,
        max_batch: int,
        prefill_step: int,
        prompt_cache_bytes: int,
    ) -> None:
        """``model``: the mlx-lm model; ``tick``: called before each step (the CPU tuning's
        BLAS thread governor catches up there)."""
        self._tick = tick
        self.gen = BatchGenerator(
            model,
            completion_batch_size=max_batch,
            prefill_batch_size=max_batch,
            prefill_step_size=prefill_step,
        )
        self.cache: PromptCache[KV] = PromptCache(MLXCacheOps(), max_bytes=prompt_cache_bytes)
        self._uid: dict[int, int] = {}  # engine key -> mlx-lm uid
        self._key: dict[int, int] = {}  # mlx-lm uid -> engine key
        self._top: dict[int, int] = {}  # engine key -> top logprobs wanted (-1: none)
        self._finished: set[int] = set()  # uids mlx-lm already retired (length)

    def add(self, key: int, request: GenerationRequest) -> int:
        tokens = list(request.prompt_tokens)
        snapshot, rest = self.cache.fetch_nearest(tokens)
        cached = len(tokens) - len(rest)
        (uid,) = self.gen.insert(
            [rest],
            max_tokens=[request.max_tokens],
            caches=[snapshot],  # type: ignore[list-item]  # None per row: mlx-lm's own default
            all_tokens=[tokens[:cached]],
            samplers=[self._sampler(key, request)],
            logits_processors=[self._processors(key, request)],
        )
        self._uid[key], self._key[uid] = uid, key
        self._top[key] = request.top_logprobs if request.logprobs else -1
        return cached

    def _sampler(self, key: int, request: GenerationRequest) -> sampling.Sampler:
        return sampling.make_sequence_sampler(request.sampling)

    def _processors(self, key: int, request: GenerationRequest) -> list[sampling.LogitsProcessor]:
        return sampling.logits_processors(
            request.sampling, len(request.prompt_tokens), request.grammar
        )

    def step(self) -> list[tuple[int, TokenChoice]]:
        if self._tick is not None:
            self._tick()
        _, responses = self.gen.next()
        out = []
        for r in responses:
            key = self._key.get(r.uid)
            if key is None:
                continue
            out.append((key, token_choice(int(r.token), r.logprobs, self._top[key])))
            if r.finish_reason is not None:  # mlx-lm retired it (its max_tokens)
                self._finished.add(r.uid)
                self._keep(r.all_tokens, r.prompt_cache)
        return out

    def remove(self, key: int) -> None:
        uid = self._uid.pop(key)
        self._key.pop(uid, None)
        self._top.pop(key, None)
        if uid in self._finished:
            self._finished.discard(uid)
            return
        caches = self.gen.remove([uid], return_prompt_caches=True)
        if uid in caches:
            snapshot, tokens = caches[uid]
            self._keep(tokens, snapshot)

    def _keep(self, tokens: list[int] | None, snapshot: KV | None) -> None:
        if not tokens or not snapshot:
            return
        mx.eval([c.state for c in snapshot])
        self.cache.insert(list(tokens), snapshot)

    def cache_stats(self) -> tuple[int, int]:
        return self.cache.nbytes, len(self.cache)

    def close(self) -> None:
        self.gen.close()
        self.cache.clear()
