"""One chat request's reasoning: template variables, the prompt's end, the engine's spec.

``template_kwargs`` turns ``reasoning_effort`` and ``chat_template_kwargs`` into variables for
the chat template (``enable_thinking: false`` for effort ``none`` where the template reads it;
``reasoning_effort`` itself for a template that reads it, gpt-oss's). ``ReasoningPlan.build``
then looks at the rendered prompt's end: a prompt that opens a block starts the reply inside
it; effort ``none`` on a template that cannot turn thinking off closes (or writes an empty)
block at the prompt's end; a reply that must be constrained or budgeted is started inside a
block so the engine knows where the reasoning ends. ``apply`` puts the engine's
``ReasoningSpec`` (and a ``GatedGrammar`` around the request's grammar) on the request.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..core.grammar import Grammar
from ..core.reasoning import GatedGrammar, ReasoningSpec
from ..core.tokenizer import Tokenizer
from ..core.types import GenerationRequest
from ..errors import InvalidRequest
from .reasoning import (
    RESERVED_TEMPLATE_KWARGS,
    ReasoningFormat,
    ReasoningOptions,
    ReasoningParser,
    detect_format,
    detect_from_vocabulary,
)


def reasoning_format(tokenizer: Tokenizer) -> ReasoningFormat | None:
    """From the chat template, else from the vocabulary; kept per tokenizer and template."""
    source = tokenizer.chat_template_source
    cached = tokenizer.memo.get("reasoning_format")
    if cached is not None and cached[0] == source:
        fmt: ReasoningFormat | None = cached[1]
        return fmt
    fmt = detect_format(source) or detect_from_vocabulary(
        lambda text: len(tokenizer.text_tokens(text)) == 1
    )
    tokenizer.memo["reasoning_format"] = (source, fmt)
    return fmt


def template_kwargs(
    effort: str | None, requested: dict[str, Any] | None, source: str | None
) -> dict[str, Any] | None:
    kwargs = dict(requested or {})
    bad = sorted(RESERVED_TEMPLATE_KWARGS & kwargs.keys())
    if bad:
        raise InvalidRequest(
            f"chat_template_kwargs cannot set {', '.join(bad)}: the server sets it.",
            param="chat_template_kwargs",
        )
    source = source or ""
    if effort == "none" and "enable_thinking" in source:
        kwargs.setdefault("enable_thinking", False)
    if effort is not None and "reasoning_effort" in source:
        kwargs.setdefault("reasoning_effort", "low" if effort in ("none", "minimal") else effort)
    return kwargs or None


@dataclass(frozen=True)
class ReasoningPlan:
    fmt: ReasoningFormat
    inside: bool  # the reply starts inside a block
    budget: int | None

    def parser(self) -> ReasoningParser:
        return ReasoningParser(self.fmt, inside=self.inside)

    @classmethod
    def build(
        cls,
        tokenizer: Tokenizer,
        prompt: list[int],
        effort: str | None,
        options: ReasoningOptions,
        constrained: bool,
    ) -> tuple[list[int], ReasoningPlan | None]:
        """The prompt to generate from (maybe with a block opened or closed at its end), and
        the plan; no plan for a template that writes no reasoning."""
        fmt = reasoning_format(tokenizer)
        if fmt is None:
            return prompt, None
        tail = tokenizer.prompt_tail(prompt).rstrip()
        inside = tail.endswith(fmt.open)
        closed = tail.endswith(fmt.close)  # the template wrote an empty block (thinking off)
        if effort == "none":
            if inside:
                prompt = prompt + tokenizer.text_tokens(fmt.close_text)
            elif not closed:
                prompt = prompt + tokenizer.text_tokens(fmt.off_text)
            return prompt, cls(fmt, False, None)
        budget = options.budget(effort)
        if (budget is not None or constrained) and not inside and not closed:
            # The engine must see where the reasoning ends: open the block here, as a template
            # whose generation prompt opens it does.
            prompt = prompt + tokenizer.text_tokens(fmt.open + "\n")
            inside = True
        return prompt, cls(fmt, inside, budget)

    def apply(self, gen: GenerationRequest, tokenizer: Tokenizer) -> GenerationRequest:
        """The request with the engine's reasoning spec, and the grammar (if any) gated to
        start after the block."""
        if not self.inside:  # only counted (the model may open a block itself)
            spec = ReasoningSpec(self.fmt.close, (), None, inside=False, open_text=self.fmt.open)
            return dataclasses.replace(gen, reasoning=spec)
        spec = ReasoningSpec(
            self.fmt.close,
            tuple(tokenizer.text_tokens(self.fmt.close_text)),
            self.budget,
            inside=True,
        )
        grammar = gen.grammar
        if self.budget is not None or grammar is not None:
            inner = grammar if isinstance(grammar, Grammar) else None
            grammar = GatedGrammar(
                spec, inner, tokenizer.token_bytes, frozenset(tokenizer.eos_token_ids)
            )
        return dataclasses.replace(gen, reasoning=spec, grammar=grammar)
