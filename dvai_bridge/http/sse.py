"""Server-sent events framing for OpenAI streams."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from ..errors import BackendError, BridgeError

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


def frame(body: dict[str, Any]) -> bytes:
    return (
        b"data: " + json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
    )


async def _frames(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Every stream ends with [DONE]; a failure mid-stream is an error frame first."""
    try:
        async for chunk in chunks:
            yield frame(chunk)
    except BridgeError as exc:
        yield frame(exc.to_openai())
    except Exception as exc:
        log.exception("stream failed")
        yield frame(BackendError(f"Generation failed: {exc}").to_openai())
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()  # a client that went away cancels its sequences here
    yield DONE


def sse_response(chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    return StreamingResponse(
        _frames(chunks),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def named_frame(body: dict[str, Any]) -> bytes:
    """``event: <type>`` then ``data:``: the Responses and Messages APIs name every event."""
    return f"event: {body['type']}\n".encode() + frame(body)


async def _named_frames(
    events: AsyncIterator[dict[str, Any]], on_error: Callable[[BridgeError], dict[str, Any]]
) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            yield named_frame(event)
    except BridgeError as exc:
        yield named_frame(on_error(exc))
    except Exception as exc:
        log.exception("stream failed")
        yield named_frame(on_error(BackendError(f"Generation failed: {exc}")))
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


def event_response(
    events: AsyncIterator[dict[str, Any]], on_error: Callable[[BridgeError], dict[str, Any]]
) -> StreamingResponse:
    """Named events, no ``[DONE]``; a failure is the event ``on_error`` makes of it."""
    return StreamingResponse(
        _named_frames(events, on_error),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
