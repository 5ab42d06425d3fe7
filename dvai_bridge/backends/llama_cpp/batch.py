"""Continuous batching on llama.cpp, with a prompt cache, as llama-server does it.

Every running sequence has a llama.cpp sequence id (a slot) in one context whose KV pool they
share. Each ``step`` is one ``llama_decode``: the next token of every sequence that is
generating, then as many prompt tokens of sequences still prefilling as the chunk allows
(``prefill_chunk``, oldest first), so a long prompt is read in chunks between decode steps
instead of stalling them. Each sequence samples from its own llama.cpp sampler chain (and its
own grammar matcher) on its own row of the logits.

A sequence that leaves frees its slot and its KV cells at once; its KV is first copied into the
prompt cache (host memory, ``kv.Snapshot``), so the next turn of that conversation, or another
conversation with the same system prompt, prefills only what is new.

When the pool has no room for a step (sequences together longer than the context), the newest
sequence gives its cells back and waits; it is evaluated again, from its tokens so far, when
another one leaves (vLLM calls this preemption by recomputation). Each sequence alone always
fits: the protocol caps prompt + completion at the context.

Numerics: batched greedy output equals the same sequence decoded alone, and a cached prefix
gives the tokens an uncached one gives, as long as llama.cpp computes a token's row the same
whatever else is in the step. On the CPU it does for the matmuls (each row is its own dot
products), but attention sums over a sequence's KV cells in the order they lie in the pool,
which depends on what else was decoded before; the last bits of a logit can differ and a
near-tie can flip. tests/llama/test_batch.py compares token for token and, where two runs part,
checks that the top two candidates were within a hair of each other (docs/backends.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...core.backend import Batch
from ...core.prompt_cache import PromptCache
from ...core.types import GenerationRequest, SamplingParams, TokenChoice
from ...errors import BackendError, ContextLengthExceeded, InvalidRequest
from .kv import Snapshot, SnapshotOps, TokenBatch, open_context, restore_sequence, save_sequence
from .sampling import REPETITION_WINDOW, SamplerChain, adjusted_logits, log_softmax, top_entries

log = logging.getLogger(__name__)

# On the CPU a step is computed at most this many tokens at a time: from 64 query rows
# (GGML_FA_TILE_Q) ggml's flash attention switches to a tiled kernel that rounds differently,
# so a token's KV would depend on how many others shared its pass (see the module docstring).
CPU_UBATCH = 63


def checked_prompt(request: GenerationRequest, vocab: int, n_ctx: int) -> list[int]:
    """The request's prompt, refused before it takes a slot: empty, ids outside the
    vocabulary (llama.cpp would read past its tables), or no room left in the context."""
    prompt = list(request.prompt_tokens)
    if not prompt:
        raise InvalidRequest("The prompt is empty.", param="prompt")
    if any(not 0 <= t < vocab for t in prompt):
        raise InvalidRequest("The prompt holds token ids outside the vocabulary.", param="prompt")
    if len(prompt) >= n_ctx:
        raise ContextLengthExceeded(
            f"This model's context is {n_ctx} tokens; the prompt has {len(prompt)}.",
            param="messages",
        )
    return prompt


@dataclass(eq=False)
class _Seq:
    key: int
    slot: int  # the llama.cpp sequence id
    order: int  # admission order: the newest gives way when the pool is full
    tokens: list[int]  # the prompt, then each sampled token
    n_prompt: int
    chain: SamplerChain
    params: SamplingParams
    want: int  # top logprobs wanted (-1: no logprobs)
    matcher: Any = None
    n_kv: int = 0  # tokens[:n_kv] are in the KV cache
    waiting: bool = False  # gave its cells back; evaluated again when another one leaves
    sound: bool = True  # its KV may be cached when it leaves


class LlamaBatch(Batch):
    def __init__(
        self,
        lc: Any,
        model: Any,
        *,
        vocab_size: int,
        n_ctx: int,
        threads: int,
        on_cpu: bool,
        max_batch: int,
        prefill_chunk: int,
        prompt_cache_bytes: int,
    ) -> None:
        """``lc``: the ``llama_cpp`` module; ``model``: the loaded ``llama_model`` its context
        is opened on."""
        self._lc = lc
        self.vocab_size = vocab_size
        self.n_seq = max(1, min(max_batch, int(lc.llama_max_parallel_sequences())))
        self.chunk = max(1, prefill_chunk)
        self.n_ctx = n_ctx
        n_batch = max(self.chunk, self.n_seq)
        self.n_ubatch = min(n_batch, CPU_UBATCH) if on_cpu else n_batch
        self.ctx = open_context(
            lc,
            model,
            n_ctx=self.n_ctx,
            n_seq=self.n_seq,
            n_batch=n_batch,
            n_ubatch=self.n_ubatch,
            threads=threads,
        )
        self.mem = lc.llama_get_memory(self.ctx)
        self.batch = TokenBatch(lc, max(self.chunk, self.n_seq))
        self.cache: PromptCache[Snapshot] = PromptCache(SnapshotOps(), max_bytes=prompt_cache_bytes)
        self._free = list(range(self.n_seq - 1, -1, -1))
        self._seqs: dict[int, _Seq] = {}
        self._admitted = 0
        self.preempted = 0  # sequences that gave their cells back (a measure of pool pressure)

    # -- joining and leaving -------------------------------------------------------------
    def add(self, key: int, request: GenerationRequest) -> int:
        prompt = checked_prompt(request, self.vocab_size, self.n_ctx)
        if not self._free:
            raise BackendError(f"All {self.n_seq} sequence slots are in use.")
        matcher = request.grammar.matcher() if request.grammar is not None else None
        chain = SamplerChain(
            request.sampling,
            n_vocab=self.vocab_size,
            prompt=prompt,
            max_tokens=request.max_tokens,
        )
        slot = self._free.pop()
        try:
            cached = self._restore(slot, prompt)
        except BaseException:
            self._free.append(slot)
            chain.close()
            raise
        self._admitted += 1
        self._seqs[key] = _Seq(
            key,
            slot,
            self._admitted,
            prompt,
            len(prompt),
            chain,
            request.sampling,
            request.top_logprobs if request.logprobs else -1,
            matcher,
            n_kv=cached,
        )
        return cached

    def _restore(self, slot: int, prompt: list[int]) -> int:
        snapshot, _ = self.cache.fetch_nearest(prompt)
        if snapshot is None:
            return 0
        if restore_sequence(self._lc, self.ctx, self.mem, slot, snapshot):
            return snapshot.n
        log.info("a cached prefix of %d tokens could not be restored; prefilling it", snapshot.n)
        return 0

    def remove(self, key: int) -> None:
        seq = self._seqs.pop(key)
        try:
            if seq.sound and seq.n_kv >= self.cache.min_reuse:
                snapshot = save_sequence(self._lc, self.ctx, seq.slot, seq.n_kv)
                if snapshot is not None:
                    self.cache.insert(seq.tokens[: seq.n_kv], snapshot)
        finally:
            self._lc.llama_memory_seq_rm(self.mem, seq.slot, -1, -1)
            self._free.append(seq.slot)
            seq.chain.close()
            for other in self._seqs.values():  # cells are free: the waiting try again
                other.waiting = False

    # -- one step ------------------------------------------------------------------------
    def step(self) -> list[tuple[int, TokenChoice]]:
        while True:
            rows = self._fill()
            if not rows:
                return []
            rc = self._lc.llama_decode(self.ctx, self.batch.ready())
            if rc == 0:
                break
            for seq, start, _, _ in rows:  # nothing of a failed step is trusted
                self._lc.llama_memory_seq_rm(self.mem, seq.slot, start, -1)
            if rc != 1:
                for seq in self._seqs.values():
                    seq.sound = False
                raise BackendError(f"llama_decode returned {rc}")
            self._give_way()
        out = []
        for seq, _, count, idx in rows:
            seq.n_kv += count
            if idx is not None:
                out.append((seq.key, self._sample(seq, idx)))
        return out

    def _fill(self) -> list[tuple[_Seq, int, int, int | None]]:
        """Lay out the next decode: (sequence, first position, tokens, logits index)."""
        batch = self.batch
        batch.clear()
        rows: list[tuple[_Seq, int, int, int | None]] = []
        running = sorted((s for s in self._seqs.values() if not s.waiting), key=lambda s: s.order)
        for seq in running:  # generating: one token each
            if len(seq.tokens) - seq.n_kv == 1:
                idx = batch.add(seq.slot, seq.tokens[-1:], seq.n_kv, True)
                rows.append((seq, seq.n_kv, 1, idx))
        for seq in running:  # prefilling: what room is left, oldest first
            room = batch.capacity - batch.n
            pending = len(seq.tokens) - seq.n_kv
            if pending <= 1 or room <= 0:
                continue
            take = min(pending, room)
            last = take == pending
            idx = batch.add(seq.slot, seq.tokens[seq.n_kv : seq.n_kv + take], seq.n_kv, last)
            rows.append((seq, seq.n_kv, take, idx if last else None))
        return rows

    def _give_way(self) -> None:
        """The pool is full: the newest running sequence hands its cells back and waits."""
        running = [s for s in self._seqs.values() if not s.waiting]
        if len(running) <= 1:
            raise BackendError(f"The KV cache ({self.n_ctx} tokens) has no room for one sequence.")
        newest = max(running, key=lambda s: s.order)
        self._lc.llama_memory_seq_rm(self.mem, newest.slot, -1, -1)
        newest.n_kv = 0
        newest.waiting = True
        self.preempted += 1
        log.info("KV pool full: a sequence of %d tokens waits for room", len(newest.tokens))

    def _sample(self, seq: _Seq, idx: int) -> TokenChoice:
        # The logits row is read only when something looks at it (each use below is under
        # one of these conditions, so `row is not None` there changes nothing).
        row = None
        if seq.matcher is not None or seq.want >= 0 or seq.chain.argmax_only:
            ptr = self._lc.llama_get_logits_ith(self.ctx, idx)
            row = np.ctypeslib.as_array(ptr, shape=(self.vocab_size,))
        if row is not None and seq.chain.argmax_only and seq.matcher is None and seq.want < 0:
            token = int(np.argmax(row))
            seq.tokens.append(token)
            return TokenChoice(token)
        if row is not None and seq.matcher is not None:  # -inf in place: read by what follows
            row[~seq.matcher.allowed(self.vocab_size)] = -np.inf
        logprobs = None
        if row is not None and seq.want >= 0:
            generated = seq.tokens[seq.n_prompt :]
            recent = seq.tokens[-REPETITION_WINDOW:] if seq.params.repetition_penalty != 1.0 else ()
            logprobs = log_softmax(adjusted_logits(row, seq.params, generated, recent))
        token = seq.chain.sample(self.ctx, idx)
        if seq.matcher is not None:
            seq.matcher.advance(token)
        seq.tokens.append(token)
        if logprobs is None:
            return TokenChoice(token)
        return TokenChoice(token, float(logprobs[token]), top_entries(logprobs, seq.want))

    # -- the rest ------------------------------------------------------------------------
    def cache_stats(self) -> tuple[int, int]:
        return self.cache.nbytes, len(self.cache)

    def close(self) -> None:
        for seq in self._seqs.values():
            seq.chain.close()
        self._seqs.clear()
        self.cache.clear()
        if self.ctx:
            self._lc.llama_free(self.ctx)
            self.ctx = None
