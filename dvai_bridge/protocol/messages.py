"""Normalize OpenAI chat messages into what a chat template expects."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequest
from .schema import ChatMessage, TextPart


def normalize_messages(
    messages: list[ChatMessage], *, vision: bool = False
) -> list[dict[str, Any]]:
    """Plain ``{"role", "content"}`` dicts: text parts joined, ``developer`` read as ``system``.

    A non-text part on a text-only model is refused, naming the part.
    """
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        content = msg.content
        if isinstance(content, list):
            texts: list[str] = []
            for j, part in enumerate(content):
                if isinstance(part, TextPart):
                    texts.append(part.text)
                elif not vision:
                    raise InvalidRequest(
                        f"messages[{i}].content[{j}] is an '{part.type}' part, but this model "
                        "accepts text only.",
                        param=f"messages[{i}].content[{j}]",
                    )
            content = "\n".join(texts)
        if content is None and not msg.tool_calls:
            if msg.role != "assistant":
                raise InvalidRequest(
                    f"messages[{i}] ({msg.role}) has no content.", param=f"messages[{i}].content"
                )
            content = ""
        role = "system" if msg.role == "developer" else msg.role
        item: dict[str, Any] = {"role": role, "content": content or ""}
        for key in ("name", "tool_call_id"):
            value = getattr(msg, key)
            if value is not None:
                item[key] = value
        extra = msg.model_extra or {}
        thought = extra.get("reasoning_content", extra.get("reasoning"))
        if role == "assistant" and isinstance(thought, str) and thought:
            # Templates read the history's reasoning under one of these names (Qwen3 and
            # DeepSeek: reasoning_content; gpt-oss: thinking); clients send either of the first.
            item["reasoning_content"] = item["thinking"] = thought
        if msg.tool_calls is not None:
            item["tool_calls"] = [c.model_dump(exclude_none=True) for c in msg.tool_calls]
        out.append(item)
    return out
