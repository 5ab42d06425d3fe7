"""Chat results -> Anthropic Messages: the message object and its streamed events.

Stream: ``message_start``, per content block ``content_block_start``, ``content_block_delta``s
(``thinking_delta``, ``text_delta`` or ``input_json_delta``) and ``content_block_stop``, then
``message_delta``
(``stop_reason``, usage) and ``message_stop``; a failure mid-stream is an ``error`` event.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ...errors import BridgeError

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def new_id(prefix: str = "msg") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def anthropic_usage(chat_usage: dict[str, Any] | None) -> dict[str, Any]:
    """Anthropic counts cached prompt tokens apart from ``input_tokens``."""
    u = chat_usage or {}
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {
        "input_tokens": u.get("prompt_tokens", 0) - cached,
        "output_tokens": u.get("completion_tokens", 0),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def _arguments(text: str) -> Any:
    try:
        return json.loads(text or "{}")
    except ValueError:
        return {}


def message_from_chat(completion: dict[str, Any], model: str) -> dict[str, Any]:
    choice = completion["choices"][0]
    msg = choice["message"]
    content: list[dict[str, Any]] = []
    thought = msg.get("reasoning_content") or msg.get("reasoning")
    if thought:
        content.append({"type": "thinking", "thinking": thought, "signature": ""})
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for call in msg.get("tool_calls") or []:
        content.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": call["function"]["name"],
                "input": _arguments(call["function"]["arguments"]),
            }
        )
    reason, matched = _stop(choice)
    return {
        "id": new_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": matched,
        "usage": anthropic_usage(completion["usage"]),
    }


def _stop(choice: dict[str, Any]) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a chat choice."""
    matched = choice.get("stop_reason")
    if isinstance(matched, str):
        return "stop_sequence", matched
    return STOP_REASONS.get(choice["finish_reason"], "end_turn"), None


def error_body(message: str, kind: str = "api_error") -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


async def stream_events(
    chunks: AsyncIterator[dict[str, Any]], model: str, prompt_tokens: int
) -> AsyncIterator[dict[str, Any]]:
    yield {
        "type": "message_start",
        "message": {
            "id": new_id(),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": prompt_tokens, "output_tokens": 0},
        },
    }
    index = -1
    open_kind: str | None = None
    (reason, matched), usage = ("end_turn", None), None
    try:
        async for chunk in chunks:
            if "error" in chunk:
                yield error_body(chunk["error"].get("message", "Generation failed."))
                return
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", []):
                delta = choice.get("delta") or {}
                thought = delta.get("reasoning_content") or delta.get("reasoning")
                if thought:
                    if open_kind != "thinking":
                        if open_kind is not None:
                            yield {"type": "content_block_stop", "index": index}
                        index, open_kind = index + 1, "thinking"
                        yield {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                        }
                    yield {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "thinking_delta", "thinking": thought},
                    }
                if delta.get("content"):
                    if open_kind != "text":
                        if open_kind is not None:
                            yield {"type": "content_block_stop", "index": index}
                        index, open_kind = index + 1, "text"
                        yield {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {"type": "text", "text": ""},
                        }
                    yield {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": delta["content"]},
                    }
                for tc in delta.get("tool_calls") or []:
                    fn = tc.get("function") or {}
                    if tc.get("id"):
                        if open_kind is not None:
                            yield {"type": "content_block_stop", "index": index}
                        index, open_kind = index + 1, "tool_use"
                        yield {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {
                                "type": "tool_use",
                                "id": tc["id"],
                                "name": fn.get("name"),
                                "input": {},
                            },
                        }
                    if fn.get("arguments"):
                        yield {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": fn["arguments"]},
                        }
                if choice.get("finish_reason"):
                    reason, matched = _stop(choice)
    except BridgeError as exc:
        yield error_body(exc.message)
        return
    if open_kind is not None:
        yield {"type": "content_block_stop", "index": index}
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": reason, "stop_sequence": matched},
        "usage": anthropic_usage(usage),
    }
    yield {"type": "message_stop"}
