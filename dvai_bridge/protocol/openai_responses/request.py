"""``POST /v1/responses`` requests, and their conversion into the chat request the engine runs.

One pipeline: a Responses request becomes a ``ChatCompletionRequest`` (its messages, tools,
tool_choice, response_format, sampling) and runs exactly as ``/v1/chat/completions`` would.
Hosted tools: ``web_search``, ``web_search_preview`` and ``local_shell`` (which Codex may send)
are ignored with a warning in the log; ``custom`` tools run as functions taking one string
(``custom_tools``); every other tool type is a 400 naming it.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from pydantic import Field

from ...errors import InvalidRequest
from ..chat_api import as_chat_request
from ..schema import ChatCompletionRequest, OpenAIBaseModel
from .custom_tools import arguments_of, as_function

log = logging.getLogger(__name__)

IGNORED_TOOLS = frozenset({"web_search", "web_search_preview", "local_shell"})
Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


class ReasoningConfig(OpenAIBaseModel):
    effort: Effort | None = None
    summary: Literal["auto", "concise", "detailed", "none"] | None = None  # Codex sends "none"


class ResponsesRequest(OpenAIBaseModel):
    model: str | None = None
    input: str | list[dict[str, Any]] = Field(default_factory=list)
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    reasoning: ReasoningConfig | None = None
    store: bool = True
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    previous_response_id: str | None = None
    stream: bool = False
    background: bool = False
    seed: int | None = None  # not in OpenAI's spec; llama-server and vLLM accept it
    top_k: int = Field(default=0, ge=0)

    def input_items(self) -> list[dict[str, Any]]:
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": self.input}]
        return list(self.input)


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string or a list of parts.", param=where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            texts.append(str(part.get("text", "")))
        elif kind == "refusal":
            texts.append(str(part.get("refusal", "")))
        else:
            raise InvalidRequest(
                f"{where}[{j}] is an {kind!r} part; this model accepts text "
                "only (input_text, output_text).",
                param=f"{where}[{j}]",
            )
    return "\n".join(texts)


def items_to_messages(items: list[dict[str, Any]], where: str = "input") -> list[dict[str, Any]]:
    """Responses input items as chat messages (``function_call`` items join the assistant
    turn before them; a ``reasoning`` item is the next assistant turn's ``reasoning_content``,
    which the chat template renders or drops as it does on chat)."""
    out: list[dict[str, Any]] = []
    pending_reasoning: str | None = None
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{at} must be an object.", param=at)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise InvalidRequest(
                    f"{at}.role must be user, system, developer or assistant.", param=f"{at}.role"
                )
            out.append(
                {"role": role, "content": _text_of(item.get("content", ""), f"{at}.content")}
            )
            if role == "assistant" and pending_reasoning is not None:
                out[-1]["reasoning_content"], pending_reasoning = pending_reasoning, None
        elif kind in ("function_call", "custom_tool_call"):
            for key in ("call_id", "name"):
                if not isinstance(item.get(key), str):
                    raise InvalidRequest(f"{at}.{key} is required.", param=f"{at}.{key}")
            if kind == "custom_tool_call":
                if not isinstance(item.get("input"), str):
                    raise InvalidRequest(f"{at}.input is required.", param=f"{at}.input")
                arguments = arguments_of(item["input"])
            else:
                arguments = item.get("arguments") or "{}"
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": arguments},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if not last["content"]:
                    last["content"] = None
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
            if pending_reasoning is not None:
                out[-1]["reasoning_content"], pending_reasoning = pending_reasoning, None
        elif kind in ("function_call_output", "custom_tool_call_output"):
            if not isinstance(item.get("call_id"), str):
                raise InvalidRequest(f"{at}.call_id is required.", param=f"{at}.call_id")
            output = item.get("output", "")
            text = output if isinstance(output, str) else _text_of(output, f"{at}.output")
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
        elif kind == "reasoning":  # the next assistant turn's thinking
            parts = item.get("content") or item.get("summary") or []
            thought = "\n".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
            if thought:
                pending_reasoning = thought
        else:
            raise InvalidRequest(
                f"{at} is a {kind!r} item; supported: message, function_call, "
                "function_call_output, custom_tool_call, custom_tool_call_output, reasoning.",
                param=f"{at}.type",
            )
    return out


def _tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type")
        if kind == "function":
            fn = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
            out.append({"type": "function", "function": fn})
        elif kind == "custom":
            out.append({"type": "function", "function": as_function(tool, f"tools[{i}]")})
        elif kind in IGNORED_TOOLS:
            log.warning("responses: ignoring hosted tool tools[%d] of type %r", i, kind)
        else:
            raise InvalidRequest(
                f"tools[{i}] has type {kind!r}; this server runs function and custom tools.",
                param=f"tools[{i}].type",
            )
    return out


def _tool_choice(choice: str | dict[str, Any] | None) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") in ("function", "custom"):
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise InvalidRequest(
        f"tool_choice of type {choice.get('type')!r} is not supported; use "
        "none, auto, required or {'type': 'function' or 'custom', 'name': ...}.",
        param="tool_choice",
    )


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {
                "name": fmt.get("name", "response"),
                "schema": fmt.get("schema", {}),
                "strict": fmt.get("strict"),
            },
        }
    raise InvalidRequest(
        f"text.format type {fmt.get('type')!r} is not supported; use text, "
        "json_object or json_schema.",
        param="text.format.type",
    )


def to_chat(
    req: ResponsesRequest, history: list[dict[str, Any]], stream: bool
) -> ChatCompletionRequest:
    """The chat request for ``req`` after ``history`` (a stored conversation's items)."""
    if req.background:
        raise InvalidRequest("background responses are not supported.", param="background")
    messages = items_to_messages(history, "previous_response_id") + items_to_messages(
        req.input_items()
    )
    if req.instructions:
        messages.insert(0, {"role": "system", "content": req.instructions})
    if not messages:
        raise InvalidRequest("input is empty.", param="input")
    body: dict[str, Any] = {
        "model": req.model,
        "messages": messages,
        "max_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "tools": _tools(req.tools),
        "tool_choice": _tool_choice(req.tool_choice),
        "parallel_tool_calls": req.parallel_tool_calls,
        "response_format": _response_format(req.text),
        "seed": req.seed,
        "top_k": req.top_k,
        "stream": stream,
        "stream_options": {"include_usage": True} if stream else None,
    }
    if req.reasoning is not None and req.reasoning.effort is not None:
        # the chat request's reasoning_effort (docs/reasoning.md); xhigh is chat's high
        body["reasoning_effort"] = (
            "high" if req.reasoning.effort == "xhigh" else req.reasoning.effort
        )
    return as_chat_request(body, param="input")


def stored_json(value: Any) -> Any:
    return json.loads(json.dumps(value))
