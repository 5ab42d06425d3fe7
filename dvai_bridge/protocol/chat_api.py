"""What the other protocols (Responses, Messages, token utilities) need of the chat service.

Both ``OpenAIService`` (one model) and ``ModelRouter`` (several models, each request leasing
the model its ``model`` names) provide it, so every protocol runs on either.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from .schema import ChatCompletionRequest
    from .service import OpenAIService

T = TypeVar("T")


class ChatAPI(Protocol):
    async def chat(self, req: ChatCompletionRequest) -> dict[str, Any]: ...

    async def chat_stream(self, req: ChatCompletionRequest) -> AsyncIterator[dict[str, Any]]: ...

    async def open_chat_stream(
        self, req: ChatCompletionRequest
    ) -> tuple[int, AsyncIterator[dict[str, Any]]]: ...

    async def chat_prompt(self, req: ChatCompletionRequest) -> tuple[int, ...]: ...

    def model_name(self, name: str | None) -> str:
        """The name answers carry for a request naming ``name``."""
        ...

    async def run_on(self, name: str | None, call: Callable[[OpenAIService], Awaitable[T]]) -> T:
        """``call`` with the one-model service that serves ``name`` (kept loaded meanwhile)."""
        ...
