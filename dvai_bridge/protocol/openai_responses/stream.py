"""Chat stream chunks -> the Responses event sequence.

The stream is ``response.created``, ``response.in_progress``, then per output item
``response.output_item.added`` (a message also ``response.content_part.added``, its
``response.output_text.delta``s, ``.done`` and ``response.content_part.done``; a function call
its ``response.function_call_arguments.delta``s and ``.done``; a custom tool's call one
``response.custom_tool_call_input.delta`` and ``.done``), ``response.output_item.done``,
and last ``response.completed`` (``response.incomplete`` at the token limit, ``response.failed``
when generation fails). Every event carries ``sequence_number`` from 0.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from ...errors import BridgeError
from .custom_tools import input_of
from .output import (
    call_item,
    custom_call_item,
    finish_fields,
    message_item,
    reasoning_item,
    reasoning_text,
    responses_usage,
)


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
