"""The one contract every backend implements.

A backend owns a loaded model. It turns messages into prompt tokens (through the model's chat
template), turns tokens back into text, and generates: one streaming method that yields a
``TokenChoice`` per step. Everything else (stop strings, limits, cancellation, queuing, HTTP)
lives above it. Backend methods run on the engine's thread, which owns the device.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import NotSupported
from .detokenize import IncrementalDetokenizer
from .types import BatchLimits, CancelToken, GenerationRequest, TokenChoice

Message = dict[str, Any]

# Held only while a backend builds its grammar tokenizer (once per model).
_GRAMMAR_TOKENIZER_LOCK = threading.Lock()

# Used when a model ships no chat template (documented in docs/usage.md, "Chat templates").
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Capabilities:
    chat: bool = True
    completions: bool = True
    embeddings: bool = False
    vision: bool = False
    logprobs: bool = True


class Batch(ABC):
    """Many sequences decoded together (continuous batching). Owned by the engine thread.

    Sequences join with ``add`` and leave with ``remove`` at any step; ``step`` advances every
    active sequence by at most one token (a sequence still prefilling yields nothing yet).
    """

    @abstractmethod
    def add(self, key: int, request: GenerationRequest) -> int:
        """Admit a sequence; returns how many prompt tokens came from the prompt cache."""

    @abstractmethod
    def step(self) -> list[tuple[int, TokenChoice]]:
        """One step for the whole batch: (key, choice) for each sequence that produced one."""

    @abstractmethod
    def remove(self, key: int) -> None:
        """Drop a sequence (finished or cancelled) and free its slot now."""

    def cache_stats(self) -> tuple[int, int]:
        """(bytes, entries) held by the prompt cache."""
        return 0, 0

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free everything; the batch is not used again."""


class Backend(ABC):
    """A loaded model behind one streaming ``generate`` (and, optionally, a ``Batch``)."""

    name: ClassVar[str]
    capabilities: Capabilities = Capabilities()
    model_id: str
    context_length: int
    eos_token_ids: frozenset[int]
    # Prompt tokens the sequence ``generate`` is running took from a cache (known once its
    # first token is out); reported as ``usage.prompt_tokens_details.cached_tokens``.
    last_reused: int = 0
    # /v1/embeddings: the model that serves it (an ``embeddings.Embedder``), or why there is
    # none and how to get one (read by the protocol layer for its 501).
    embedder: Any = None
    embedding_hint: str | None = None
    # Where the model runs ("cpu", "cuda", "metal"; the engine's default limits follow it), and
    # that device's memory in bytes when known.
    device_kind: str = "cpu"
    device_memory: int | None = None

    @abstractmethod
    def chat_tokens(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        """Apply the chat template to the whole list, with the generation prompt; tokenize.

        ``tools`` (OpenAI function definitions) go to the template as its ``tools`` variable;
        the protocol layer passes them only when ``chat_template_source`` uses them.
        ``template_kwargs`` are more variables for the template (``enable_thinking``, ...).
        """

    def set_chat_template(self, source: str) -> None:
        """Use this Jinja chat template instead of the model's own (``--chat-template``)."""
        raise NotSupported(
            f"The {self.name} backend cannot take another chat template.", param="chat_template"
        )

    def prompt_tail(self, prompt: Sequence[int]) -> str:
        """The text a rendered prompt ends with (enough to see a reasoning marker)."""
        return self.decode(prompt[-16:])

    def text_tokens(self, text: str) -> list[int]:
        """``text`` as the model would write it in a reply: no BOS, markers as text or as
        their special token, whichever the vocabulary has."""
        tokens = self.tokenize(text)
        bos = getattr(self, "bos_token_id", None)
        return tokens[1:] if tokens and bos is not None and tokens[0] == bos else tokens

    @property
    def chat_template_source(self) -> str | None:
        """The Jinja source of the model's own chat template (None: none, fallback in use)."""
        return None

    def grammar_tokenizer(self) -> Any:
        """The llguidance tokenizer constrained decoding masks with: built on first use
        (0.3-1 s), then kept. Thread-safe."""
        with _GRAMMAR_TOKENIZER_LOCK:
            tok = self.__dict__.get("_grammar_tokenizer")
            if tok is None:
                tok = self.__dict__["_grammar_tokenizer"] = self._build_grammar_tokenizer()
            return tok

    def _build_grammar_tokenizer(self) -> Any:
        """Build the llguidance tokenizer for this model's vocabulary (see grammar_tokenizer)."""
        raise NotSupported(
            f"The {self.name} backend cannot constrain its output (response_format, tool_choice).",
            param="response_format",
        )

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Tokenize a raw completion prompt (adding BOS where the model expects it)."""

    @abstractmethod
    def decode(self, tokens: Sequence[int]) -> str:
        """Text of a token sequence."""

    @abstractmethod
    def generate(self, request: GenerationRequest, cancel: CancelToken) -> Iterator[TokenChoice]:
        """Yield one choice per generated token until the caller stops iterating.

        The caller enforces limits and stops; the backend checks ``cancel`` only where a step
        is long (prefill). Library exceptions are translated to ``BridgeError`` here, once.
        """

    def open_batch(self, limits: BatchLimits) -> Batch | None:
        """A continuous-batching generator, or None if this backend decodes one at a time."""
        return None

    def on_idle(self) -> None:  # noqa: B027 - optional hook
        """Called from the engine thread every few seconds while nothing runs (tuning that
        must not change mid-step, such as the CPU's BLAS threads, can catch up here)."""

    def prompt_text(self, tokens: Sequence[int]) -> str:
        """Text of a prompt with its control tokens written out (``/apply-template``)."""
        return self.decode(tokens)

    def detokenizer(self) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self.decode)

    def token_bytes(self, token_id: int) -> bytes:
        return self.decode([token_id]).encode("utf-8", errors="replace")

    def embed(self, inputs: list[list[int]] | list[str]) -> list[list[float]]:
        raise NotSupported(f"The {self.name} backend does not serve embeddings.", param="input")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model. Called once, from the engine thread."""

    def end_thread(self) -> None:  # noqa: B027 - optional hook
        """Called last on the engine thread, after ``close``, just before the thread ends:
        drop thread-local device state (MLX: the thread's streams)."""
