"""Thin routes of the agent protocols: OpenAI Responses, Anthropic Messages, token utilities."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

from fastapi import APIRouter, Request
from starlette.convertors import StringConvertor, register_url_convertor

from ..errors import BridgeError
from ..protocol.anthropic.output import error_body
from ..protocol.anthropic.request import CountTokensRequest, MessagesRequest
from ..protocol.anthropic.service import MessagesService
from ..protocol.openai_responses.request import ResponsesRequest
from ..protocol.openai_responses.service import ResponsesService
from ..protocol.schema import ChatCompletionRequest
from ..protocol.tokens import DetokenizeRequest, TokenizeRequest, TokenService
from .anthropic_errors import anthropic_envelope
from .body import openapi_body, parsed_body
from .routes import _unless_disconnected
from .sse import event_response

router = APIRouter()


class ResponseId(StringConvertor):
    """A stored response's id: any path segment but ``input_tokens``, so that
    ``/v1/responses/input_tokens`` is the POST route's path only (its ``Allow`` is POST, as the
    schema says), not also a GET/DELETE of a response called "input_tokens"."""

    regex = "(?!input_tokens$)[^/]+"


register_url_convertor("response_id", ResponseId())


def _responses(request: Request) -> ResponsesService:
    return request.app.state.responses


def _messages(request: Request) -> MessagesService:
    return request.app.state.messages


def _tokens(request: Request) -> TokenService:
    return request.app.state.tokens


def _response_failed(exc: BridgeError) -> dict[str, Any]:
    return {
        "type": "error",
        "sequence_number": 0,
        "code": exc.code,
        "message": exc.message,
        "param": exc.param,
    }


def _anthropic_error(exc: BridgeError) -> dict[str, Any]:
    return (
        anthropic_envelope(exc.status_code, exc.to_openai())
        if exc.status_code != 500
        else error_body(exc.message)
    )


class _Streamed(Protocol):
    stream: bool


B = TypeVar("B", bound=_Streamed, contravariant=True)


class _Creates(Protocol[B]):
    """A protocol's service: one answer, or its events (``ResponsesService``,
    ``MessagesService``)."""

    async def create(self, req: B, /) -> dict[str, Any]: ...

    async def create_stream(self, req: B, /) -> AsyncIterator[dict[str, Any]]: ...


async def _create(
    request: Request,
    service: _Creates[B],
    body: B,
    on_error: Callable[[BridgeError], dict[str, Any]],
) -> Any:
    """The answer to a create route: named events when ``body.stream``, else the object (the
    work cancelled if the client hangs up first)."""
    if body.stream:
        return event_response(await service.create_stream(body), on_error)
    return await _unless_disconnected(request, service.create(body))


# -- OpenAI Responses ---------------------------------------------------------------------
@router.post("/v1/responses", openapi_extra=openapi_body(ResponsesRequest))
async def create_response(request: Request) -> Any:
    body = await parsed_body(request, ResponsesRequest)
    return await _create(request, _responses(request), body, _response_failed)


@router.post("/v1/responses/input_tokens", openapi_extra=openapi_body(ResponsesRequest))
async def response_input_tokens(request: Request) -> Any:
    body = await parsed_body(request, ResponsesRequest)
    return await _responses(request).input_tokens(body)


@router.get("/v1/responses/{response_id:response_id}")
async def get_response(response_id: str, request: Request) -> Any:
    return await _responses(request).get(response_id)


@router.delete("/v1/responses/{response_id:response_id}")
async def delete_response(response_id: str, request: Request) -> Any:
    return await _responses(request).delete(response_id)


@router.get("/v1/responses/{response_id:response_id}/input_items")
async def response_input_items(
    response_id: str,
    request: Request,
    order: str = "desc",
    limit: int = 20,
    after: str | None = None,
) -> Any:
    return await _responses(request).input_items(response_id, order, limit, after)


# -- Anthropic Messages -------------------------------------------------------------------
@router.post("/v1/messages", openapi_extra=openapi_body(MessagesRequest))
async def create_message(request: Request) -> Any:
    body = await parsed_body(request, MessagesRequest)
    return await _create(request, _messages(request), body, _anthropic_error)


@router.post("/v1/messages/count_tokens", openapi_extra=openapi_body(CountTokensRequest))
async def count_message_tokens(request: Request) -> Any:
    body = await parsed_body(request, CountTokensRequest)
    return await _messages(request).count_tokens(body)


# -- token utilities (llama-server's names) -------------------------------------------------
@router.post("/tokenize", openapi_extra=openapi_body(TokenizeRequest))
async def tokenize(request: Request) -> Any:
    return await _tokens(request).tokenize(await parsed_body(request, TokenizeRequest))


@router.post("/detokenize", openapi_extra=openapi_body(DetokenizeRequest))
async def detokenize(request: Request) -> Any:
    return await _tokens(request).detokenize(await parsed_body(request, DetokenizeRequest))


@router.post("/apply-template", openapi_extra=openapi_body(ChatCompletionRequest))
async def apply_template(request: Request) -> Any:
    body = await parsed_body(request, ChatCompletionRequest)
    return await _tokens(request).apply_template(body)
