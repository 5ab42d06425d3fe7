"""Server-sent events framing for OpenAI streams."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from ..errors import BackendError, BridgeError

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


def frame(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + \
        b"\n\n"


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
