"""How models write tool calls, and how to read them back.

Three families cover the common open models:

  hermes   ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one block per call
           (Hermes, Qwen 2.5/3, SmolLM3, and our own prompt for templates without tools)
  mistral  ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`` or, in newer templates,
           ``[TOOL_CALLS]name[ARGS]{...}`` repeated
  llama3   the reply is a JSON object ``{"name": ..., "parameters": {...}}``, optionally after
           ``<|python_tag|>``; several are separated by ``;``

Each format also writes the Lark grammar that forces a call (``tool_choice: required`` or a
named function) so that constrained decoding produces exactly what ``parse`` reads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..core.grammar import JSON_OPTIONS
from .call_schema import rebased

_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: dict[str, Any]
    # A call cut off by max_tokens: its arguments as far as they were written (not JSON).
    cut_arguments: str | None = None


class ToolFormat:
    name: str
    start: str  # the marker that opens the tool-call part of a reply
    at_start_only = False  # True: calls are recognised only at the very start of a reply

    def opens_calls(self, text: str) -> int:
        """Index where the tool-call part of ``text`` begins, or -1."""
        return text.find(self.start)

    def complete_calls(self, region: str, start: int = 0) -> tuple[list[ParsedCall], int]:
        """Calls already complete in a growing region from ``start`` on, and where they end.
        Formats that can only be read whole return ([], start) until ``parse``."""
        return [], start

    def parse(self, region: str) -> list[ParsedCall]:
        """All calls in the tool-call region; ``ValueError`` if it is not well formed."""
        raise NotImplementedError

    args_key = "arguments"  # what the model calls the arguments object

    def forced_lark(self, functions: list[dict[str, Any]], parallel: bool) -> str:
        """Lark grammar for a reply made only of calls to ``functions`` (name, parameters)."""
        raise NotImplementedError

    def call_schema(self, functions: list[dict[str, Any]], at: str = "#") -> dict[str, Any]:
        """JSON schema of one ``{"name": ..., <args_key>: {...}}`` object, name first; ``at``
        is where it sits in the grammar's JSON value (its ``$ref``s are rebased to there)."""
        one = len(functions) == 1
        schemas = [
            {
                "type": "object",
                "properties": {
                    "name": {"const": f["name"]},
                    self.args_key: rebased(
                        f["parameters"],
                        f"{at}{'' if one else f'/anyOf/{i}'}/properties/{self.args_key}",
                    ),
                },
                "required": ["name", self.args_key],
                "additionalProperties": False,
            }
            for i, f in enumerate(functions)
        ]
        call = schemas[0] if one else {"anyOf": schemas}
        return {**call, "x-guidance": JSON_OPTIONS}


def _call(obj: Any, args_key: str = "arguments") -> ParsedCall:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ValueError("a tool call needs a string 'name'")
    args = obj.get(args_key, obj.get("arguments", obj.get("parameters", {})))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        args = json.loads(args) if args.strip() else {}
    if not isinstance(args, dict):
        raise ValueError("tool call arguments must be a JSON object")
    return ParsedCall(obj["name"], args)


def _object_end(text: str, pos: int) -> int | None:
    """Index just past the JSON object that starts at ``pos`` (after whitespace), reading
    strings as strings (a ``</tool_call>`` inside one does not end the call); None while the
    object is unclosed, -1 if no object starts there."""
    i = len(text) - len(text[pos:].lstrip())
    if not text.startswith("{", i):
        return -1 if text[i:] else None
    depth, in_string, escaped = 0, False, False
    for k in range(i, len(text)):
        ch = text[k]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return k + 1
    return None


def _json_rule(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps(schema)


def _up_to(n: int, item: str, sep: str) -> str:
    """Lark for 1 to ``n`` ``item``s separated by ``sep``: a forced reply stops after as many
    calls as functions were offered instead of repeating one until ``max_tokens``."""
    rule = item
    for _ in range(n - 1):
        rule = f"{item} ({sep} {rule})?"
    return rule


class Hermes(ToolFormat):
    name = "hermes"
    start = "<tool_call>"
    end = "</tool_call>"

    def complete_calls(self, region: str, start: int = 0) -> tuple[list[ParsedCall], int]:
        calls: list[ParsedCall] = []
        used = start
        while True:
            i = region.find(self.start, used)
            if i < 0 or region.find(self.end, i + len(self.start)) < 0:
                return calls, used
            body = i + len(self.start)
            close = _object_end(region, body)
            if close is None:  # an object still being written (may hold the end marker)
                return calls, used
            if close < 0:  # not an object: the block ends at the first end marker
                j = region.find(self.end, body)
                calls.append(_call(json.loads(region[body:j])))
                used = j + len(self.end)
                continue
            after = len(region) - len(region[close:].lstrip())
            if not region.startswith(self.end, after):
                if self.end.startswith(region[after:]):
                    return calls, used  # the end marker is still arriving
                raise ValueError("text after a tool call's JSON inside <tool_call>")
            calls.append(_call(json.loads(region[body:close])))
            used = after + len(self.end)

    def parse(self, region: str) -> list[ParsedCall]:
        calls, used = self.complete_calls(region)
        rest = region[used:].strip()
        if rest.startswith(self.start):  # an unclosed last block (the model stopped early)
            calls.append(_call(json.loads(rest[len(self.start) :])))
        elif rest:
            raise ValueError("text after the tool calls")
        if not calls:
            raise ValueError("no tool call")
        return calls

    def forced_lark(self, functions: list[dict[str, Any]], parallel: bool) -> str:
        calls = _up_to(len(functions) if parallel else 1, "call", '"\\n"')
        return (
            f"start: {calls}\n"
            f'call: "<tool_call>\\n" {_json_rule(self.call_schema(functions))} '
            '"\\n</tool_call>"\n'
        )


_MISTRAL_HEADER = re.compile(r"([\w.-]+)\s*\[ARGS\]\s*")


class Mistral(ToolFormat):
    name = "mistral"
    start = "[TOOL_CALLS]"

    def parse(self, region: str) -> list[ParsedCall]:
        body = region[len(self.start) :].strip() if region.startswith(self.start) else region
        if body.startswith("["):
            payload = json.loads(body)
            if not isinstance(payload, list) or not payload:
                raise ValueError("[TOOL_CALLS] must be followed by a list of calls")
            return [_call(c) for c in payload]
        calls, pos = [], 0
        while (m := _MISTRAL_HEADER.match(body, pos)) is not None:
            args, pos = _DECODER.raw_decode(body, m.end())
            calls.append(_call({"name": m.group(1), "arguments": args}))
            pos = len(body) - len(body[pos:].lstrip()) if body[pos:].strip() else len(body)
            if body[pos : pos + len(self.start)] == self.start:
                pos += len(self.start)
        if not calls or body[pos:].strip():
            raise ValueError("not a [TOOL_CALLS] list")
        return calls

    def forced_lark(self, functions: list[dict[str, Any]], parallel: bool) -> str:
        items: dict[str, Any] = {
            "type": "array",
            "items": self.call_schema(functions, "#/items"),
            "minItems": 1,
            "maxItems": len(functions) if parallel else 1,
            "x-guidance": JSON_OPTIONS,
        }
        return f'start: "[TOOL_CALLS]" {_json_rule(items)}\n'


class MistralArgs(Mistral):
    """Newer Mistral templates (Small 3.1+, Devstral, Magistral):
    ``[TOOL_CALLS]name[ARGS]{...}``."""

    name = "mistral_args"

    def forced_lark(self, functions: list[dict[str, Any]], parallel: bool) -> str:
        options = " | ".join(
            f'"{f["name"]}[ARGS]" {_json_rule({**f["parameters"], "x-guidance": JSON_OPTIONS})}'
            for f in functions
        )
        calls = _up_to(len(functions) if parallel else 1, "call", "")
        return f'start: {calls}\ncall: "[TOOL_CALLS]" ({options})\n'


class Llama3(ToolFormat):
    name = "llama3"
    start = "<|python_tag|>"
    at_start_only = True
    args_key = "parameters"

    def opens_calls(self, text: str) -> int:
        stripped = text.lstrip()
        if stripped.startswith((self.start, "{")):
            return len(text) - len(stripped)
        return -1

    def parse(self, region: str) -> list[ParsedCall]:
        body = region.strip().removeprefix(self.start).strip()
        calls, pos = [], 0
        while pos < len(body):
            obj, pos = _DECODER.raw_decode(body, pos)
            calls.append(_call(obj, "parameters"))
            rest = body[pos:].lstrip()
            if rest.startswith(";"):
                rest = rest[1:].lstrip()
            pos = len(body) - len(rest)
        if not calls:
            raise ValueError("no tool call")
        return calls

    def forced_lark(self, functions: list[dict[str, Any]], parallel: bool) -> str:
        calls = _up_to(len(functions) if parallel else 1, "call", '"; "')
        return f"start: {calls}\ncall: {_json_rule(self.call_schema(functions))}\n"


FORMATS: dict[str, ToolFormat] = {f.name: f for f in (Hermes(), Mistral(), MistralArgs(), Llama3())}


def detect_format(template: str | None) -> tuple[ToolFormat, bool] | None:
    """(format, native) for a chat template source.

    native: the template renders ``tools`` itself, in that format. A template that does not
    use ``tools`` at all gets the Hermes format through a system prompt we write (not native).
    None: the template uses tools in a format this module cannot read.
    """
    if not template or not re.search(r"\btools\b", template):
        return FORMATS["hermes"], False
    if "<tool_call>" in template:
        return FORMATS["hermes"], True
    if "[TOOL_CALLS]" in template:
        return FORMATS["mistral_args" if "[ARGS]" in template else "mistral"], True
    if "<|python_tag|>" in template or "ipython" in template:
        return FORMATS["llama3"], True
    return None
