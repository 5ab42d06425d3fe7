"""The Responses API over the chat service: create (plain or streamed), stored responses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from ...errors import InvalidRequest, NotFound
from ..chat_api import ChatAPI
from .custom_tools import custom_names
from .output import (
    base_response,
    finish_fields,
    new_id,
    output_from_chat,
    responses_usage,
)
from .request import ResponsesRequest, to_chat
from .store import ResponseStore
from .stream import stream_events

T = TypeVar("T")


def _with_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input items as ``input_items`` lists them: each with an id and a type, text as parts."""
    out = []
    for item in items:
        item = dict(item)
        item.setdefault("type", "message")
        if item["type"] == "message":
            item.setdefault("id", new_id("msg"))
            item.setdefault("status", "completed")
            if isinstance(item.get("content"), str):
                kind = "output_text" if item.get("role") == "assistant" else "input_text"
                item["content"] = [{"type": kind, "text": item["content"]}]
        elif item["type"] == "function_call_output":
            item.setdefault("id", new_id("fco"))
        else:
            item.setdefault("id", new_id("item"))
        out.append(item)
    return out


class ResponsesService:
    def __init__(self, chat: ChatAPI, store: ResponseStore) -> None:
        self.chat = chat
        self.store = store

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        if self.store.limits.directory is None:
            return fn(*args)  # memory only: no I/O
        return await asyncio.to_thread(fn, *args)

    async def _entry(self, resp_id: str, param: str = "response_id") -> dict[str, Any]:
        entry = await self._io(self.store.get, resp_id)
        if entry is None:
            raise NotFound(
                f"No stored response with id {resp_id!r} (never stored, deleted, or expired).",
                param=param,
            )
        return entry

    async def _history(self, req: ResponsesRequest) -> list[dict[str, Any]]:
        if not req.previous_response_id:
            return []
        entry = await self._entry(req.previous_response_id, "previous_response_id")
        return entry["context"] + entry["response"]["output"]

    async def _save(
        self, history: list[dict[str, Any]], req: ResponsesRequest, response: dict[str, Any]
    ) -> None:
        if req.store:
            context = history + _with_ids(req.input_items())
            await self._io(
                self.store.put, response["id"], {"response": response, "context": context}
            )

    async def create(self, req: ResponsesRequest) -> dict[str, Any]:
        history = await self._history(req)
        completion = await self.chat.chat(to_chat(req, history, stream=False))
        output, reason = output_from_chat(completion, custom_names(req.tools))
        response = {
            **base_response(new_id("resp"), completion["model"], req),
            **finish_fields(reason),
            "output": output,
            "usage": responses_usage(completion["usage"]),
        }
        await self._save(history, req, response)
        return response

    async def create_stream(self, req: ResponsesRequest) -> AsyncIterator[dict[str, Any]]:
        """Validate and submit now (errors answer before any byte); events later."""
        history = await self._history(req)
        chunks = await self.chat.chat_stream(to_chat(req, history, stream=True))
        response = base_response(new_id("resp"), self.chat.model_name(req.model), req)

        async def done(final: dict[str, Any]) -> None:
            await self._save(history, req, final)

        return stream_events(chunks, response, done, custom_names(req.tools))

    async def input_tokens(self, req: ResponsesRequest) -> dict[str, Any]:
        history = await self._history(req)
        count = len(await self.chat.chat_prompt(to_chat(req, history, stream=False)))
        return {"object": "response.input_tokens", "input_tokens": count}

    async def get(self, resp_id: str) -> dict[str, Any]:
        return (await self._entry(resp_id))["response"]

    async def delete(self, resp_id: str) -> dict[str, Any]:
        if not await self._io(self.store.delete, resp_id):
            raise NotFound(f"No stored response with id {resp_id!r}.", param="response_id")
        return {"id": resp_id, "object": "response.deleted", "deleted": True}

    async def input_items(
        self, resp_id: str, order: str = "desc", limit: int = 20, after: str | None = None
    ) -> dict[str, Any]:
        if order not in ("asc", "desc"):
            raise InvalidRequest("order must be 'asc' or 'desc'.", param="order")
        if not 1 <= limit <= 100:
            raise InvalidRequest("limit must be between 1 and 100.", param="limit")
        items = list((await self._entry(resp_id))["context"])
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [i.get("id") for i in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
