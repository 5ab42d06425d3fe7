"""llama.cpp pieces the batch is built from: a many-sequence context, a ``llama_batch`` whose
arrays are numpy's, and KV snapshots of one sequence for the prompt cache.

The context holds one KV pool shared by every sequence (``kv_unified``): a sequence may grow to
the whole context while the others are short, as in llama-server's default.

The prompt cache keeps snapshots in host memory (``llama_state_seq_get_data``), not extra
sequences inside the pool (``llama_memory_seq_cp``): a copy inside the pool is faster to take
and to hand out (no bytes move), but every cached conversation would hold cells the running
sequences need, and the pool is the context the model was started with. Measured on SmolLM2
135M, 2 busy cores: a 1,000-token sequence (23 MB) saves in 8.6 ms and restores in 1.6 ms
(seq_cp: 0.06 ms), against 2.2-3.2 s to prefill it again (benchmarks/llama_kv.py).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import ModelLoadFailed


def open_context(
    lc: Any, model: Any, *, n_ctx: int, n_seq: int, n_batch: int, n_ubatch: int, threads: int
) -> Any:
    """A context for ``n_seq`` sequences sharing ``n_ctx`` KV cells; one ``llama_decode``
    takes up to ``n_batch`` tokens and computes them ``n_ubatch`` at a time."""
    params = lc.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = n_batch
    params.n_ubatch = n_ubatch
    params.n_seq_max = n_seq
    params.n_threads = params.n_threads_batch = threads
    params.kv_unified = True
    params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_AUTO  # as llama-server
    params.no_perf = True
    ctx = lc.llama_init_from_model(model, params)
    if not ctx:
        raise ModelLoadFailed(
            f"llama.cpp could not create a context for {n_seq} sequences of {n_ctx} tokens."
        )
    return ctx


class TokenBatch:
    """A ``llama_batch`` over numpy arrays: filled with slices, never freed by llama.cpp.

    Each token belongs to one sequence (``n_seq_id`` is 1 throughout; ``seq_id[i]`` points at
    ``seq[i]``)."""

    def __init__(self, lc: Any, capacity: int) -> None:
        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        self._n_seq_id = np.ones(capacity, dtype=np.int32)
        i32 = ctypes.POINTER(ctypes.c_int32)
        base = self.seq.ctypes.data
        self._seq_ptrs = (i32 * capacity)(
            *(ctypes.cast(base + 4 * i, i32) for i in range(capacity))
        )
        b = self.struct = lc.llama_batch()
        b.token = self.token.ctypes.data_as(i32)
        b.embd = None
        b.pos = self.pos.ctypes.data_as(i32)
        b.n_seq_id = self._n_seq_id.ctypes.data_as(i32)
        b.seq_id = ctypes.cast(self._seq_ptrs, ctypes.POINTER(i32))
        b.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, seq: int, tokens: list[int], start: int, want_last: bool) -> int:
        """Append ``tokens`` of sequence ``seq`` at positions ``start``...; the index of the
        last one (its logits are computed when ``want_last``)."""
        a, k = self.n, len(tokens)
        b = a + k
        self.token[a:b] = tokens
        self.pos[a:b] = np.arange(start, start + k, dtype=np.int32)
        self.seq[a:b] = seq
        self.logits[a:b] = 0
        self.logits[b - 1] = 1 if want_last else 0
        self.n = b
        return b - 1

    def ready(self) -> Any:
        self.struct.n_tokens = self.n
        return self.struct


@dataclass
class Snapshot:
    """One sequence's KV as llama.cpp serializes it, and how many of its positions count
    (trimming is lazy: the positions past ``n`` are dropped when it is restored)."""

    data: bytearray
    n: int


class SnapshotOps:
    """How the engine's ``PromptCache`` measures, copies and trims llama.cpp snapshots."""

    def nbytes(self, snapshot: Snapshot) -> int:
        return len(snapshot.data)

    def copy(self, snapshot: Snapshot) -> Snapshot:
        return Snapshot(snapshot.data, snapshot.n)  # the bytes are never written: shared

    def trim(self, snapshot: Snapshot, n: int) -> bool:
        snapshot.n -= n
        return snapshot.n > 0


def save_sequence(lc: Any, ctx: Any, seq: int, n: int) -> Snapshot | None:
    size = int(lc.llama_state_seq_get_size(ctx, seq))
    if size <= 0:
        return None
    data = bytearray(size)
    written = lc.llama_state_seq_get_data(ctx, (ctypes.c_uint8 * size).from_buffer(data), size, seq)
    if written != size:
        return None
    return Snapshot(data, n)


def restore_sequence(lc: Any, ctx: Any, mem: Any, seq: int, snapshot: Snapshot) -> bool:
    """Put ``snapshot`` into sequence ``seq`` (empty before), cut back to ``snapshot.n``
    positions. False (and ``seq`` empty again) when llama.cpp cannot."""
    size = len(snapshot.data)
    read = lc.llama_state_seq_set_data(
        ctx, (ctypes.c_uint8 * size).from_buffer(snapshot.data), size, seq
    )
    if (
        read
        and lc.llama_memory_seq_rm(mem, seq, snapshot.n, -1)
        and lc.llama_memory_seq_pos_max(mem, seq) == snapshot.n - 1
    ):
        return True
    lc.llama_memory_seq_rm(mem, seq, -1, -1)
    return False
