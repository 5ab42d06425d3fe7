"""Tool-call formats and the streaming splitter.

The replies below are written in the shapes these model families emit, as their chat templates
and model cards show them (none of these models runs on this test machine; the real SmolLM2
reply in the Hermes format is checked end to end in tests/e2e/test_tools.py):
- Hermes: Qwen2.5 / Hermes 3 ``<tool_call>`` blocks, name first or arguments first;
- Mistral: ``[TOOL_CALLS]`` + a JSON list (v0.3) and ``[TOOL_CALLS]name[ARGS]{...}`` (2503+);
- Llama 3.x: a bare JSON object with ``parameters``, and ``<|python_tag|>`` with ``;``.
"""

from __future__ import annotations

import json

import pytest

from dvai_bridge.protocol.tool_formats import FORMATS, ParsedCall, detect_format
from dvai_bridge.protocol.tool_stream import ToolCallSplitter

WEATHER = {"location": "Paris, France", "unit": "celsius"}

QWEN = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris, France", '
    '"unit": "celsius"}}\n</tool_call>'
)
QWEN_TWO = (
    QWEN + '\n<tool_call>\n{"name": "get_time", "arguments": {"timezone": '
    '"Europe/Paris"}}\n</tool_call>'
)
HERMES3_WITH_TEXT = (
    "Let me check the weather for you.\n<tool_call>\n"
    '{"arguments": {"location": "Paris, France", "unit": "celsius"}, '
    '"name": "get_weather"}\n</tool_call>'
)
MISTRAL_V3 = (
    '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"location": "Paris, France", '
    '"unit": "celsius"}}]'
)
MISTRAL_ARGS = (
    '[TOOL_CALLS]get_weather[ARGS]{"location": "Paris, France", "unit": "celsius"}'
    '[TOOL_CALLS]get_time[ARGS]{"timezone": "Europe/Paris"}'
)
LLAMA31 = '{"name": "get_weather", "parameters": {"location": "Paris, France", "unit": "celsius"}}'
LLAMA32_TAG = (
    '<|python_tag|>{"name": "get_weather", "parameters": {"location": "Paris, France", '
    '"unit": "celsius"}}; {"name": "get_time", "parameters": {"timezone": '
    '"Europe/Paris"}}'
)
KNOWN = frozenset({"get_weather", "get_time"})


@pytest.mark.parametrize(
    ("fmt", "text", "names"),
    [
        ("hermes", QWEN, ["get_weather"]),
        ("hermes", QWEN_TWO, ["get_weather", "get_time"]),
        ("mistral", MISTRAL_V3, ["get_weather"]),
        ("mistral", MISTRAL_ARGS, ["get_weather", "get_time"]),
        ("llama3", LLAMA31, ["get_weather"]),
        ("llama3", LLAMA32_TAG, ["get_weather", "get_time"]),
    ],
)
def test_parse_recorded_outputs(fmt: str, text: str, names: list[str]) -> None:
    f = FORMATS[fmt]
    calls = f.parse(text[f.opens_calls(text) :])
    assert [c.name for c in calls] == names
    assert calls[0].arguments == WEATHER


def test_hermes_text_before_the_call_is_content() -> None:
    s = ToolCallSplitter(FORMATS["hermes"], KNOWN)
    a, b = s.feed(HERMES3_WITH_TEXT), s.finish()
    assert (a.content + b.content).strip() == "Let me check the weather for you."
    assert a.calls + b.calls == [ParsedCall("get_weather", WEATHER)]


@pytest.mark.parametrize(
    ("fmt", "text", "n"),
    [
        ("hermes", QWEN_TWO, 2),
        ("hermes", HERMES3_WITH_TEXT, 1),
        ("mistral", MISTRAL_V3, 1),
        ("mistral", MISTRAL_ARGS, 2),
        ("llama3", LLAMA31, 1),
        ("llama3", LLAMA32_TAG, 2),
    ],
)
@pytest.mark.parametrize("piece", [1, 2, 3, 7])
def test_streaming_in_pieces_gives_what_whole_gives(
    fmt: str, text: str, n: int, piece: int
) -> None:
    whole = ToolCallSplitter(FORMATS[fmt], KNOWN)
    w1, w2 = whole.feed(text), whole.finish()
    s = ToolCallSplitter(FORMATS[fmt], KNOWN)
    content, calls = "", []
    for i in range(0, len(text), piece):
        out = s.feed(text[i : i + piece])
        assert "<tool_call" not in out.content and "[TOOL_CALLS" not in out.content
        assert "python_tag" not in out.content
        content += out.content
        calls += out.calls
    end = s.finish()
    content, calls = content + end.content, calls + end.calls
    assert len(calls) == n
    assert calls == w1.calls + w2.calls
    assert content == w1.content + w2.content


def test_hermes_calls_are_handed_out_as_each_block_closes() -> None:
    s = ToolCallSplitter(FORMATS["hermes"], KNOWN)
    first_end = QWEN_TWO.index("</tool_call>") + len("</tool_call>")
    assert [c.name for c in s.feed(QWEN_TWO[:first_end]).calls] == ["get_weather"]
    assert [c.name for c in s.feed(QWEN_TWO[first_end:]).calls] == ["get_time"]
    assert s.finish().calls == []


def test_plain_text_passes_through_and_a_marker_prefix_waits() -> None:
    s = ToolCallSplitter(FORMATS["hermes"], KNOWN)
    assert s.feed("The answer is 4 <").content == "The answer is 4 "
    assert s.feed("b>bold</b>").content == "<b>bold</b>"
    assert s.finish().content == ""


@pytest.mark.parametrize(
    "broken",
    [
        '<tool_call>\n{"name": "get_weather", "arguments": {"loc',  # cut off (length)
        '<tool_call>\n{"name": "launch_rockets", "arguments": {}}\n</tool_call>',  # undeclared
        "<tool_call>\nnot json\n</tool_call>",
    ],
)
def test_a_region_that_does_not_parse_comes_back_as_content(broken: str) -> None:
    s = ToolCallSplitter(FORMATS["hermes"], KNOWN, stream=False)
    a = s.feed("Sure. " + broken)
    b = s.finish()
    assert a.calls == b.calls == []
    assert a.content + b.content == "Sure. " + broken


def test_llama3_json_not_at_the_start_is_content() -> None:
    s = ToolCallSplitter(FORMATS["llama3"], KNOWN)
    text = 'Use this: {"name": "get_weather", "parameters": {}}'
    out = s.feed(text)
    assert out.content + s.finish().content == text


def test_llama3_reply_that_is_json_but_not_a_call_is_content() -> None:
    s = ToolCallSplitter(FORMATS["llama3"], KNOWN)
    text = '{"answer": 4}'
    a = s.feed(text)
    assert a.content + s.finish().content == text


def test_parallel_false_keeps_the_first_call() -> None:
    s = ToolCallSplitter(FORMATS["hermes"], KNOWN, parallel=False)
    calls = s.feed(QWEN_TWO).calls + s.finish().calls
    assert [c.name for c in calls] == ["get_weather"]


def test_arguments_written_as_a_json_string_are_read() -> None:
    text = (
        '<tool_call>{"name": "get_weather", "arguments": '
        + json.dumps(json.dumps(WEATHER))
        + "}</tool_call>"
    )
    assert FORMATS["hermes"].parse(text) == [ParsedCall("get_weather", WEATHER)]


@pytest.mark.parametrize(
    ("template", "fmt", "native"),
    [
        (None, "hermes", False),
        ("{% for m in messages %}{{ m.content }}{% endfor %}", "hermes", False),
        ("{% if tools %}<tools>{{ tools }}</tools> ... <tool_call>{% endif %}", "hermes", True),
        (
            "{% if tools %}[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]",
            "mistral",
            True,
        ),
        ("{% if tools %}...{% endif %}<|python_tag|>{{ m.content }}", "llama3", True),
    ],
)
def test_detect_format(template: str | None, fmt: str, native: bool) -> None:
    found = detect_format(template)
    assert found is not None
    assert (found[0].name, found[1]) == (fmt, native)


def test_detect_format_refuses_an_unknown_tool_template() -> None:
    assert detect_format("{% if tools %}<|tool_list_start|>{{ tools }}{% endif %}") is None


@pytest.mark.parametrize("stream", [True, False])
def test_an_unfinished_call_after_complete_ones_is_the_same_streamed_or_not(stream: bool) -> None:
    s = ToolCallSplitter(FORMATS["hermes"], KNOWN, stream=stream)
    text = QWEN + '\n<tool_call>\n{"name": "get_time", "arguments": {"time'  # max_tokens
    a, b = s.feed(text), s.finish()
    assert (a.content + b.content) == ""
    calls = a.calls + b.calls
    if stream:  # the cut call went out as deltas, as far as it was written
        assert [c.name for c in calls] == ["get_weather"]
        deltas = [d for d in a.deltas + b.deltas if d.index == 1]
        assert deltas[0].name == "get_time"
        assert "".join(d.arguments for d in deltas) == '{"time'
    else:  # the same call, with the same (not JSON) arguments text
        assert [c.name for c in calls] == ["get_weather", "get_time"]
        assert calls[1].cut_arguments == '{"time'


ECHO_CALL = '<tool_call>\n{"name": "echo", "arguments": {"text": "a</tool_call>b"}}\n</tool_call>'


@pytest.mark.parametrize("piece", [0, 1, 5])
def test_an_end_marker_inside_a_json_string_does_not_end_the_call(piece: int) -> None:
    assert FORMATS["hermes"].parse(ECHO_CALL) == [ParsedCall("echo", {"text": "a</tool_call>b"})]
    s = ToolCallSplitter(FORMATS["hermes"], frozenset({"echo"}), stream=bool(piece))
    pieces = (
        [ECHO_CALL[i : i + piece] for i in range(0, len(ECHO_CALL), piece)]
        if piece
        else [ECHO_CALL]
    )
    outs = [s.feed(p) for p in pieces] + [s.finish()]
    assert "".join(o.content for o in outs) == ""
    assert [c for o in outs for c in o.calls] == [ParsedCall("echo", {"text": "a</tool_call>b"})]


@pytest.mark.parametrize("stream", [True, False])
def test_a_forced_reply_that_does_not_parse_is_never_content(stream: bool) -> None:
    s = ToolCallSplitter(FORMATS["hermes"], KNOWN, stream=stream, forced=True)
    a, b = s.feed('<tool_call>\n{"na'), s.finish()  # cut before the name
    assert (a.content + b.content) == "" and not (a.calls + b.calls)


def _stream(fmt: str, text: str, piece: int) -> tuple[str, list]:
    s = ToolCallSplitter(FORMATS[fmt], KNOWN)
    content, deltas = "", []
    for i in range(0, len(text), piece):
        out = s.feed(text[i : i + piece])
        content += out.content
        deltas += out.deltas
    end = s.finish()
    return content + end.content, deltas + end.deltas


@pytest.mark.parametrize(
    ("fmt", "text", "n"),
    [
        ("hermes", QWEN_TWO, 2),
        ("hermes", HERMES3_WITH_TEXT, 1),
        ("mistral", MISTRAL_V3, 1),
        ("mistral", MISTRAL_ARGS, 2),
        ("llama3", LLAMA31, 1),
        ("llama3", LLAMA32_TAG, 2),
    ],
)
@pytest.mark.parametrize("piece", [1, 3, 11])
def test_stream_deltas_rebuild_the_calls(fmt: str, text: str, n: int, piece: int) -> None:
    _, deltas = _stream(fmt, text, piece)
    names: dict[int, str] = {}
    args: dict[int, str] = {}
    for d in deltas:
        if d.name is not None:
            assert d.index not in names, "a call is opened once"
            assert d.index == len(names), "calls are opened in order"
            names[d.index] = d.name
        else:
            assert d.index in names, "arguments come after the name"
        args[d.index] = args.get(d.index, "") + d.arguments
    whole = FORMATS[fmt].parse(text[FORMATS[fmt].opens_calls(text) :])
    assert len(names) == n
    assert [ParsedCall(names[k], json.loads(args[k])) for k in range(n)] == whole


def test_arguments_stream_before_the_call_closes() -> None:
    s = ToolCallSplitter(FORMATS["hermes"], KNOWN)
    opened = s.feed('<tool_call>\n{"name": "get_weather", "arguments": {"location": "Pa')
    assert [d.name for d in opened.deltas] == ["get_weather", None]
    assert opened.deltas[1].arguments == '{"location": "Pa'
    rest = s.feed('ris}"}}\n</tool_call>')  # a brace inside a string does not close it
    assert "".join(d.arguments for d in rest.deltas) == 'ris}"}'
    assert rest.calls == [ParsedCall("get_weather", {"location": "Paris}"})]


def test_arguments_before_the_name_are_sent_whole_once_parsed() -> None:
    _content, deltas = _stream("hermes", HERMES3_WITH_TEXT, 2)
    assert [d.name for d in deltas] == ["get_weather", None]
    assert json.loads(deltas[1].arguments) == WEATHER


def test_a_streamed_call_cut_short_is_not_repeated_as_content() -> None:
    content, deltas = _stream(
        "hermes", 'Sure. <tool_call>\n{"name": "get_weather", "arguments": {"loc', 4
    )
    assert content == "Sure. "
    assert deltas[0].name == "get_weather"
    assert "".join(d.arguments for d in deltas) == '{"loc'
