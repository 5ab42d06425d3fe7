"""Reasoning apart from the answer (protocol/reasoning.py) and the engine's reasoning gate
(core/reasoning.py): every format, fed in pieces of every size."""

from __future__ import annotations

import numpy as np
import pytest

from dvai_bridge.core.reasoning import GatedGrammar, ReasoningSpec, ReasoningTracker
from dvai_bridge.errors import InvalidRequest
from dvai_bridge.protocol.reasoning import (
    HARMONY,
    MISTRAL,
    THINK,
    ReasoningOptions,
    ReasoningParser,
    detect_format,
)
from dvai_bridge.protocol.reasoning_plan import template_kwargs

# (format, starts inside, reply text, reasoning, content)
CASES = [
    (
        THINK,
        False,
        "<think>\nLet me see: 2+2.\n</think>\n\nIt is 4.",
        "Let me see: 2+2.\n",
        "It is 4.",
    ),
    (
        THINK,
        True,
        "Hmm, < and </ and <thi are text.</think>\n\nAnswer </b>",
        "Hmm, < and </ and <thi are text.",
        "Answer </b>",
    ),
    (THINK, False, "No reasoning at all <", "", "No reasoning at all <"),
    (THINK, True, "cut off mid-thought </thi", "cut off mid-thought </thi", ""),
    (THINK, False, "<think>\n\n</think>\n\nOff.", "", "Off."),
    (MISTRAL, False, "[THINK]Sum it.[/THINK]The sum is 4.", "Sum it.", "The sum is 4."),
    (
        HARMONY,
        False,
        (
            "<|channel|>analysis<|message|>User asks 2+2.<|end|><|start|>assistant"
            "<|channel|>final<|message|>4<|return|>"
        ),
        "User asks 2+2.",
        "4",
    ),
]


def run(fmt, inside, text, size):
    parser = ReasoningParser(fmt, inside=inside)
    reasoning = content = ""
    for i in range(0, len(text), size):
        part = parser.feed(text[i : i + size])
        reasoning, content = reasoning + part.reasoning, content + part.content
    part = parser.finish()
    return reasoning + part.reasoning, content + part.content


@pytest.mark.parametrize("fmt,inside,text,reasoning,content", CASES)
def test_every_piece_size_gives_the_same_split(fmt, inside, text, reasoning, content) -> None:
    for size in range(1, len(text) + 1):
        assert run(fmt, inside, text, size) == (reasoning, content), size


@pytest.mark.parametrize("fmt", [THINK, MISTRAL, HARMONY])
def test_content_never_holds_a_marker(fmt) -> None:
    text = f"{fmt.open}a{fmt.close}b{fmt.open}c{fmt.close}d"
    for size in (1, 2, 5, 100):
        reasoning, content = run(fmt, False, text, size)
        assert fmt.open not in content and fmt.close not in content
        assert "a" in reasoning and "c" in reasoning and "b" in content and "d" in content


def test_format_comes_from_the_template() -> None:
    assert detect_format("{{ '<think>\\n' }}") is THINK
    assert detect_format("{% if m.reasoning_content %}") is THINK
    assert detect_format("[THINK]{{ m.thinking }}[/THINK]") is MISTRAL
    assert detect_format("<|start|>assistant<|channel|>final") is HARMONY
    assert detect_format("<|im_start|>assistant") is None
    assert detect_format(None) is None


def test_format_from_the_vocabulary_when_the_template_shows_none() -> None:
    from dvai_bridge.protocol.reasoning import detect_from_vocabulary

    qwen3 = {"<think>", "</think>"}
    assert detect_from_vocabulary(qwen3.__contains__) is THINK
    assert detect_from_vocabulary({"[THINK]", "[/THINK]"}.__contains__) is MISTRAL
    assert detect_from_vocabulary({"<|channel|>", "<|message|>"}.__contains__) is HARMONY
    assert detect_from_vocabulary({"<think>"}.__contains__) is None  # both markers, or none
    assert detect_from_vocabulary(lambda _text: False) is None  # SmolLM2: markers spelled out


def test_template_kwargs() -> None:
    qwen = "{% if enable_thinking is false %}"
    assert template_kwargs("none", None, qwen) == {"enable_thinking": False}
    assert template_kwargs("none", {"enable_thinking": True}, qwen) == {"enable_thinking": True}
    assert template_kwargs("low", None, qwen) is None
    assert template_kwargs("high", None, "{{ reasoning_effort }}") == {"reasoning_effort": "high"}
    with pytest.raises(InvalidRequest) as err:
        template_kwargs(None, {"messages": []}, qwen)
    assert err.value.param == "chat_template_kwargs"


def test_options_budgets_and_fields() -> None:
    opts = ReasoningOptions()
    assert (opts.budget("low"), opts.budget("medium"), opts.budget("high")) == (256, 1024, None)
    assert ReasoningOptions("both").fields("x") == {"reasoning_content": "x", "reasoning": "x"}
    assert ReasoningOptions("reasoning").fields(None) == {"reasoning": None}


# -- the engine's gate: tokens are bytes of a tiny vocabulary ------------------------------
VOCAB = [b"a", b"b", b"</", b"think", b">", b"\n", b"{", b"}", b"</think>", b"<think>"]
TOK = {t: i for i, t in enumerate(VOCAB)}
CLOSE = (TOK[b"</think>"], TOK[b"\n"], TOK[b"\n"])


class OnlyBrace:
    """An inner grammar's matcher: '{' then '}' then done."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def allowed(self, n: int) -> np.ndarray:
        mask = np.zeros(n, dtype=bool)
        mask[TOK[b"{"] if not self.seen else TOK[b"}"]] = True
        return mask

    def advance(self, t: int) -> None:
        self.seen.append(t)

    done = property(lambda self: len(self.seen) == 2)
    error = None


class Inner:
    def matcher(self):
        return OnlyBrace()


def token_bytes(t: int) -> bytes:
    return VOCAB[t]


def test_tracker_finds_a_marker_split_over_tokens() -> None:
    spec = ReasoningSpec("</think>", CLOSE)
    tr = ReasoningTracker(spec, token_bytes)
    for t in (b"a", b"</", b"think", b">"):
        assert tr.inside
        tr.advance(TOK[t])
    assert not tr.inside and tr.tokens == 4
    tr.advance(TOK[b"b"])
    assert tr.tokens == 4  # the answer is not counted


def test_tracker_counts_a_block_the_model_opens_itself() -> None:
    spec = ReasoningSpec("</think>", CLOSE, inside=False, open_text="<think>")
    tr = ReasoningTracker(spec, token_bytes)
    tr.advance(TOK[b"a"])
    assert not tr.inside and tr.tokens == 0
    tr.advance(TOK[b"<think>"])  # one special token, as in Qwen3's vocabulary
    assert tr.inside
    for t in (b"b", b"b", b"</", b"think", b">"):
        tr.advance(TOK[t])
    assert not tr.inside and tr.tokens == 6
    tr.advance(TOK[b"a"])
    assert tr.tokens == 6


def test_gate_forces_the_close_at_the_budget_then_hands_over() -> None:
    spec = ReasoningSpec("</think>", CLOSE, budget=3)
    gate = GatedGrammar(spec, Inner(), token_bytes).matcher()
    n = len(VOCAB)
    for _ in range(3):  # free reasoning: every token allowed
        assert gate.allowed(n).all()
        gate.advance(TOK[b"a"])
    for forced in CLOSE:  # the budget is spent: the close, one token at a time
        mask = gate.allowed(n)
        assert mask.sum() == 1 and mask[forced]
        gate.advance(forced)
    assert not gate.done
    assert np.flatnonzero(gate.allowed(n)).tolist() == [TOK[b"{"]]  # the grammar from here
    gate.advance(TOK[b"{"])
    gate.advance(TOK[b"}"])
    assert gate.done


def test_a_constrained_reply_cannot_end_inside_its_reasoning() -> None:
    eos = TOK[b"b"]  # stands for the end-of-sequence token here
    gate = GatedGrammar(
        ReasoningSpec("</think>", CLOSE), Inner(), token_bytes, frozenset({eos})
    ).matcher()
    mask = gate.allowed(len(VOCAB))
    assert not mask[eos] and mask.sum() == len(VOCAB) - 1
    free = GatedGrammar(
        ReasoningSpec("</think>", CLOSE, budget=5), None, token_bytes, frozenset({eos})
    ).matcher()
    assert free.allowed(len(VOCAB)).all()  # no grammar: the model may stop while thinking


def test_gate_hands_over_when_the_model_closes_the_block_itself() -> None:
    gate = GatedGrammar(
        ReasoningSpec("</think>", CLOSE, budget=100), Inner(), token_bytes
    ).matcher()
    for t in (b"a", b"</think>"):
        assert gate.allowed(len(VOCAB)).all()
        gate.advance(TOK[t])
    assert np.flatnonzero(gate.allowed(len(VOCAB))).tolist() == [TOK[b"{"]]


# -- --chat-template FILE ------------------------------------------------------------------
def test_chat_template_file_replaces_the_models_own(tmp_path) -> None:
    from dvai_bridge.backends.registry import create_backend
    from dvai_bridge.config import StartConfig
    from dvai_bridge.errors import ConfigurationInvalid
    from dvai_bridge.progress import ProgressHub

    good = tmp_path / "t.jinja"
    good.write_text("{% for m in messages %}[{{ m.content }}]{% endfor %}<think>\n")
    backend = create_backend(StartConfig(backend="fake", chat_template=str(good)), ProgressHub())
    assert backend.tokenizer.chat_template_source == good.read_text()
    assert (
        backend.tokenizer.prompt_tail(
            backend.tokenizer.chat_tokens([{"role": "user", "content": "hi"}])
        )
        .rstrip()
        .endswith("[hi]<think>")
    )
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}")
    for path in (bad, tmp_path / "missing.jinja"):
        with pytest.raises(ConfigurationInvalid) as err:
            create_backend(StartConfig(backend="fake", chat_template=str(path)), ProgressHub())
        assert err.value.param == "chat_template"
