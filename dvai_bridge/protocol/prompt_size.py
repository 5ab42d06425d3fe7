"""Refuse a prompt that cannot fit the context before tokenizing it (issue 13 item 3).

Tokenizing one 15 MiB message took 20-25 s and 1.5 GB before its 400. No token of a
vocabulary is longer than its longest piece, so a text of ``B`` UTF-8 bytes has at least
``B / longest`` tokens: past ``context * longest`` bytes it cannot fit, and the request is
refused at the cost of measuring its bytes. Below that bound the prompt is tokenized (in the
bounded pre-processing pool) and checked exactly as before.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from ..core.tokenizer import Tokenizer
from ..errors import ContextLengthExceeded


class PromptBound:
    def __init__(self, tokenizer: Tokenizer, context_length: int) -> None:
        self._tokenizer = tokenizer
        self._context = context_length
        self._longest: int | None = None
        self._lock = threading.Lock()

    @property
    def longest_token_bytes(self) -> int:
        """The longest piece in the vocabulary, in bytes (measured once: ~0.1-1 s)."""
        with self._lock:
            if self._longest is None:
                vocab = self._tokenizer.vocab_size or 0
                longest = max(
                    (len(self._tokenizer.token_bytes(t)) for t in range(vocab)), default=0
                )
                # No vocabulary to measure (the fake): assume the longest tokens seen in
                # practice, so the bound still holds for byte-level vocabularies.
                self._longest = longest + 4 if vocab else 256  # + a decoded leading space
            return self._longest

    def check(self, texts: Iterable[str], param: str) -> None:
        """Raise ``ContextLengthExceeded`` when ``texts`` together cannot fit the context."""
        context = self._context
        size = sum(len(t.encode("utf-8")) for t in texts)
        longest = self.longest_token_bytes
        if size > context * longest:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {context} tokens; the prompt is "
                f"{size} bytes, which is at least {-(-size // longest)} tokens. Shorten it.",
                param=param,
            )
