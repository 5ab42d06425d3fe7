"""Chat results -> Responses objects: output items, usage, and the streamed event sequence.

The stream is ``response.created``, ``response.in_progress``, then per output item
``response.output_item.added`` (a message also ``response.content_part.added``, its
``response.output_text.delta``s, ``.done`` and ``response.content_part.done``; a function call
its ``response.function_call_arguments.delta``s and ``.done``; a custom tool's call one
``response.custom_tool_call_input.delta`` and ``.done``), ``response.output_item.done``,
and last ``response.completed`` (``response.incomplete`` at the token limit, ``response.failed``
when generation fails). Every event carries ``sequence_number`` from 0.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from ...errors import BridgeError
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


async def stream_events(
    chunks: AsyncIterator[dict[str, Any]],
    response: dict[str, Any],
    on_done: Callable[[dict[str, Any]], Any],
    custom: frozenset[str] = frozenset(),
) -> AsyncIterator[dict[str, Any]]:
    """Chat stream chunks -> Responses events. ``response`` is the object without output;
    ``on_done(final)`` runs with the finished response (to store it). A call of a tool in
    ``custom`` is a ``custom_tool_call``: its input is the string inside the arguments, so it is
    sent whole, as one ``response.custom_tool_call_input.delta``, when the call ends."""
    seq = 0

    def ev(kind: str, **fields: Any) -> dict[str, Any]:
        nonlocal seq
        seq += 1
        return {"type": kind, "sequence_number": seq - 1, **fields}

    output: list[dict[str, Any]] = []
    think: dict[str, Any] | None = None  # the open reasoning item
    msg: dict[str, Any] | None = None  # the open message item
    call: dict[str, Any] | None = None  # the open function call item
    reason: str | None = None
    usage: dict[str, Any] | None = None

    def close_open() -> list[dict[str, Any]]:
        nonlocal think, msg, call
        out = []
        if think is not None:
            i, text = output.index(think), think["content"][0]["text"]
            out.append(
                ev(
                    "response.reasoning_text.done",
                    item_id=think["id"],
                    output_index=i,
                    content_index=0,
                    text=text,
                )
            )
            think["status"] = "completed"
            out.append(ev("response.output_item.done", output_index=i, item=think))
            think = None
        if msg is not None:
            i, text = output.index(msg), msg["content"][0]["text"]
            part = msg["content"][0]
            out += [
                ev(
                    "response.output_text.done",
                    item_id=msg["id"],
                    output_index=i,
                    content_index=0,
                    text=text,
                    logprobs=[],
                ),
                ev(
                    "response.content_part.done",
                    item_id=msg["id"],
                    output_index=i,
                    content_index=0,
                    part=part,
                ),
            ]
            msg["status"] = "completed"
            out.append(ev("response.output_item.done", output_index=i, item=msg))
            msg = None
        if call is not None and call["type"] == "custom_tool_call":
            i = output.index(call)
            call["input"] = input_of(call.pop("arguments"))
            for kind, key in (("delta", "delta"), ("done", "input")):
                out.append(
                    ev(
                        f"response.custom_tool_call_input.{kind}",
                        item_id=call["id"],
                        output_index=i,
                        **{key: call["input"]},
                    )
                )
            call["status"] = "completed"
            out.append(ev("response.output_item.done", output_index=i, item=call))
            call = None
        if call is not None:
            i = output.index(call)
            out.append(
                ev(
                    "response.function_call_arguments.done",
                    item_id=call["id"],
                    output_index=i,
                    name=call["name"],
                    arguments=call["arguments"],
                )
            )
            call["status"] = "completed"
            out.append(ev("response.output_item.done", output_index=i, item=call))
            call = None
        return out

    yield ev("response.created", response={**response, "status": "in_progress"})
    yield ev("response.in_progress", response={**response, "status": "in_progress"})
    try:
        async for chunk in chunks:
            if "error" in chunk:
                raise _Failed(chunk["error"])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", []):
                delta = choice.get("delta") or {}
                thought = reasoning_text(delta)
                if thought:
                    if think is None:
                        for e in close_open():
                            yield e
                        think = reasoning_item("", status="in_progress")
                        output.append(think)
                        yield ev(
                            "response.output_item.added",
                            output_index=len(output) - 1,
                            item={**think, "content": []},
                        )
                    think["content"][0]["text"] += thought
                    yield ev(
                        "response.reasoning_text.delta",
                        item_id=think["id"],
                        output_index=output.index(think),
                        content_index=0,
                        delta=thought,
                    )
                if delta.get("content"):
                    if msg is None or think is not None:
                        for e in close_open():
                            yield e
                        msg = message_item("", status="in_progress")
                        msg["content"] = []
                        output.append(msg)
                        yield ev(
                            "response.output_item.added",
                            output_index=len(output) - 1,
                            item={**msg, "content": []},
                        )
                        part = {
                            "type": "output_text",
                            "text": "",
                            "annotations": [],
                            "logprobs": [],
                        }
                        msg["content"] = [part]
                        yield ev(
                            "response.content_part.added",
                            item_id=msg["id"],
                            output_index=len(output) - 1,
                            content_index=0,
                            part=dict(part),
                        )
                    msg["content"][0]["text"] += delta["content"]
                    yield ev(
                        "response.output_text.delta",
                        item_id=msg["id"],
                        output_index=output.index(msg),
                        content_index=0,
                        delta=delta["content"],
                        logprobs=[],
                    )
                for tc in delta.get("tool_calls") or []:
                    fn = tc.get("function") or {}
                    if tc.get("id"):
                        for e in close_open():
                            yield e
                        name = fn.get("name", "")
                        make = custom_call_item if name in custom else call_item
                        call = make(tc["id"], name, "", status="in_progress")
                        yield ev(
                            "response.output_item.added",
                            output_index=len(output),
                            item=dict(call),
                        )
                        output.append(call)
                        if name in custom:
                            call["arguments"] = ""  # gathered; the input is sent at the end
                    if call is not None and call["type"] == "custom_tool_call":
                        call["arguments"] += fn.get("arguments") or ""
                    elif call is not None and fn.get("arguments"):
                        call["arguments"] += fn["arguments"]
                        yield ev(
                            "response.function_call_arguments.delta",
                            item_id=call["id"],
                            output_index=output.index(call),
                            delta=fn["arguments"],
                        )
                if choice.get("finish_reason"):
                    reason = choice["finish_reason"]
        for e in close_open():
            yield e
    except (_Failed, BridgeError) as exc:
        err = exc.error if isinstance(exc, _Failed) else exc.to_openai()["error"]
        final = {
            **response,
            "status": "failed",
            "output": output,
            "error": {"code": "server_error", "message": err.get("message", "")},
        }
        yield ev("response.failed", response=final)
        return
    final = {**response, **finish_fields(reason), "output": output, "usage": responses_usage(usage)}
    await on_done(final)
    kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
    yield ev(kind, response=final)


class _Failed(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.error = error


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
