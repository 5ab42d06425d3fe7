"""The chat template a GGUF file carries, rendered the way Hugging Face renders it.

``tokenizer.chat_template`` in the GGUF metadata is the same Jinja source as the model's
``tokenizer_config.json``; it is rendered in a sandbox with the globals and filters
``transformers`` provides (``raise_exception``, ``strftime_now``, ``tojson``), so a template
behaves here as it does on the MLX backend.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ...core.backend import FALLBACK_CHAT_TEMPLATE, Message
from ...errors import InvalidRequest

log = logging.getLogger(__name__)


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class ChatTemplate:
    def __init__(
        self, source: str | None, *, bos_token: str, eos_token: str, model_id: str
    ) -> None:
        if not source:
            log.warning("%s carries no chat template; using the documented fallback", model_id)
        self.own_source = source or None
        self.source = source or FALLBACK_CHAT_TEMPLATE
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._template = env.from_string(self.source)
        self._special = {"bos_token": bos_token, "eos_token": eos_token}
        self._model_id = model_id

    def replaced(self, source: str) -> ChatTemplate:
        """The same renderer with another template (``--chat-template``)."""
        return ChatTemplate(source, model_id=self._model_id, **self._special)

    def render(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        try:
            return self._template.render(
                **{
                    **(template_kwargs or {}),
                    "messages": messages,
                    "tools": tools or None,
                    "add_generation_prompt": True,
                    **self._special,
                }
            )
        except jinja2.TemplateError as exc:
            raise InvalidRequest(
                f"The model's chat template rejected the messages: {exc}", param="messages"
            ) from None


def control_strings(lc: Any, vocab: Any, n_vocab: int, piece: Any) -> list[str]:
    """The text of every control token of a llama.cpp vocabulary (what ``tokenize(...,
    special=True)`` turns into a marker): ``piece(token, special=True)`` gives its bytes."""
    control = int(lc.LLAMA_TOKEN_ATTR_CONTROL)
    return [
        piece(t, special=True).decode("utf-8", "replace")
        for t in range(n_vocab)
        if int(lc.llama_vocab_get_attr(vocab, t)) & control
    ]
