"""Thin routes: validate, call the service, answer JSON or SSE."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..protocol.router import ModelAction, ModelRouter
from ..protocol.schema import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from ..protocol.service import OpenAIService
from .body import openapi_body, parsed_body
from .sse import sse_response

T = TypeVar("T")

router = APIRouter()


def _service(request: Request) -> OpenAIService | ModelRouter:
    return request.app.state.service


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T | Response:
    """Run ``work``; if the client hangs up first, cancel it (which cancels its sequences)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    return Response(status_code=499)


@router.post("/v1/chat/completions", openapi_extra=openapi_body(ChatCompletionRequest))
async def chat_completions(request: Request) -> Any:
    body = await parsed_body(request, ChatCompletionRequest)  # off the event loop
    service = _service(request)
    if body.stream:
        return sse_response(await service.chat_stream(body))
    return await _unless_disconnected(request, service.chat(body))


@router.post("/v1/completions", openapi_extra=openapi_body(CompletionRequest))
async def completions(request: Request) -> Any:
    body = await parsed_body(request, CompletionRequest)  # off the event loop
    service = _service(request)
    if body.stream:
        return sse_response(await service.completion_stream(body))
    return await _unless_disconnected(request, service.completion(body))


@router.post("/v1/embeddings", openapi_extra=openapi_body(EmbeddingRequest))
async def embeddings(request: Request) -> Any:
    body = await parsed_body(request, EmbeddingRequest)  # off the event loop
    return await _unless_disconnected(request, _service(request).embeddings(body))


@router.get("/v1/models")
async def models(request: Request) -> Any:
    return _service(request).models()


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, request: Request) -> Any:
    return _service(request).model(model_id)


@router.post("/models/load", openapi_extra=openapi_body(ModelAction))
async def load_model(request: Request) -> Any:
    body = await parsed_body(request, ModelAction)
    return await _service(request).load_model(body.model)


@router.post("/models/unload", openapi_extra=openapi_body(ModelAction))
async def unload_model(request: Request) -> Any:
    body = await parsed_body(request, ModelAction)
    return await _service(request).unload_model(body.model)


@router.get("/health")
async def health(request: Request) -> Any:
    body, ready = _service(request).health()
    if ready:
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
