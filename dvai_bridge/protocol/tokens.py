"""Token utilities as llama-server names them: ``/tokenize``, ``/detokenize``, ``/apply-template``.

``/tokenize`` tokenizes ``content`` as a raw prompt; without ``add_special`` (llama-server's
default) the tokens the model adds to every prompt (BOS) are left out. ``with_pieces`` gives each
token's text, or its bytes as a list where they are not valid UTF-8 alone (as llama-server does).
``/apply-template`` answers the prompt a chat request renders to, control tokens written out.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..errors import InvalidRequest
from .chat_api import ChatAPI
from .schema import ChatCompletionRequest, OpenAIBaseModel, TokenId
from .service import OpenAIService

MAX_DETOKENIZE = 1 << 17


class TokenizeRequest(OpenAIBaseModel):
    content: str
    model: str | None = None
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeRequest(OpenAIBaseModel):
    model: str | None = None
    tokens: list[TokenId] = Field(max_length=MAX_DETOKENIZE)


class TokenService:
    """The token routes, on the model the request's ``model`` names (the served one when
    there is one model; llama-server's routes take no ``model``)."""

    def __init__(self, chat: ChatAPI) -> None:
        self.chat = chat

    @staticmethod
    def _tokenize(service: OpenAIService, req: TokenizeRequest) -> dict[str, Any]:
        tokenizer = service.tokenizer
        service.prepare.bound().check([req.content], "content")
        tokens = tokenizer.tokenize(req.content)
        if not req.add_special:  # what the model puts before any prompt (BOS), if anything
            prefix = tokenizer.tokenize("")
            if prefix and tokens[: len(prefix)] == prefix and len(prefix) <= 2:
                tokens = tokens[len(prefix) :]
        if not req.with_pieces:
            return {"tokens": tokens}
        out = []
        for t in tokens:
            raw = tokenizer.token_bytes(t)
            try:
                piece: Any = raw.decode("utf-8")
            except UnicodeDecodeError:
                piece = list(raw)
            out.append({"id": t, "piece": piece})
        return {"tokens": out}

    async def tokenize(self, req: TokenizeRequest) -> dict[str, Any]:
        return await self.chat.run_on(req.model, lambda s: s.prep.run(self._tokenize, s, req))

    @staticmethod
    def _detokenize(service: OpenAIService, req: DetokenizeRequest) -> dict[str, Any]:
        vocab = service.tokenizer.vocab_size
        if vocab and any(not 0 <= t < vocab for t in req.tokens):
            raise InvalidRequest(
                f"tokens holds ids outside the vocabulary (0-{vocab - 1}).", param="tokens"
            )
        return {"content": service.tokenizer.decode(req.tokens)}

    async def detokenize(self, req: DetokenizeRequest) -> dict[str, Any]:
        return await self.chat.run_on(req.model, lambda s: s.prep.run(self._detokenize, s, req))

    async def apply_template(self, req: ChatCompletionRequest) -> dict[str, Any]:
        async def render(service: OpenAIService) -> dict[str, Any]:
            tokens = await service.chat_prompt(req)
            return {"prompt": await service.prep.run(service.tokenizer.prompt_text, list(tokens))}

        return await self.chat.run_on(req.model, render)
