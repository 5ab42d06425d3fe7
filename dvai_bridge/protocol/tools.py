"""Tools on the chat endpoint: what the template sees, what the model may write, and the reply.

``ToolPlan.build`` reads ``tools``, ``tool_choice`` and ``parallel_tool_calls`` and the model's
chat template:

- a template that renders ``tools`` in a format we read (``tool_formats.detect_format``) gets
  them as its ``tools`` variable, and the history as such templates expect it (arguments as
  objects, ``role: tool`` messages as they are);
- a template that does not use tools (SmolLM2's, for one) gets a system prompt describing the
  tools in the Hermes format, assistant calls written back as ``<tool_call>`` blocks, and tool
  results as ``<tool_response>`` user turns: what Qwen's template does;
- ``tool_choice: required`` or a named function becomes a grammar (the format's
  ``forced_lark``), so the reply is exactly one or more valid calls; ``auto`` leaves the model
  free and parses what it writes; ``none`` shows no tools and parses nothing.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from ..core.grammar import GrammarError, check_json_schema
from ..errors import InvalidRequest
from .call_schema import closed
from .tool_formats import ParsedCall, ToolFormat, detect_format
from .tool_stream import ToolCallSplitter

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")

HERMES_SYSTEM = """\
# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def openai_call(call: ParsedCall) -> dict[str, Any]:
    """A complete call as ``message.tool_calls`` holds it."""
    arguments = call.cut_arguments if call.cut_arguments is not None else json.dumps(call.arguments)
    return {
        "id": new_call_id(),
        "type": "function",
        "function": {"name": call.name, "arguments": arguments},
    }


def _functions(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``function`` objects of ``tools``, checked; 400 naming the first bad one."""
    out, seen = [], set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if tool.get("type", "function") != "function":
            raise InvalidRequest(f"{where}.type must be 'function'.", param=f"{where}.type")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise InvalidRequest(f"{where}.function is missing.", param=f"{where}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not name or not set(name) <= _NAME_CHARS or len(name) > 64:
            raise InvalidRequest(
                f"{where}.function.name must be 1-64 letters, digits, '_', '-' or '.'.",
                param=f"{where}.function.name",
            )
        if name in seen:
            raise InvalidRequest(
                f"{where}: function {name!r} is declared twice.", param=f"{where}.function.name"
            )
        seen.add(name)
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise InvalidRequest(
                f"{where}.function.parameters must be a JSON schema object.",
                param=f"{where}.function.parameters",
            )
        try:
            check_json_schema(params)
        except GrammarError as exc:
            raise InvalidRequest(
                f"{where}.function.parameters is not a valid JSON schema: {exc}",
                param=f"{where}.function.parameters",
            ) from None
        out.append({"name": name, "description": fn.get("description", ""), "parameters": params})
    return out


def _choice(tool_choice: Any, names: set[str], has_tools: bool) -> str:
    """'none' | 'auto' | 'required' | 'function:<name>'."""
    if tool_choice is None:
        return "auto" if has_tools else "none"
    if isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise InvalidRequest(
                "tool_choice must be 'none', 'auto', 'required' or "
                "{'type': 'function', 'function': {'name': ...}}.",
                param="tool_choice",
            )
        if tool_choice == "required" and not has_tools:
            raise InvalidRequest("tool_choice 'required' needs tools.", param="tool_choice")
        return tool_choice if has_tools else "none"
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        if name not in names:
            raise InvalidRequest(
                f"tool_choice names function {name!r}, which is not in tools.", param="tool_choice"
            )
        return f"function:{name}"
    raise InvalidRequest(
        "tool_choice must be 'none', 'auto', 'required' or "
        "{'type': 'function', 'function': {'name': ...}}.",
        param="tool_choice",
    )


def _arguments_object(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


@dataclass
class ToolPlan:
    functions: list[dict[str, Any]]
    choice: str
    parallel: bool
    fmt: ToolFormat
    native: bool

    @classmethod
    def build(
        cls,
        tools: list[dict[str, Any]] | None,
        tool_choice: Any,
        parallel: bool | None,
        template: str | None,
        history_has_tools: bool,
    ) -> ToolPlan | None:
        """None when the request involves no tools at all."""
        if not tools and tool_choice in (None, "none") and not history_has_tools:
            return None
        if tools is not None and not isinstance(tools, list):
            raise InvalidRequest("tools must be a list.", param="tools")
        functions = _functions(tools or [])
        choice = _choice(tool_choice, {f["name"] for f in functions}, bool(functions))
        detected = detect_format(template)
        if detected is None:
            raise InvalidRequest(
                "This model's chat template declares tools in a format dvai-bridge cannot "
                "parse (known: Hermes <tool_call>, Mistral [TOOL_CALLS], Llama 3 JSON).",
                param="tools",
            )
        fmt, native = detected
        return cls(functions, choice, parallel is not False, fmt, native)

    @property
    def active(self) -> bool:
        """Tools are offered to the model (and its reply parsed)."""
        return self.choice != "none" and bool(self.functions)

    # -- prompt ---------------------------------------------------------------------------
    def template_tools(self) -> list[dict[str, Any]] | None:
        if not (self.native and self.active):
            return None
        return [{"type": "function", "function": f} for f in self.offered()]

    def offered(self) -> list[dict[str, Any]]:
        if self.choice.startswith("function:"):
            name = self.choice.removeprefix("function:")
            return [f for f in self.functions if f["name"] == name]
        return self.functions

    def messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The history as the template should see it."""
        return self._native_history(messages) if self.native else self._hermes_history(messages)

    @staticmethod
    def _native_history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        names: dict[str, str] = {}
        out = []
        for m in messages:
            m = dict(m)
            if m.get("tool_calls"):
                calls = []
                for c in m["tool_calls"]:
                    fn = dict(c.get("function") or {})
                    fn["arguments"] = _arguments_object(fn.get("arguments"))
                    names[c.get("id", "")] = fn.get("name", "")
                    calls.append({**c, "function": fn})
                m["tool_calls"] = calls
            if m["role"] == "tool" and "name" not in m:
                m["name"] = names.get(m.get("tool_call_id") or "", "")
            out.append(m)
        return out

    def _hermes_history(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for m in messages:
            role, content = m["role"], m.get("content") or ""
            if role == "assistant" and m.get("tool_calls"):
                blocks = [
                    json.dumps(
                        {
                            "name": (c.get("function") or {}).get("name"),
                            "arguments": _arguments_object(
                                (c.get("function") or {}).get("arguments")
                            ),
                        }
                    )
                    for c in m["tool_calls"]
                ]
                text = "\n".join(f"<tool_call>\n{b}\n</tool_call>" for b in blocks)
                out.append(
                    {"role": "assistant", "content": f"{content}\n{text}" if content else text}
                )
            elif role == "tool":
                response = f"<tool_response>\n{content}\n</tool_response>"
                if out and out[-1]["role"] == "user" and out[-1].get("_tool"):
                    out[-1]["content"] += "\n" + response
                else:
                    out.append({"role": "user", "content": response, "_tool": True})
            else:
                out.append({"role": role, "content": content})
        for m in out:
            m.pop("_tool", None)
        if self.active:
            tools = "\n".join(
                json.dumps({"type": "function", "function": f}) for f in self.offered()
            )
            system = HERMES_SYSTEM.format(tools=tools)
            if out and out[0]["role"] == "system":
                out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{system}"}
            else:
                out.insert(0, {"role": "system", "content": system})
        return out

    # -- output ---------------------------------------------------------------------------
    @property
    def forced(self) -> bool:
        """The reply must be calls ('required' or a named function)."""
        return self.choice == "required" or self.choice.startswith("function:")

    def calls_grammar(self) -> str:
        """Lark grammar for a reply made of calls to the offered functions, in the model's
        format; a named function is called once, and at most one call per offered function
        is written. Objects in the parameters take no undeclared keys (``call_schema.closed``)."""
        forced_one = self.choice.startswith("function:")
        functions = [{**f, "parameters": closed(f["parameters"])} for f in self.offered()]
        return self.fmt.forced_lark(functions, self.parallel and not forced_one)

    def splitter(self, *, stream: bool) -> ToolCallSplitter | None:
        if not self.active:
            return None
        names = frozenset(f["name"] for f in self.offered())
        return ToolCallSplitter(self.fmt, names, self.parallel, stream=stream, forced=self.forced)
