"""Chat results -> Responses objects: the output items, usage and the response's fields.

``stream.py`` sends the same items as events.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from .custom_tools import input_of


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def responses_usage(chat_usage: dict[str, Any] | None) -> dict[str, Any]:
    u = chat_usage or {}
    prompt, completion = u.get("prompt_tokens", 0), u.get("completion_tokens", 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": (u.get("completion_tokens_details") or {}).get(
                "reasoning_tokens", 0
            )
        },
        "total_tokens": prompt + completion,
    }


def message_item(
    text: str, item_id: str | None = None, status: str = "completed"
) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id or new_id("msg"),
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def reasoning_text(message: dict[str, Any]) -> str | None:
    """The thinking a chat message or delta carries (its field's name is a server option)."""
    return message.get("reasoning_content") or message.get("reasoning")


def reasoning_item(
    text: str, item_id: str | None = None, status: str = "completed"
) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": item_id or new_id("rs"),
        "status": status,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def call_item(
    call_id: str, name: str, arguments: str, item_id: str | None = None, status: str = "completed"
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id or new_id("fc"),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def custom_call_item(
    call_id: str, name: str, text: str, item_id: str | None = None, status: str = "completed"
) -> dict[str, Any]:
    return {
        "type": "custom_tool_call",
        "id": item_id or new_id("ctc"),
        "call_id": call_id,
        "name": name,
        "input": text,
        "status": status,
    }


def output_from_chat(
    completion: dict[str, Any], custom: frozenset[str] = frozenset()
) -> tuple[list[dict[str, Any]], str]:
    """(output items, finish reason) of a chat completion; a call of a tool in ``custom`` is a
    ``custom_tool_call``."""
    choice = completion["choices"][0]
    msg = choice["message"]
    items: list[dict[str, Any]] = []
    if reasoning_text(msg):
        items.append(reasoning_item(reasoning_text(msg) or ""))
    if msg.get("content"):
        items.append(message_item(msg["content"]))
    for call in msg.get("tool_calls") or []:
        name, arguments = call["function"]["name"], call["function"]["arguments"]
        if name in custom:
            items.append(custom_call_item(call["id"], name, input_of(arguments)))
        else:
            items.append(call_item(call["id"], name, arguments))
    if not items:
        items.append(message_item(""))
    return items, choice["finish_reason"]


def finish_fields(reason: str | None) -> dict[str, Any]:
    if reason == "length":
        return {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
    return {"status": "completed", "incomplete_details": None}


def base_response(resp_id: str, model: str, req: Any) -> dict[str, Any]:
    """The response object's request-echoing fields (no output yet)."""
    fmt = (req.text or {}).get("format") or {"type": "text"}
    return {
        "id": resp_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": model,
        "output": [],
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": req.reasoning.effort if req.reasoning else None, "summary": None},
        "store": req.store,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "text": {"format": fmt},
        "tool_choice": req.tool_choice or "auto",
        "tools": req.tools or [],
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "truncation": "disabled",
        "usage": None,
        "user": None,
        "metadata": req.metadata or {},
    }
