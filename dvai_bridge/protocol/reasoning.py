"""Reasoning ("thinking") text, kept apart from the answer.

A reasoning model writes its thinking between markers before the answer. Three formats are
known, each detected from the chat template's source (never from the model's name):

- ``think``: ``<think>...</think>`` (DeepSeek-R1 and its distills, Qwen3, SmolLM3, ...);
- ``mistral``: ``[THINK]...[/THINK]`` (Magistral);
- ``harmony``: gpt-oss's channels, ``<|channel|>analysis<|message|>...<|end|>`` then
  ``<|start|>assistant<|channel|>final<|message|>...``.

``ReasoningParser`` is fed the reply's text in pieces of any size (a marker may be split across
pieces, or be one special token) and returns each piece's reasoning and content; the content
never holds a marker. A template whose generation prompt already opens the block (DeepSeek-R1
distills, Qwen3-2507 end it with ``<think>\\n``) starts the parser inside the reasoning.

``ReasoningFormat`` also says how the engine closes a block itself (``close_text``, forced when
a reasoning budget is spent) and how to turn thinking off when the template cannot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..defaults import REASONING_BUDGETS, REASONING_FIELD

REASONING = "reasoning"
CONTENT = "content"


@dataclass(frozen=True)
class ReasoningFormat:
    name: str
    open: str
    close: str
    # State -> markers found in that state, each with the state it leads to. A marker leading
    # to the state it was found in is dropped (Harmony's channel headers).
    markers: dict[str, tuple[tuple[str, str], ...]]
    close_text: str  # what the engine writes to end a block early (close + what follows it)
    off_text: str  # an empty block: appended to a prompt to make the model skip thinking


THINK = ReasoningFormat(
    "think",
    "<think>",
    "</think>",
    {
        CONTENT: (("<think>", REASONING), ("</think>", CONTENT)),
        REASONING: (("</think>", CONTENT), ("<think>", REASONING)),
    },
    close_text="</think>\n\n",
    off_text="<think>\n\n</think>\n\n",
)

MISTRAL = ReasoningFormat(
    "mistral",
    "[THINK]",
    "[/THINK]",
    {
        CONTENT: (("[THINK]", REASONING), ("[/THINK]", CONTENT)),
        REASONING: (("[/THINK]", CONTENT), ("[THINK]", REASONING)),
    },
    close_text="[/THINK]",
    off_text="[THINK][/THINK]",
)

_ANALYSIS = "<|channel|>analysis<|message|>"
_FINAL = "<|channel|>final<|message|>"
HARMONY = ReasoningFormat(
    "harmony",
    _ANALYSIS,
    "<|end|>",
    {
        CONTENT: (
            (_ANALYSIS, REASONING),
            (_FINAL, CONTENT),
            ("<|start|>assistant", CONTENT),
            ("<|return|>", CONTENT),
            ("<|end|>", CONTENT),
        ),
        REASONING: (("<|end|>", CONTENT), (_ANALYSIS, REASONING)),
    },
    close_text=f"<|end|><|start|>assistant{_FINAL}",
    off_text=f"{_ANALYSIS}<|end|><|start|>assistant{_FINAL}",
)

FORMATS = (THINK, MISTRAL, HARMONY)


def detect_format(template_source: str | None) -> ReasoningFormat | None:
    """The reasoning format a chat template writes or reads, if any."""
    if not template_source:
        return None
    if "<|channel|>" in template_source:
        return HARMONY
    if "[THINK]" in template_source:
        return MISTRAL
    if "<think>" in template_source or "reasoning_content" in template_source:
        return THINK
    return None


def detect_from_vocabulary(single_token: Callable[[str], bool]) -> ReasoningFormat | None:
    """The reasoning format whose markers the vocabulary holds as single tokens (a model whose
    template does not show them): ``single_token(text)`` says whether ``text`` is one token."""
    for fmt, markers in (
        (HARMONY, ("<|channel|>", "<|message|>")),
        (MISTRAL, ("[THINK]", "[/THINK]")),
        (THINK, ("<think>", "</think>")),
    ):
        if all(single_token(m) for m in markers):
            return fmt
    return None


def starts_inside(fmt: ReasoningFormat, prompt_tail: str) -> bool:
    """Does the rendered prompt (its last characters) leave the reply inside a block?"""
    return prompt_tail.rstrip().endswith(fmt.open)


@dataclass
class Parsed:
    reasoning: str = ""
    content: str = ""


class ReasoningParser:
    """Splits one reply's text, fed in pieces, into reasoning and content."""

    def __init__(self, fmt: ReasoningFormat, *, inside: bool = False) -> None:
        self.fmt = fmt
        self.state = REASONING if inside else CONTENT
        self.reasoned = inside  # a block was opened (even an empty one)
        self._buf = ""
        # Whitespace at the start and right after a marker is layout, not text.
        self._skip_space = True

    def feed(self, text: str) -> Parsed:
        out = Parsed()
        self._buf += text
        while self._buf:
            markers = self.fmt.markers[self.state]
            hit = min(
                ((self._buf.find(m), m, nxt) for m, nxt in markers if m in self._buf), default=None
            )
            if hit is not None:
                pos, marker, nxt = hit
                self._put(out, self._buf[:pos])
                self._buf = self._buf[pos + len(marker) :]
                if nxt == REASONING:
                    self.reasoned = True
                if nxt != self.state or marker == self.fmt.close:
                    self._skip_space = True
                self.state = nxt
                continue
            keep = _partial_suffix(self._buf, [m for m, _ in markers])
            self._put(out, self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep :]
            break
        return out

    def finish(self) -> Parsed:
        """The end of the reply: a held partial marker was text after all."""
        out = Parsed()
        self._put(out, self._buf)
        self._buf = ""
        return out

    def _put(self, out: Parsed, text: str) -> None:
        if self._skip_space:
            stripped = text.lstrip()
            if not stripped:
                return
            text, self._skip_space = stripped, False
        if self.state == REASONING:
            out.reasoning += text
        else:
            out.content += text


def _partial_suffix(text: str, markers: list[str]) -> int:
    """Length of the longest end of ``text`` that begins some marker."""
    best = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:n]):
                best = n
                break
    return best


EFFORTS = ("none", "minimal", "low", "medium", "high")
# Variables a request's chat_template_kwargs cannot set: the server sets them.
RESERVED_TEMPLATE_KWARGS = frozenset(
    {
        "messages",
        "tools",
        "add_generation_prompt",
        "chat_template",
        "tokenize",
        "bos_token",
        "eos_token",
        "continue_final_message",
        "return_dict",
        "documents",
        "tools_in_user_message",
    }
)


@dataclass(frozen=True)
class ReasoningOptions:
    """Server-wide choices (StartConfig): the response field, and the budget of each effort."""

    field: str = REASONING_FIELD  # "reasoning_content", "reasoning" or "both"
    budgets: tuple[tuple[str, int], ...] = tuple(REASONING_BUDGETS.items())

    @classmethod
    def from_config(cls, config: object) -> ReasoningOptions:
        return cls(
            getattr(config, "reasoning_field", REASONING_FIELD),
            tuple(
                (effort, getattr(config, f"reasoning_budget_{effort}", tokens))
                for effort, tokens in REASONING_BUDGETS.items()
            ),
        )

    def budget(self, effort: str | None) -> int | None:
        """Reasoning tokens allowed at ``effort`` (None: up to max_tokens)."""
        return dict(self.budgets).get(effort or "")

    def fields(self, reasoning: str | None) -> dict[str, str | None]:
        """The message (or delta) fields that carry ``reasoning``."""
        names = ("reasoning_content", "reasoning") if self.field == "both" else (self.field,)
        return dict.fromkeys(names, reasoning)
