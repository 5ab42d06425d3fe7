"""Constrained decoding: a grammar every generated token must keep the output inside.

A ``Grammar`` is an llguidance grammar (JSON schema, Lark, or regex, compiled to llguidance's
own form) checked against one tokenizer. Each sequence gets its own ``TokenMatcher``: before a
step it says which token ids may come next (a boolean mask over the vocabulary, applied by the
backend to its logits), and after the step it is told which token was chosen. When the grammar
is complete only end-of-sequence tokens are allowed, so a constrained sequence ends with
``finish_reason: "stop"`` exactly where its output becomes valid.

llguidance is used because it computes a mask in tens of microseconds on a 50k vocabulary
without precomputation, accepts JSON schema, Lark and regex in one grammar (a tool call is a
Lark rule with a JSON schema inside), and reports an invalid or unsupported schema with a
message we can return as a 400.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

# How JSON is laid out inside a constrained output: one space after ':' and ',', no free
# whitespace. Free whitespace lets a small model emit newlines forever instead of a value.
JSON_OPTIONS = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


class GrammarError(ValueError):
    """The grammar or schema cannot be compiled; the message says why."""


def _llg() -> Any:
    try:
        import llguidance
    except ImportError as exc:  # a core dependency; only a broken install gets here
        raise GrammarError(f"constrained decoding needs llguidance: {exc}") from None
    return llguidance


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """llguidance grammar text for one JSON value matching ``schema``."""
    try:
        return str(_llg().LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS))
    except (ValueError, TypeError) as exc:
        raise GrammarError(str(exc)) from None


def check_json_schema(schema: dict[str, Any]) -> None:
    """Raise ``GrammarError`` if ``schema`` is not a valid JSON schema. Keywords llguidance
    cannot enforce are let through here (``lenient``): this is for schemas shown to the model,
    not enforced."""
    try:
        spec = _llg().LLMatcher.grammar_from_json_schema(
            schema, overrides={**JSON_OPTIONS, "lenient": True}
        )
    except (ValueError, TypeError) as exc:
        raise GrammarError(str(exc)) from None
    check_grammar(spec)


def check_grammar(spec: str) -> None:
    """Raise ``GrammarError`` if the grammar does not compile (no tokenizer needed)."""
    is_error, messages = _llg().LLMatcher.validate_grammar_with_warnings(spec)
    if is_error:
        raise GrammarError(messages[0] if messages else "invalid grammar")


def lark_grammar(lark: str) -> str:
    return str(_llg().LLMatcher.grammar_from_lark(lark))


class Matcher(Protocol):
    """One sequence's matcher as decoding uses it: a ``TokenMatcher``, or reasoning's
    ``ReasoningGate`` (reasoning first, then a grammar)."""

    def allowed(self, n_vocab: int) -> np.ndarray: ...

    def advance(self, token_id: int) -> None: ...

    @property
    def done(self) -> bool: ...

    @property
    def error(self) -> str | None: ...


class MatcherSource(Protocol):
    """What gives each sequence its matcher: a ``Grammar``, or reasoning's ``GatedGrammar``."""

    def matcher(self) -> Matcher: ...


@dataclass(frozen=True)
class Grammar:
    """A grammar validated for one tokenizer. Shared by the sequences of a request (n > 1)."""

    spec: str
    tokenizer: Any = field(compare=False, repr=False)  # llguidance.LLTokenizer

    @classmethod
    def compile(cls, spec: str, tokenizer: Any) -> Grammar:
        """Validate ``spec`` for ``tokenizer``; raises ``GrammarError`` naming the problem."""
        is_error, messages = _llg().LLMatcher.validate_grammar_with_warnings(spec, tokenizer)
        if is_error:
            raise GrammarError(messages[0] if messages else "invalid grammar")
        for warning in messages:
            log.info("grammar warning: %s", warning)
        return cls(spec, tokenizer)

    def matcher(self) -> TokenMatcher:
        return TokenMatcher(self)


class TokenMatcher:
    """One sequence's position in a grammar."""

    def __init__(self, grammar: Grammar) -> None:
        llg = _llg()
        self._m = llg.LLMatcher(grammar.tokenizer, grammar.spec, log_level=0)
        if self._m.is_error():
            raise GrammarError(self._m.get_error())
        self._eos = list(grammar.tokenizer.eos_tokens)
        self._n = grammar.tokenizer.vocab_size

    def allowed(self, n_vocab: int) -> np.ndarray:
        """Boolean mask of length ``n_vocab``: the token ids that may come next.

        If the matcher has failed (which masking prevents), only end-of-sequence is allowed,
        so the sequence ends instead of producing output outside the grammar.
        """
        mask = np.zeros(n_vocab, dtype=bool)
        if self._m.is_error():
            mask[[t for t in self._eos if t < n_vocab]] = True
            return mask
        bits = np.frombuffer(self._m.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[: self._n].astype(bool)
        k = min(n_vocab, allowed.size)
        mask[:k] = allowed[:k]
        return mask

    def advance(self, token_id: int) -> None:
        """The token the sampler chose. Never raises: a failure is logged and sticks."""
        if not self._m.consume_token(int(token_id)) and self._m.is_error():
            log.warning("grammar rejected token %d: %s", token_id, self._m.get_error())

    @property
    def done(self) -> bool:
        return bool(self._m.is_stopped())

    @property
    def error(self) -> str | None:
        return self._m.get_error() if self._m.is_error() else None
