"""Constrained decoding pieces on the real SmolLM2 tokenizer: the masks a grammar gives, and
the grammars tools and response_format compile to."""

from __future__ import annotations

import json

import numpy as np
import pytest

llguidance = pytest.importorskip("llguidance")

from dvai_bridge.core.grammar import Grammar, GrammarError, json_schema_grammar
from dvai_bridge.protocol.structured import grammar_text
from dvai_bridge.protocol.tools import ToolPlan

EOS = 2  # <|im_end|>
VOCAB = 49152
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def tokenizer():
    from dvai_bridge.backends.mlx.gguf_import import cached_import
    from dvai_bridge.store.resolve import embedded_default_gguf

    folder = cached_import(embedded_default_gguf())
    return llguidance.LLTokenizer(
        (folder / "tokenizer.json").read_text(), n_vocab=VOCAB, eos_token=[EOS]
    )


def drive(grammar: Grammar, tokenizer, text: str) -> np.ndarray:
    """Feed ``text`` token by token, checking each token was allowed; the mask after it."""
    m = grammar.matcher()
    for t in tokenizer.tokenize_str(text):
        assert m.allowed(VOCAB)[t], f"token {tokenizer.decode_str([t])!r} was masked"
        m.advance(t)
    return m.allowed(VOCAB)


def test_a_complete_value_allows_only_the_end(tokenizer) -> None:
    g = Grammar.compile(
        json_schema_grammar(
            {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        ),
        tokenizer,
    )
    mask = drive(g, tokenizer, '{"n": 42}')
    assert mask.nonzero()[0].tolist() == [EOS]


def test_the_first_token_must_open_the_object(tokenizer) -> None:
    g = Grammar.compile(json_schema_grammar({"type": "object"}), tokenizer)
    allowed = g.matcher().allowed(VOCAB).nonzero()[0]
    assert allowed.size > 0
    assert all(tokenizer.decode_str([int(t)]).startswith("{") for t in allowed)


def test_enum_values_are_the_only_choices(tokenizer) -> None:
    g = Grammar.compile(json_schema_grammar({"enum": ["celsius", "fahrenheit"]}), tokenizer)
    m = g.matcher()
    for t in tokenizer.tokenize_str('"'):
        m.advance(t)
    firsts = {tokenizer.decode_str([int(t)])[:1] for t in m.allowed(VOCAB).nonzero()[0]}
    assert firsts == {"c", "f"}


def test_a_mask_wider_than_the_tokenizer_forbids_the_padding(tokenizer) -> None:
    g = Grammar.compile(json_schema_grammar({"type": "object"}), tokenizer)
    mask = g.matcher().allowed(VOCAB + 64)
    assert not mask[VOCAB:].any()


def test_a_rejected_token_leaves_only_the_end(tokenizer) -> None:
    g = Grammar.compile(json_schema_grammar({"type": "object"}), tokenizer)
    m = g.matcher()
    m.advance(tokenizer.tokenize_str("hello")[0])
    assert m.error
    assert m.allowed(VOCAB).nonzero()[0].tolist() == [EOS]


def test_unsupported_keyword_is_named(tokenizer) -> None:
    with pytest.raises(GrammarError, match="uniqueItems"):
        Grammar.compile(json_schema_grammar({"type": "array", "uniqueItems": True}), tokenizer)


@pytest.mark.parametrize(
    ("choice", "parallel", "text", "ok"),
    [
        (
            "required",
            True,
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
            '"unit": "celsius"}}\n</tool_call>',
            True,
        ),
        (
            "required",
            True,
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
            False,
        ),  # "unit" is required
        ("required", True, "Sure! <tool_call>", False),  # no text before a forced call
        (
            {"type": "function", "function": {"name": "get_weather"}},
            True,
            "<tool_call>\n"
            '{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "fahrenheit"}}'
            "\n</tool_call>",
            True,
        ),
    ],
)
def test_forced_call_grammar(tokenizer, choice, parallel, text: str, ok: bool) -> None:
    plan = ToolPlan.build([TOOL], choice, parallel, None, False)
    spec, param = grammar_text(None, plan.calls_grammar())
    assert param == "tools"
    g = Grammar.compile(spec, tokenizer)
    m = g.matcher()
    accepted = True
    for t in tokenizer.tokenize_str(text):
        if not m.allowed(VOCAB)[t]:
            accepted = False
            break
        m.advance(t)
    assert accepted == ok
    if ok:
        allowed = m.allowed(VOCAB).nonzero()[0].tolist()
        assert EOS in allowed
        # one call per offered function: with one tool, only the end may follow
        assert allowed == [EOS]


def test_hermes_history_for_a_template_without_tools() -> None:
    plan = ToolPlan.build([TOOL], "auto", None, None, True)
    out = plan.messages(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "18 C"},
        ]
    )
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0]["content"].startswith("Be brief.") and "<tools>" in out[0]["content"]
    assert json.dumps(TOOL["function"]["parameters"]) in out[0]["content"]
    assert out[2]["content"] == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    )
    assert out[3]["content"] == (
        "<tool_response>\nsunny\n</tool_response>\n<tool_response>\n18 C\n</tool_response>"
    )


def test_native_history_gives_templates_argument_objects() -> None:
    plan = ToolPlan.build([TOOL], "auto", None, "{% if tools %}<tool_call>{% endif %}", True)
    assert plan.native
    out = plan.messages(
        [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ]
    )
    assert out[0]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert out[1]["name"] == "get_weather"
    assert plan.template_tools() == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "",
                "parameters": TOOL["function"]["parameters"],
            },
        }
    ]


FUNCS = [
    {"name": "get_weather", "parameters": TOOL["function"]["parameters"]},
    {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"tz": {"type": "string"}},
            "required": ["tz"],
            "additionalProperties": False,
        },
    },
]
FORCED = {  # per format: a reply its forced grammar must accept, with the calls it holds
    "hermes": '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", '
    '"unit": "celsius"}}\n</tool_call>',
    "mistral": '[TOOL_CALLS][{"name": "get_time", "arguments": {"tz": "UTC"}}, '
    '{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}]',
    "mistral_args": '[TOOL_CALLS]get_time[ARGS]{"tz": "UTC"}[TOOL_CALLS]get_weather[ARGS]'
    '{"city": "Oslo", "unit": "celsius"}',
    "llama3": '{"name": "get_time", "parameters": {"tz": "UTC"}}; {"name": "get_weather", '
    '"parameters": {"city": "Oslo", "unit": "celsius"}}',
}


@pytest.mark.parametrize("fmt", sorted(FORCED))
def test_each_format_forces_what_its_parser_reads(tokenizer, fmt: str) -> None:
    from dvai_bridge.core.grammar import lark_grammar
    from dvai_bridge.protocol.tool_formats import FORMATS

    f = FORMATS[fmt]
    g = Grammar.compile(lark_grammar(f.forced_lark(FUNCS, parallel=True)), tokenizer)
    mask = drive(g, tokenizer, FORCED[fmt])
    assert mask[EOS]
    assert [c.name for c in f.parse(FORCED[fmt])] == ["get_time", "get_weather"]
    one = Grammar.compile(lark_grammar(f.forced_lark(FUNCS[:1], parallel=False)), tokenizer)
    m = one.matcher()
    for t in tokenizer.tokenize_str(FORCED[fmt]):  # get_time is not offered any more
        if not m.allowed(VOCAB)[t]:
            break
        m.advance(t)
    else:
        pytest.fail("a grammar for get_weather accepted a call to get_time")


def _accepts(grammar: Grammar, tokenizer, text: str) -> tuple[bool, np.ndarray]:
    """(whether every token of ``text`` was allowed, the mask after the last allowed one)."""
    m = grammar.matcher()
    for t in tokenizer.tokenize_str(text):
        if not m.allowed(VOCAB)[t]:
            return False, m.allowed(VOCAB)
        m.advance(t)
    return True, m.allowed(VOCAB)


def _forced(tools: list[dict], tokenizer, choice="required", parallel=None) -> Grammar:
    plan = ToolPlan.build(tools, choice, parallel, None, False)
    return Grammar.compile(grammar_text(None, plan.calls_grammar())[0], tokenizer)


NESTED = {
    "type": "function",
    "function": {
        "name": "plan_trip",
        "parameters": {
            "$defs": {
                "Country": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}},
                    "required": ["name"],
                }
            },
            "type": "object",
            "properties": {"country": {"$ref": "#/$defs/Country"}},
            "required": ["country"],
        },
    },
}


@pytest.mark.parametrize("tools", [[NESTED], [NESTED, TOOL]], ids=["alone", "anyOf"])
def test_a_forced_call_resolves_defs_refs_in_its_parameters(tokenizer, tools) -> None:
    g = _forced(tools, tokenizer)  # was a 400: "Pointer '/$defs/Country' does not exist"
    call = '<tool_call>\n{"name": "plan_trip", "arguments": {"country": {"name": "Italy"}}}'
    ok, mask = _accepts(g, tokenizer, call + "\n</tool_call>")
    assert ok and mask[EOS]
    assert not _accepts(g, tokenizer, call.replace('"name": "Italy"', '"code": 1'))[0]


@pytest.mark.parametrize("fmt", ["hermes", "mistral", "mistral_args", "llama3"])
def test_every_format_embeds_parameters_with_refs(tokenizer, fmt: str) -> None:
    from dvai_bridge.core.grammar import lark_grammar
    from dvai_bridge.protocol.tool_formats import FORMATS

    funcs = [NESTED["function"], TOOL["function"]]
    for n in (1, 2):
        Grammar.compile(lark_grammar(FORMATS[fmt].forced_lark(funcs[:n], True)), tokenizer)


def test_a_forced_call_takes_no_undeclared_keys(tokenizer) -> None:
    open_tool = {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    g = _forced([open_tool], tokenizer)
    head = '<tool_call>\n{"name": "get_time", "arguments": {"city": "Oslo"'
    assert _accepts(g, tokenizer, head + "}}\n</tool_call>")[0]
    assert not _accepts(g, tokenizer, head + ', "zone": "CET"}}')[0]
    no_params = {"type": "function", "function": {"name": "ping"}}
    g = _forced([no_params], tokenizer)
    assert _accepts(g, tokenizer, '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>')[0]
    assert not _accepts(g, tokenizer, '<tool_call>\n{"name": "ping", "arguments": {"a')[0]


def test_required_ends_after_one_call_per_offered_function(tokenizer) -> None:
    time_tool = {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    g = _forced([TOOL, time_tool], tokenizer)
    one = '<tool_call>\n{"name": "get_time", "arguments": {"city": "Oslo"}}\n</tool_call>'
    ok, mask = _accepts(g, tokenizer, one)
    assert ok and mask[EOS] and mask.sum() > 1  # a second call may follow
    ok, mask = _accepts(g, tokenizer, one + "\n" + one)
    assert ok and mask.nonzero()[0].tolist() == [EOS]  # not a third
    ok, mask = _accepts(_forced([TOOL, time_tool], tokenizer, parallel=False), tokenizer, one)
    assert ok and mask.nonzero()[0].tolist() == [EOS]  # parallel_tool_calls: false
