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

import ctypes
import functools
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ...core.backend import Backend, Batch, Capabilities, Message
from ...core.types import BatchLimits, CancelToken, GenerationRequest, TokenChoice
from ...errors import (
    BackendError,
    BackendUnavailable,
    BridgeError,
    ContextLengthExceeded,
    ModelLoadFailed,
    NotSupported,
)
from ...progress import ProgressEvent, ProgressHub
from ..chat_text import ControlText
from ..cpu_cores import physical_cores
from ..options import BackendLoad
from .gguf import resolve_gguf
from .options import LlamaOptions
from .sampling import SamplerChain, adjusted_logits, log_softmax, top_entries
from .template import ChatTemplate, control_strings

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
        self._vocab = lc.llama_model_get_vocab(llm.model)
        self.vocab_size = int(lc.llama_vocab_n_tokens(self._vocab))
        self.eos_token_ids = frozenset(
            t for t in range(self.vocab_size) if lc.llama_vocab_is_eog(self._vocab, t)
        )
        self._bos = int(lc.llama_vocab_bos(self._vocab))
        self._add_bos = bool(lc.llama_vocab_get_add_bos(self._vocab)) and self._bos >= 0
        self._pieces: dict[int, bytes] = {}
        self._special_pieces: dict[int, bytes] = {}
        md = llm.metadata
        self.template = ChatTemplate(
            md.get("tokenizer.chat_template"),
            model_id=model_id,
            bos_token=self._piece(self._bos, special=True).decode("utf-8", "replace")
            if self._bos >= 0
            else "",
            eos_token=self._piece(int(lc.llama_vocab_eos(self._vocab)), special=True).decode(
                "utf-8", "replace"
            ),
        )
        # The KV cache holds these tokens at positions 0..len-1 (sequence 0).
        self._cached: list[int] = []
        self.last_reused = 0  # prompt tokens the last sequence took from the KV cache
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
        self.capabilities = Capabilities(
            chat=True, completions=True, embeddings=self.embedder is not None, logprobs=True
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

    # -- text <-> tokens ------------------------------------------------------------
    def _piece(self, token: int, *, special: bool = False) -> bytes:
        cache = self._special_pieces if special else self._pieces
        piece = cache.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = self._lc.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._lc.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
            piece = cache[token] = buf.raw[:n]
        return piece

    def _tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        tokens = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if add_bos and self._add_bos and (not tokens or tokens[0] != self._bos):
            tokens.insert(0, self._bos)  # once: a template that writes bos_token keeps its own
        return tokens

    @functools.cached_property
    def control_text(self) -> ControlText:
        return ControlText(control_strings(self._lc, self._vocab, self.vocab_size, self._piece))

    def chat_tokens(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        # Control-token strings in the request are tokenized as text (backends/chat_text.py).
        masked = self.control_text.mask(messages, tools)
        if masked is None:
            return self._tokenize(
                self.template.render(messages, tools, template_kwargs), add_bos=True
            )
        tokens = masked.tokenize(
            self.template.render(masked.messages, masked.tools, template_kwargs),
            special=lambda s: self._tokenize(s, add_bos=False),
            text=lambda s: self.llm.tokenize(s.encode("utf-8"), add_bos=False, special=False),
        )
        if self._add_bos and (not tokens or tokens[0] != self._bos):
            tokens.insert(0, self._bos)
        return tokens

    @property
    def chat_template_source(self) -> str | None:
        return self.template.own_source

    def set_chat_template(self, source: str) -> None:
        self.template = self.template.replaced(source)

    def text_tokens(self, text: str) -> list[int]:
        return self._tokenize(text, add_bos=False)

    def _build_grammar_tokenizer(self) -> Any:
        from llguidance.llamacpp import lltokenizer_from_vocab

        with warnings.catch_warnings():  # it reads attributes with a deprecated call
            warnings.simplefilter("ignore", DeprecationWarning)
            return lltokenizer_from_vocab(
                self._vocab, n_vocab=self.vocab_size, eos_token=sorted(self.eos_token_ids)
            )

    def tokenize(self, text: str) -> list[int]:
        return self._tokenize(text, add_bos=True)

    def decode(self, tokens: Sequence[int]) -> str:
        return b"".join(self._piece(t) for t in tokens).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self._piece(token_id, special=True)

    def prompt_tail(self, prompt: Sequence[int]) -> str:
        return b"".join(self._piece(t, special=True) for t in prompt[-16:]).decode(
            "utf-8", errors="replace"
        )

    def prompt_text(self, tokens: Sequence[int]) -> str:
        return b"".join(self._piece(t, special=True) for t in tokens).decode("utf-8", "replace")

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

    def _prefill(self, prompt: Sequence[int], cancel: CancelToken, *, reuse: bool = True) -> None:
        reused = self._reuse_prefix(prompt if reuse else ())
        self.last_reused = reused
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

    # -- generation ------------------------------------------------------------------
    def generate(self, request: GenerationRequest, cancel: CancelToken) -> Iterator[TokenChoice]:
        from .batch import checked_prompt

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
                self._prefill(prompt, cancel, reuse=params.seed is None)
        except _Aborted:
            return
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
        from .batch import LlamaBatch

        batch = LlamaBatch(
            self,
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

    # -- embeddings ------------------------------------------------------------------
    def embed(self, inputs: list[list[int]] | list[str]) -> list[list[float]]:
        if self.embedder is None:
            raise NotSupported(embedding_mode_hint(self.model_id), param="model")
        batch = [
            self.embedder.tokenize(x) if isinstance(x, str) else self.embedder.frame(x)
            for x in inputs
        ]
        return self.embedder.embed_tokens(batch).tolist()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.embedder is not None:
            self.embedder.close()
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
