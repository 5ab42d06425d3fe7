"""``POST /v1/messages`` (Anthropic Messages API) requests, converted into chat requests.

``system``, text / ``tool_use`` / ``tool_result`` blocks, ``tools``, ``tool_choice`` (``auto``,
``any``, ``tool``, ``none``), ``stop_sequences``, sampling fields and ``thinking`` (as
``reasoning_effort``; thinking
blocks in the history as ``reasoning_content``) become one ``ChatCompletionRequest``, run as
chat runs.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from ...defaults import REASONING_BUDGETS
from ...errors import InvalidRequest
from ..chat_api import as_chat_request
from ..schema import ChatCompletionRequest, OpenAIBaseModel


class AnthropicMessage(OpenAIBaseModel):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class ThinkingConfig(OpenAIBaseModel):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(default=None, ge=1)


class MessagesRequest(OpenAIBaseModel):
    model: str | None = None
    max_tokens: int = Field(ge=1)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = Field(default=None, max_length=16)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: ThinkingConfig | None = None
    stream: bool = False
    metadata: dict[str, Any] | None = None


class CountTokensRequest(MessagesRequest):
    max_tokens: int = Field(default=1, ge=1)  # count_tokens takes no max_tokens


def _block_text(block: dict[str, Any], where: str) -> str:
    if block.get("type") != "text":
        raise InvalidRequest(
            f"{where} is a {block.get('type')!r} block; this model accepts text only.", param=where
        )
    return str(block.get("text", ""))


def _result_text(content: Any, where: str) -> str:
    if isinstance(content, str) or content is None:
        return content or ""
    return "\n".join(_block_text(b, f"{where}[{j}]") for j, b in enumerate(content))


def _messages(req: MessagesRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if req.system:
        text = (
            req.system
            if isinstance(req.system, str)
            else "\n".join(_block_text(b, f"system[{j}]") for j, b in enumerate(req.system))
        )
        out.append({"role": "system", "content": text})
    for i, msg in enumerate(req.messages):
        if isinstance(msg.content, str):
            out.append({"role": msg.role, "content": msg.content})
            continue
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        thoughts: list[str] = []
        results = 0
        for j, block in enumerate(msg.content):
            where, kind = f"messages[{i}].content[{j}]", block.get("type")
            if kind == "tool_result" and msg.role == "user":
                text = _result_text(block.get("content"), f"{where}.content")
                if block.get("is_error"):
                    text = f"Error: {text}"
                out.append(
                    {"role": "tool", "tool_call_id": str(block.get("tool_use_id")), "content": text}
                )
                results += 1
            elif kind == "tool_use" and msg.role == "assistant":
                calls.append(
                    {
                        "id": str(block.get("id")),
                        "type": "function",
                        "function": {
                            "name": block.get("name"),
                            "arguments": json.dumps(block.get("input", {})),
                        },
                    }
                )
            elif kind in ("thinking", "redacted_thinking") and msg.role == "assistant":
                if block.get("thinking"):
                    thoughts.append(str(block["thinking"]))
            else:
                texts.append(_block_text(block, where))
        if calls:
            out.append(
                {"role": "assistant", "content": "\n".join(texts) or None, "tool_calls": calls}
            )
        elif texts or not results:
            out.append({"role": msg.role, "content": "\n".join(texts)})
        if thoughts and out[-1]["role"] == "assistant":
            out[-1]["reasoning_content"] = "\n".join(thoughts)
    return out


def reasoning_effort(thinking: ThinkingConfig | None) -> str | None:
    """``thinking`` as chat's ``reasoning_effort``: disabled is none; a budget picks the
    smallest effort whose default budget (64, 256, 1024 tokens) holds it; adaptive and
    absent leave the model's default."""
    if thinking is None or thinking.type == "adaptive":
        return None
    if thinking.type == "disabled":
        return "none"
    budget = thinking.budget_tokens
    if budget is None:
        return "high"
    return next((e for e, cap in REASONING_BUDGETS.items() if budget <= cap), "high")


def _tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") not in (None, "custom"):
            raise InvalidRequest(
                f"tools[{i}] has type {tool.get('type')!r}; this server runs "
                "client tools (name, input_schema) only.",
                param=f"tools[{i}].type",
            )
        out.append(
            {
                "type": "function",
                "function": {
                    "name": tool.get("name"),
                    "description": tool.get("description", ""),
                    "parameters": tool.get("input_schema", {"type": "object"}),
                },
            }
        )
    return out


def _tool_choice(choice: dict[str, Any] | None) -> Any:
    if choice is None:
        return None
    kind = choice.get("type")
    if kind in ("auto", "none"):
        return kind
    if kind == "any":
        return "required"
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise InvalidRequest(
        "tool_choice.type must be auto, any, tool or none.", param="tool_choice.type"
    )


def to_chat(req: MessagesRequest, stream: bool) -> ChatCompletionRequest:
    parallel = None
    if req.tool_choice and req.tool_choice.get("disable_parallel_tool_use"):
        parallel = False
    body = {
        "model": req.model,
        "messages": _messages(req),
        "max_tokens": req.max_tokens,
        "stop": req.stop_sequences,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "tools": _tools(req.tools),
        "tool_choice": _tool_choice(req.tool_choice),
        "parallel_tool_calls": parallel,
        "stream": stream,
        "stream_options": {"include_usage": True} if stream else None,
    }
    effort = reasoning_effort(req.thinking)
    if effort is not None:
        body["reasoning_effort"] = effort  # the chat request's field (docs/reasoning.md)
    return as_chat_request(body, param="messages")
