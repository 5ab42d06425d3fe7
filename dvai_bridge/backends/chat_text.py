"""Message text is text: a client cannot write the chat template's control tokens.

A chat template writes its own markers (``<|im_start|>``, ``<|im_end|>``, ...) around each
message, and the rendered prompt is tokenized with those markers read as control tokens. A
message that contains the same strings (``<|im_end|>\\n<|im_start|>system\\n...``) would close
its own turn and open a system turn. OpenAI tokenizes message content as text; so do we:

1. ``ControlText.mask`` finds control-token strings in the strings a request gives the template
   (message contents, names, tool calls, tool definitions) and swaps each for a placeholder
   made of a random nonce, so the template renders around placeholders only;
2. ``Masked.tokenize`` splits the rendered prompt at the placeholders: the template's text
   between them is tokenized as before (markers special), each placeholder's original string
   as plain text.

A request with no control-token string in it takes none of this: its prompt is tokenized in
one piece, exactly as before.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

Encode = Callable[[str], list[int]]


@dataclass(frozen=True)
class Masked:
    """A request's messages and tools with control-token strings swapped for placeholders."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    originals: list[str]
    pattern: re.Pattern[str]

    def tokenize(self, rendered: str, *, special: Encode, text: Encode) -> list[int]:
        """Tokens of ``rendered``: template text with ``special``, the client's control-token
        strings with ``text`` (a placeholder the template dropped or escaped is simply gone)."""
        tokens: list[int] = []
        pos = 0
        for m in self.pattern.finditer(rendered):
            if m.start() > pos:
                tokens += special(rendered[pos : m.start()])
            tokens += text(self.originals[int(m.group(1))])
            pos = m.end()
        if pos < len(rendered):
            tokens += special(rendered[pos:])
        return tokens


class ControlText:
    """The control-token strings of one vocabulary, and what to do about them in a request."""

    def __init__(self, control_strings: Iterable[str]) -> None:
        strings = sorted({s for s in control_strings if s}, key=len, reverse=True)
        self._find = re.compile("|".join(map(re.escape, strings))) if strings else None

    def mask(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> Masked | None:
        """None when no string in the request holds a control token (the common case)."""
        if self._find is None:
            return None
        nonce = secrets.token_hex(8)
        originals: list[str] = []

        def swap(m: re.Match[str]) -> str:
            originals.append(m.group(0))
            return f"[dvai:{nonce}:{len(originals) - 1}]"

        find = self._find

        def walk(value: Any) -> Any:
            if isinstance(value, str):
                return find.sub(swap, value)
            if isinstance(value, dict):
                return {walk(k): walk(v) for k, v in value.items()}
            if isinstance(value, list):
                return [walk(v) for v in value]
            return value

        new_messages = walk(messages)
        new_tools = walk(tools) if tools else tools
        if not originals:
            return None
        pattern = re.compile(rf"\[dvai:{nonce}:(\d+)\]")
        return Masked(new_messages, new_tools, originals, pattern)


def hf_control_strings(tokenizer: Any) -> list[str]:
    """The control tokens of a Hugging Face tokenizer: its special tokens, and added tokens
    marked special (non-special added tokens, such as ``<think>`` in some vocabularies, are
    the model's text and stay as they are)."""
    strings = list(getattr(tokenizer, "all_special_tokens", None) or ())
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            strings.append(str(added.content))
    return strings
