"""Custom tools (``{"type": "custom"}``, as Codex sends ``apply_patch``): free-text input.

The chat engine calls functions with JSON arguments, so a custom tool runs as a function taking
one string, ``{"input": "..."}``, and its call goes back out as a ``custom_tool_call`` item with
that string as ``input``; a ``custom_tool_call`` in the history goes in as the same function
call, its ``custom_tool_call_output`` as the tool's result. A ``grammar`` format (lark or regex)
is not enforced on the string; its definition is shown to the model in the description.
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import InvalidRequest

INPUT = "input"


def custom_names(tools: list[dict[str, Any]] | None) -> frozenset[str]:
    return frozenset(
        t["name"]
        for t in tools or ()
        if t.get("type") == "custom" and isinstance(t.get("name"), str)
    )


def as_function(tool: dict[str, Any], where: str) -> dict[str, Any]:
    """The chat function a custom tool runs as."""
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise InvalidRequest(f"{where}.name is required.", param=f"{where}.name")
    description = tool.get("description") or ""
    if not isinstance(description, str):
        raise InvalidRequest(f"{where}.description must be a string.", param=f"{where}.description")
    fmt = tool.get("format") or {"type": "text"}
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "grammar"):
        raise InvalidRequest(
            f"{where}.format must be {{'type': 'text'}} or {{'type': 'grammar', ...}}.",
            param=f"{where}.format",
        )
    if fmt["type"] == "grammar":
        description += (
            f"\nThe input follows this {fmt.get('syntax', 'lark')} grammar:\n"
            f"{fmt.get('definition', '')}"
        )
    return {
        "name": tool["name"],
        "description": description.strip(),
        "parameters": {
            "type": "object",
            "properties": {INPUT: {"type": "string", "description": "The tool's input, as text."}},
            "required": [INPUT],
            "additionalProperties": False,
        },
    }


def arguments_of(text: str) -> str:
    """A custom call's ``input`` as the function arguments the model saw."""
    return json.dumps({INPUT: text}, ensure_ascii=False)


def input_of(arguments: str) -> str:
    """The function arguments a custom call was written with, as its ``input`` (arguments that
    are not the one-string object pass as they are: the client sees what the model wrote)."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    if isinstance(value, dict) and isinstance(value.get(INPUT), str):
        return value[INPUT]
    return arguments
