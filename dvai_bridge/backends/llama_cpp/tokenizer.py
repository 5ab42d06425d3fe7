"""A GGUF model's text <-> tokens, through llama.cpp's vocabulary (no context, no device)."""

from __future__ import annotations

import ctypes
import functools
import warnings
from collections.abc import Sequence
from typing import Any

from ...core.tokenizer import Message, Tokenizer
from ..chat_text import ControlText
from .template import ChatTemplate, control_strings


class LlamaTokenizer(Tokenizer):
    backend_name = "llama"
    vocab_size: int  # always known here

    def __init__(self, lc: Any, llm: Any, *, model_id: str) -> None:
        """``lc``: the ``llama_cpp`` module; ``llm``: the loaded ``llama_cpp.Llama``."""
        super().__init__()
        self._lc = lc
        self._llm = llm
        self._vocab = lc.llama_model_get_vocab(llm.model)
        self.vocab_size = int(lc.llama_vocab_n_tokens(self._vocab))
        self.eos_token_ids = frozenset(
            t for t in range(self.vocab_size) if lc.llama_vocab_is_eog(self._vocab, t)
        )
        self._bos = int(lc.llama_vocab_bos(self._vocab))
        self._add_bos = bool(lc.llama_vocab_get_add_bos(self._vocab)) and self._bos >= 0
        self._pieces: dict[int, bytes] = {}
        self._special_pieces: dict[int, bytes] = {}
        self.template = ChatTemplate(
            llm.metadata.get("tokenizer.chat_template"),
            model_id=model_id,
            bos_token=self._piece(self._bos, special=True).decode("utf-8", "replace")
            if self._bos >= 0
            else "",
            eos_token=self._piece(int(lc.llama_vocab_eos(self._vocab)), special=True).decode(
                "utf-8", "replace"
            ),
        )

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
        tokens: list[int] = self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
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
            text=lambda s: self._llm.tokenize(s.encode("utf-8"), add_bos=False, special=False),
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
