"""Incremental detokenization that works for any tokenizer with a ``decode``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turn token ids into text deltas without splitting a multi-byte character.

    Decodes a short window of recent tokens and emits only the part past what was already
    emitted; a window that ends in an incomplete UTF-8 sequence waits for the next token.
    This is the prefix/read-offset scheme used by vLLM and TGI.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._tokens: list[int] = []
        self._prefix = 0
        self._read = 0

    def add(self, token_id: int) -> str:
        self._tokens.append(token_id)
        prefix_text = self._decode(self._tokens[self._prefix : self._read])
        new_text = self._decode(self._tokens[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT):
            delta = new_text[len(prefix_text) :]
            self._prefix = self._read
            self._read = len(self._tokens)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held (an incomplete character at the very end)."""
        prefix_text = self._decode(self._tokens[self._prefix : self._read])
        new_text = self._decode(self._tokens[self._prefix :])
        self._prefix = self._read = len(self._tokens)
        return new_text[len(prefix_text) :]
