"""json_size.measure counts array items and object members outside strings, exactly past the
limit, and names the top-level member that holds most of them."""

from __future__ import annotations

import json

import pytest

from dvai_bridge.http.json_size import measure


@pytest.mark.parametrize(
    "obj",
    [
        {"a": [1, 2, {"b": 'x,[{"\\'}]},
        {"messages": [{"role": "user", "content": 'say "[1,2]", {ok}\\'}] * 50, "n": 2},
        {"prompt": [[1, 2]] * 100, "stop": [",", "[", "{", '\\"']},
        [1, [2, [3]], {"k": "v,"}],
    ],
)
def test_the_exact_count_ignores_strings_and_escapes(obj):
    raw = json.dumps(obj).encode()
    values, _ = measure(raw, 0)
    text = json.dumps(obj)
    expected = sum(1 for _ in _structural(json.loads(text)))
    assert values == expected


def _structural(value):
    """One per container opened and per separator: what the count means."""
    if isinstance(value, (list, dict)):
        yield value
        items = list(value.values()) if isinstance(value, dict) else value
        yield from range(max(len(items) - 1, 0))  # the commas between items
        for item in items:
            yield from _structural(item)


def test_the_heaviest_top_level_member_is_named():
    raw = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": ""}] * 1000, "logit_bias": {"1": 1}}
    ).encode()
    values, name = measure(raw, 100)
    assert values > 100 and name == "messages"
    assert measure(b'{"prompt": [' + b"[1]," * 999 + b"[1]]}", 100)[1] == "prompt"


def test_below_the_limit_nothing_is_scanned_or_named():
    assert measure(b'{"a": "x,,,"}', 10) == (4, None)  # the quick bound counts string commas
