"""What the other protocols (Responses, Messages, token utilities) need of the chat service.

Both ``OpenAIService`` (one model) and ``ModelRouter`` (several models, each request leasing
the model its ``model`` names) provide it, so every protocol runs on either.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import ValidationError

from ..errors import InvalidRequest
from .schema import ChatCompletionRequest

if TYPE_CHECKING:
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


def as_chat_request(body: dict[str, Any], param: str) -> ChatCompletionRequest:
    """Another protocol's request, already in chat's fields, as the chat request it runs as.

    No tools means no ``tool_choice`` of ``auto``/``none`` either (chat refuses a choice without
    tools; both protocols send ``auto`` by default); a value chat refuses is a 400 naming
    ``param``, the field of the protocol's own request that it came from.
    """
    if not body.get("tools"):
        body = {**body, "tools": None}
        if body.get("tool_choice") in ("auto", "none"):
            body["tool_choice"] = None
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise InvalidRequest(f"{where}: {err['msg']}", param=param) from None
