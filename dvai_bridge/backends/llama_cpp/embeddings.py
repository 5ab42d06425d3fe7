"""Embeddings from a GGUF model: a second llama.cpp context on the same loaded weights.

The context is created with ``embeddings=True`` and the model's own pooling (mean when the GGUF
declares none, as for chat models), so the vectors are pooled in llama.cpp. It shares the
weights with the chat context but not the KV cache, so embedding requests neither wait for
nor disturb a generation in progress (llama.cpp allows several contexts on one model).
Several inputs go into one ``llama_decode`` as separate sequences.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...core.embedder import Embedder
from ...errors import BackendError, ModelLoadFailed, ServiceUnavailable

log = logging.getLogger(__name__)

MAX_EMBED_TOKENS = 1024  # longest input; llama.cpp keeps a logits row per input token
MAX_SEQUENCES = 16  # inputs per llama_decode


class LlamaEmbedder(Embedder):
    def __init__(self, llm: Any, *, model_id: str, threads: int, max_tokens: int) -> None:
        super().__init__()
        import llama_cpp as lc

        self._lc = lc
        self._llm = llm
        self.model_id = model_id
        model = llm.model
        vocab = lc.llama_model_get_vocab(model)
        self.vocab_size = int(lc.llama_vocab_n_tokens(vocab))
        self.dimensions = int(lc.llama_model_n_embd(model))
        self.max_tokens = min(max_tokens, MAX_EMBED_TOKENS)
        self._bos = int(lc.llama_vocab_bos(vocab))
        self._eos = int(lc.llama_vocab_sep(vocab))
        if self._eos < 0:
            self._eos = int(lc.llama_vocab_eos(vocab))
        self._add_bos = bool(lc.llama_vocab_get_add_bos(vocab)) and self._bos >= 0
        self._add_eos = bool(lc.llama_vocab_get_add_eos(vocab)) and self._eos >= 0
        self._encoder_only = bool(lc.llama_model_has_encoder(model)) and not bool(
            lc.llama_model_has_decoder(model)
        )

        md = llm.metadata
        arch = md.get("general.architecture", "")
        declared = md.get(f"{arch}.pooling_type")
        pooling = int(declared) if declared is not None else lc.LLAMA_POOLING_TYPE_MEAN
        if pooling not in (
            lc.LLAMA_POOLING_TYPE_MEAN,
            lc.LLAMA_POOLING_TYPE_CLS,
            lc.LLAMA_POOLING_TYPE_LAST,
        ):
            pooling = lc.LLAMA_POOLING_TYPE_MEAN
        self.pooling = {1: "mean", 2: "cls", 3: "last"}[pooling]
        self._n_seq = max(1, min(MAX_SEQUENCES, int(lc.llama_max_parallel_sequences())))

        params = lc.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = self.max_tokens
        params.n_seq_max = self._n_seq
        params.n_threads = params.n_threads_batch = threads
        params.embeddings = True
        params.pooling_type = pooling
        params.kv_unified = True
        params.no_perf = True
        self._ctx = lc.llama_init_from_model(model, params)
        if not self._ctx:
            raise ModelLoadFailed(
                f"llama.cpp could not create an embedding context for {model_id}."
            )
        self._batch = lc.llama_batch_init(self.max_tokens, 0, 1)
        self._closed = False
        log.info(
            "llama embeddings: %s, %d dimensions, %s pooling, up to %d tokens",
            model_id,
            self.dimensions,
            self.pooling,
            self.max_tokens,
        )

    def tokenize(self, text: str) -> list[int]:
        return self.frame(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def frame(self, tokens: Sequence[int]) -> list[int]:
        out = list(tokens)
        if self._add_bos and (not out or out[0] != self._bos):
            out.insert(0, self._bos)
        if self._add_eos and out[-1] != self._eos:
            out.append(self._eos)
        return out

    def _embed(self, batch: list[list[int]]) -> np.ndarray:
        if self._closed:
            raise ServiceUnavailable("The server is shutting down.")
        out = np.empty((len(batch), self.dimensions), dtype=np.float32)
        group: list[int] = []
        used = 0
        for i, tokens in enumerate(batch):
            if group and (used + len(tokens) > self.max_tokens or len(group) == self._n_seq):
                self._run(batch, group, out)
                group, used = [], 0
            group.append(i)
            used += len(tokens)
        self._run(batch, group, out)
        return out

    def _run(self, batch: list[list[int]], group: list[int], out: np.ndarray) -> None:
        lc, b = self._lc, self._batch
        n = 0
        for seq, i in enumerate(group):
            for pos, token in enumerate(batch[i]):
                b.token[n] = token
                b.pos[n] = pos
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = seq
                b.logits[n] = 1
                n += 1
        b.n_tokens = n
        mem = lc.llama_get_memory(self._ctx)
        if mem:
            lc.llama_memory_clear(mem, True)
        run = lc.llama_encode if self._encoder_only else lc.llama_decode
        rc = run(self._ctx, b)
        if rc != 0:
            raise BackendError(f"llama.cpp failed to embed (code {rc}).")
        for seq, i in enumerate(group):
            ptr = lc.llama_get_embeddings_seq(self._ctx, seq)
            if not ptr:
                raise BackendError("llama.cpp returned no pooled embedding.")
            out[i] = np.ctypeslib.as_array(ptr, shape=(self.dimensions,))

    def close(self) -> None:
        with self.lock:
            if self._closed:
                return
            self._closed = True
            self._lc.llama_batch_free(self._batch)
            self._lc.llama_free(self._ctx)
