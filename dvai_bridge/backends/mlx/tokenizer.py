"""An MLX model's text <-> tokens, through mlx-lm's tokenizer wrapper (HF ``tokenizers``)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import jinja2

from ...core.tokenizer import FALLBACK_CHAT_TEMPLATE, Message, Tokenizer
from ...errors import InvalidRequest
from ..chat_text import ControlText, hf_control_strings

log = logging.getLogger(__name__)


class MLXTokenizer(Tokenizer):
    backend_name = "mlx"

    def __init__(self, hf: Any, *, model_id: str, vocab_size: int | None) -> None:
        """``hf``: mlx-lm's ``TokenizerWrapper`` (``hf._tokenizer`` is the HF tokenizer)."""
        super().__init__()
        self.hf = hf
        self.vocab_size = vocab_size
        self.eos_token_ids = frozenset(int(t) for t in hf.eos_token_ids)
        self._fallback: Any = None
        self._template_override: str | None = None
        if not getattr(hf, "chat_template", None):
            log.warning("%s has no chat template; using the documented fallback", model_id)
            self._fallback = jinja2.Environment().from_string(FALLBACK_CHAT_TEMPLATE)

    @functools.cached_property
    def control_text(self) -> ControlText:
        return ControlText(hf_control_strings(self.hf._tokenizer))

    def chat_tokens(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        # Control-token strings in the request are tokenized as text (backends/chat_text.py).
        masked = self.control_text.mask(messages, tools)
        if masked is not None:
            messages, tools = masked.messages, masked.tools
        try:
            if self._fallback is not None:
                text = self._fallback.render(
                    messages=messages, add_generation_prompt=True, **(template_kwargs or {})
                )
            else:
                # A --chat-template goes straight to the HF tokenizer: mlx-lm's wrapper would
                # set enable_thinking from the model's vocabulary, not the template's default.
                render = (
                    self.hf._tokenizer.apply_chat_template
                    if self._template_override is not None
                    else self.hf.apply_chat_template
                )
                extra = (
                    {"chat_template": self._template_override}
                    if self._template_override is not None
                    else {}
                )
                text = render(
                    messages,
                    tools=tools or None,
                    add_generation_prompt=True,
                    tokenize=False,
                    **extra,
                    **(template_kwargs or {}),
                )
        except jinja2.TemplateError as exc:
            raise InvalidRequest(
                f"The model's chat template rejected the messages: {exc}", param="messages"
            ) from None
        encode = self.hf.encode
        if masked is None:
            return list(encode(text, add_special_tokens=False))
        return masked.tokenize(
            text,
            special=lambda s: list(encode(s, add_special_tokens=False)),
            text=lambda s: list(encode(s, add_special_tokens=False, split_special_tokens=True)),
        )

    @property
    def chat_template_source(self) -> str | None:
        if self._template_override is not None:
            return self._template_override
        return None if self._fallback is not None else self.hf.chat_template

    def set_chat_template(self, source: str) -> None:
        self._template_override = source
        self._fallback = None

    def text_tokens(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def _build_grammar_tokenizer(self) -> Any:
        from llguidance.hf import from_tokenizer

        return from_tokenizer(
            self.hf._tokenizer, n_vocab=self.vocab_size, eos_token=sorted(self.eos_token_ids)
        )

    def tokenize(self, text: str) -> list[int]:
        return list(self.hf.encode(text))

    def decode(self, tokens: Sequence[int]) -> str:
        return str(self.hf.decode(list(tokens)))
