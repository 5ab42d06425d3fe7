"""A model's text <-> tokens: what the protocol layer and the engine need from its vocabulary.

Every method is host work (Jinja, the Rust ``tokenizers``, a vocabulary table), never the
device: callers run them on any thread, the pre-processing pool included, so a long template
does not hold up decoding (tests/e2e/test_device_thread.py shows no MLX array is evaluated).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from ..errors import NotSupported
from .detokenize import IncrementalDetokenizer

Message = dict[str, Any]

# Used when a model ships no chat template (documented in docs/usage.md, "Chat templates").
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class Tokenizer(ABC):
    """Chat template, tokenize, decode, token bytes, and the grammar tokenizer of one model."""

    backend_name: str = "this"  # for messages: "The llama backend cannot ..."
    vocab_size: int | None = None  # None: unknown (token ids are then not range-checked)
    eos_token_ids: frozenset[int] = frozenset()
    bos_token_id: int | None = None

    def __init__(self) -> None:
        self._grammar_lock = threading.Lock()
        self._grammar_tokenizer: Any = None
        # Per-tokenizer memo for the protocol layer (the reasoning format of the template).
        self.memo: dict[str, Any] = {}

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

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Tokenize a raw completion prompt (adding BOS where the model expects it)."""

    @abstractmethod
    def decode(self, tokens: Sequence[int]) -> str:
        """Text of a token sequence."""

    def text_tokens(self, text: str) -> list[int]:
        """``text`` as the model would write it in a reply: no BOS, markers as text or as
        their special token, whichever the vocabulary has."""
        tokens = self.tokenize(text)
        bos = self.bos_token_id
        return tokens[1:] if tokens and bos is not None and tokens[0] == bos else tokens

    def token_bytes(self, token_id: int) -> bytes:
        return self.decode([token_id]).encode("utf-8", errors="replace")

    def prompt_tail(self, prompt: Sequence[int]) -> str:
        """The text a rendered prompt ends with (enough to see a reasoning marker)."""
        return self.decode(prompt[-16:])

    def prompt_text(self, tokens: Sequence[int]) -> str:
        """Text of a prompt with its control tokens written out (``/apply-template``)."""
        return self.decode(tokens)

    def detokenizer(self) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self.decode)

    @property
    def chat_template_source(self) -> str | None:
        """The Jinja source of the model's own chat template (None: none, fallback in use)."""
        return None

    def set_chat_template(self, source: str) -> None:
        """Use this Jinja chat template instead of the model's own (``--chat-template``)."""
        raise NotSupported(
            f"The {self.backend_name} backend cannot take another chat template.",
            param="chat_template",
        )

    def grammar_tokenizer(self) -> Any:
        """The llguidance tokenizer constrained decoding masks with: built on first use
        (0.3-1 s), then kept. Thread-safe."""
        with self._grammar_lock:
            if self._grammar_tokenizer is None:
                self._grammar_tokenizer = self._build_grammar_tokenizer()
            return self._grammar_tokenizer

    def _build_grammar_tokenizer(self) -> Any:
        """Build the llguidance tokenizer for this vocabulary (see grammar_tokenizer)."""
        raise NotSupported(
            f"The {self.backend_name} backend cannot constrain its output "
            "(response_format, tool_choice).",
            param="response_format",
        )
