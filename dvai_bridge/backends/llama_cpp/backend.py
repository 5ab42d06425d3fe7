"""The llama backend: a GGUF file through llama-cpp-python.

With the engine batching (its default), sequences run in ``batch.py``, many to a context. What
follows is the one-at-a-time path (``max_batch_size=1``), ``generate``. The model is loaded
with ``llama_cpp.Llama``; generation drives llama.cpp's C API on that
context directly (``llama_decode``, a sampler chain, ``llama_get_logits_ith``) rather than
``Llama.generate``, for three reasons: the prompt is evaluated in chunks with the caller's cancel
token checked between chunks and inside them (llama.cpp's abort callback), logprobs come from
the last logits row without ``logits_all`` (which would keep a vocab-sized row per token), and
OpenAI's presence/frequency penalties count the completion only. The KV cache keeps the last
sequence: the next prompt reuses its longest common prefix, so a multi-turn chat evaluates only
the new turn. (A request with a ``seed`` is evaluated from scratch instead, so that the same seed
gives the same text: llama.cpp's logits differ in the last bits between a batch and a single
token, as llama-server documents for its ``cache_prompt``.)
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ...core.backend import Backend, Batch, Step
from ...core.types import BatchLimits, CancelToken, GenerationRequest, Prefilled, TokenChoice
from ...errors import (
    BackendError,
    BackendUnavailable,
    BridgeError,
    ContextLengthExceeded,
    ModelLoadFailed,
)
from ...progress import ProgressEvent, ProgressHub
from ..cpu_cores import physical_cores
from ..options import BackendLoad
from .batch import LlamaBatch, checked_prompt
from .gguf import resolve_gguf
from .options import LlamaOptions
from .sampling import SamplerChain, adjusted_logits, log_softmax, top_entries
from .tokenizer import LlamaTokenizer

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 8192  # when context_size is not given: the KV cache is allocated up front


class _Aborted(Exception):
    """The caller cancelled while the prompt was being evaluated."""


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise BackendUnavailable(
            f"llama-cpp-python is not installed ({exc}). Install it with "
            "pip install 'dvai-bridge[llama]' (it compiles llama.cpp once, a few minutes).",
        ) from None
    except OSError as exc:
        raise BackendUnavailable(f"llama-cpp-python cannot load here: {exc}") from None
    return llama_cpp


@contextmanager
def _boundary(what: str) -> Iterator[None]:
    """Translate llama.cpp failures into BridgeErrors, once, here."""
    try:
        yield
    except (BridgeError, _Aborted, GeneratorExit):
        raise
    except Exception as exc:
        log.exception("llama.cpp failed while %s", what)
        raise BackendError(f"llama.cpp failed while {what}: {exc}") from exc


class LlamaBackend(Backend):
    name = "llama"

    def __init__(
        self,
        llm: Any,
        *,
        model_id: str,
        threads: int,
        embedding_mode: bool,
        n_batch: int,
    ) -> None:
        lc = _import_llama_cpp()
        self._lc = lc
        self.llm = llm
        self.model_id = model_id
        self.threads = threads
        self.n_batch = n_batch  # prompt tokens per llama_decode call (and between cancel checks)
        self.context_length = int(llm.n_ctx())
        self._ctx = llm.ctx
        self.tokenizer = LlamaTokenizer(lc, llm, model_id=model_id)
        self.vocab_size: int = self.tokenizer.vocab_size  # the sampler's and the batch's rows
        # The KV cache holds these tokens at positions 0..len-1 (sequence 0).
        self._cached: list[int] = []
        self._batch = lc.llama_batch_init(n_batch, 0, 1)
        for i in range(n_batch):
            self._batch.seq_id[i][0] = 0
            self._batch.n_seq_id[i] = 1
        self._abort_flag: CancelToken | None = None
        self._abort_cb = lc.ggml_abort_callback(self._should_abort)
        self._no_abort = lc.ggml_abort_callback()
        self._closed = False
        self.embedder = None
        if embedding_mode:
            from .embeddings import LlamaEmbedder

            self.embedder = LlamaEmbedder(
                llm, model_id=model_id, threads=threads, max_tokens=self.context_length
            )
        # Read by the protocol layer: why /v1/embeddings is off, and how to turn it on.
        self.embedding_hint = None if self.embedder else embedding_mode_hint(model_id)

    # -- loading ---------------------------------------------------------------------
    @classmethod
    def load(cls, load: BackendLoad, progress: ProgressHub) -> LlamaBackend:
        options = load.options
        assert isinstance(options, LlamaOptions)
        _import_llama_cpp()
        from llama_cpp import Llama

        path, model_id = resolve_gguf(load.model_path, progress)
        threads = options.threads or physical_cores()
        progress.emit(
            ProgressEvent(
                "load",
                message=f"Loading {model_id} on llama.cpp ({threads} threads, "
                f"{options.gpu_layers} GPU layers)",
            )
        )
        try:
            native = _native_context(path)
            n_ctx = min(load.context_size or min(native, DEFAULT_CONTEXT), native)
            llm = Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=options.n_batch,
                n_ubatch=options.n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=options.gpu_layers,
                logits_all=False,
                embedding=False,
                verbose=False,
            )
        except BridgeError:
            raise
        except Exception as exc:
            raise ModelLoadFailed(f"llama.cpp could not load {path}: {exc}") from exc
        try:
            backend = cls(
                llm,
                model_id=model_id,
                threads=threads,
                embedding_mode=options.embedding_mode,
                n_batch=options.n_batch,
            )
        except BridgeError:
            llm.close()
            raise
        except Exception as exc:
            llm.close()
            raise ModelLoadFailed(f"llama.cpp could not prepare {model_id}: {exc}") from exc
        if options.gpu_layers != 0 and bool(backend._lc.llama_supports_gpu_offload()):
            backend.device_kind = "metal" if sys.platform == "darwin" else "cuda"
        log.info(
            "llama backend: %s, context %d, %d threads, %d GPU layers%s",
            model_id,
            backend.context_length,
            threads,
            options.gpu_layers,
            ", embeddings on" if backend.embedder else "",
        )
        return backend

    # -- evaluation ------------------------------------------------------------------
    def _should_abort(self, _data: Any) -> bool:
        flag = self._abort_flag
        return flag is not None and flag.cancelled

    def _decode(self, tokens: Sequence[int]) -> None:
        """Append ``tokens`` (at most ``n_batch``) to sequence 0; logits for the last one."""
        n, pos = len(tokens), len(self._cached)
        batch = self._batch
        batch.n_tokens = n
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = pos + i
            batch.logits[i] = 0
        batch.logits[n - 1] = 1
        rc = self._lc.llama_decode(self._ctx, batch)
        if rc == 0:
            self._cached.extend(tokens)
            return
        # Whatever part of the batch was stored, the cache is trusted only up to _cached.
        self._lc.llama_memory_seq_rm(self._lc.llama_get_memory(self._ctx), 0, pos, -1)
        if rc == 2:
            raise _Aborted
        if rc == 1:
            raise ContextLengthExceeded(
                f"The context ({self.context_length} tokens) has no room for this sequence."
            )
        raise BackendError(f"llama_decode returned {rc}")

    def _reuse_prefix(self, prompt: Sequence[int]) -> int:
        """Drop what the KV cache holds past the longest prefix it shares with ``prompt``."""
        cached = self._cached
        n = 0
        limit = max(0, min(len(cached), len(prompt) - 1))  # the last token is always decoded
        while n < limit and cached[n] == prompt[n]:
            n += 1
        if n < len(cached):
            mem = self._lc.llama_get_memory(self._ctx)
            if not self._lc.llama_memory_seq_rm(mem, 0, n, -1):
                self._lc.llama_memory_clear(mem, True)  # recurrent state: start over
                n = 0
            del cached[n:]
        return n

    def _prefill(self, prompt: Sequence[int], cancel: CancelToken, *, reuse: bool = True) -> int:
        """Evaluate ``prompt`` after what the KV cache already holds of it; returns how many
        of its tokens came from the cache."""
        reused = self._reuse_prefix(prompt if reuse else ())
        rest = prompt[reused:]
        self._abort_flag = cancel
        self._lc.llama_set_abort_callback(self._ctx, self._abort_cb, None)
        try:
            for start in range(0, len(rest), self.n_batch):
                if cancel.cancelled:
                    raise _Aborted
                self._decode(rest[start : start + self.n_batch])
        finally:
            self._lc.llama_set_abort_callback(self._ctx, self._no_abort, None)
            self._abort_flag = None
        return reused

    # -- generation ------------------------------------------------------------------
    def generate(self, request: GenerationRequest, cancel: CancelToken) -> Generator[Step]:
        prompt = checked_prompt(request, self.vocab_size, self.context_length)
        if self._ctx is None:
            raise BackendError("This backend decodes through its batch (open_batch).")
        params = request.sampling
        want = request.top_logprobs if request.logprobs else -1
        try:
            with _boundary("evaluating the prompt"):
                # llama.cpp's logits differ in the last bits between a token decoded alone and
                # in a batch, so a reused prefix can change a sampled text. A seed asks for
                # the same text every time: evaluate the whole prompt as a cold start would.
                reused = self._prefill(prompt, cancel, reuse=params.seed is None)
        except _Aborted:
            return
        yield Prefilled(reused)
        with _boundary("preparing the sampler"):
            chain = SamplerChain(
                params, n_vocab=self.vocab_size, prompt=prompt, max_tokens=request.max_tokens
            )
        matcher = request.grammar.matcher() if request.grammar is not None else None
        generated: list[int] = []
        try:
            while True:
                with _boundary("sampling"):
                    if matcher is not None:
                        self._mask(matcher)
                    choice = self._next(chain, params, want, prompt, generated)
                    if matcher is not None:
                        matcher.advance(choice.token_id)
                generated.append(choice.token_id)
                yield choice
                if len(self._cached) + 1 >= self.context_length:
                    return
                with _boundary("decoding"):
                    self._decode([choice.token_id])
        finally:
            chain.close()

    def _logits_row(self) -> np.ndarray:
        """The context's last logits row, as a view (writes reach llama.cpp's sampler)."""
        ptr = self._lc.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.vocab_size,))

    def _mask(self, matcher: Any) -> None:
        """Constrained decoding: -inf, in place, on the logits of tokens the grammar forbids
        (the sampler chain and the logprobs both read that row next)."""
        self._logits_row()[~matcher.allowed(self.vocab_size)] = -np.inf

    def _next(
        self, chain: SamplerChain, params: Any, want: int, prompt: list[int], generated: list[int]
    ) -> TokenChoice:
        if want < 0:
            return TokenChoice(chain.sample(self._ctx))
        raw = self._logits_row()
        recent = (prompt + generated)[-64:] if params.repetition_penalty != 1.0 else ()
        logprobs = log_softmax(adjusted_logits(raw, params, generated, recent))
        token = chain.sample(self._ctx)
        return TokenChoice(token, float(logprobs[token]), top_entries(logprobs, want))

    # -- continuous batching -----------------------------------------------------------
    def open_batch(self, limits: BatchLimits) -> Batch | None:
        """Sequences decoded together in a context of their own (batch.py). The context
        ``generate`` uses is freed: its KV cache would only hold memory from now on."""
        batch = LlamaBatch(
            self._lc,
            self.llm.model,
            vocab_size=self.vocab_size,
            n_ctx=self.context_length,
            threads=self.threads,
            on_cpu=self.device_kind == "cpu",
            max_batch=limits.max_batch,
            prefill_chunk=limits.prefill_chunk,
            prompt_cache_bytes=limits.prompt_cache_bytes,
        )
        self.llm._ctx.close()
        self._ctx = None
        log.info(
            "llama backend: continuous batching of up to %d sequences over %d KV cells, "
            "prefill chunk %d",
            batch.n_seq,
            batch.n_ctx,
            batch.chunk,
        )
        return batch

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        super().close()  # the embedder first: it shares the model's weights
        self._lc.llama_batch_free(self._batch)
        self.llm.close()


def embedding_mode_hint(model_id: str) -> str:
    return (
        f"The model {model_id!r} on the llama backend was started without embedding mode, "
        "so it serves no embeddings. Start it with embedding_mode=True "
        "(dvai-bridge serve --embedding-mode) to use /v1/embeddings."
    )


def _native_context(path: Path) -> int:
    """The training context a GGUF declares (read without loading the weights)."""
    from .gguf import read_metadata

    md = read_metadata(path)
    arch = md.get("general.architecture", "llama")
    try:
        return int(md.get(f"{arch}.context_length") or DEFAULT_CONTEXT)
    except (TypeError, ValueError):
        return DEFAULT_CONTEXT


__all__ = ["LlamaBackend", "embedding_mode_hint"]
