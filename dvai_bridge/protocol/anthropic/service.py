"""The Anthropic Messages API over the chat service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ..chat_api import ChatAPI
from .output import message_from_chat, stream_events
from .request import CountTokensRequest, MessagesRequest, to_chat


class MessagesService:
    def __init__(self, chat: ChatAPI) -> None:
        self.chat = chat

    async def create(self, req: MessagesRequest) -> dict[str, Any]:
        completion = await self.chat.chat(to_chat(req, stream=False))
        return message_from_chat(completion, completion["model"])

    async def create_stream(self, req: MessagesRequest) -> AsyncIterator[dict[str, Any]]:
        prompt, chunks = await self.chat.open_chat_stream(to_chat(req, stream=True))
        return stream_events(chunks, self.chat.model_name(req.model), prompt)

    async def count_tokens(self, req: CountTokensRequest) -> dict[str, Any]:
        return {"input_tokens": len(await self.chat.chat_prompt(to_chat(req, stream=False)))}
