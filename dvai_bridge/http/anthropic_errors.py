"""Errors on the Anthropic routes (``/v1/messages...``) in Anthropic's envelope.

Every error is built once, as the OpenAI envelope (errors.py, and the guards before the routes);
on these paths this middleware rewrites the body to ``{"type": "error", "error": {"type",
"message"}}`` with Anthropic's error type for the status, which the anthropic SDK reads.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "/v1/messages"
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def anthropic_envelope(status: int, openai_body: dict[str, Any]) -> dict[str, Any]:
    err = openai_body.get("error") or {}
    return {
        "type": "error",
        "error": {"type": _TYPES.get(status, "api_error"), "message": str(err.get("message", ""))},
    }


class AnthropicErrors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            return await self.app(scope, receive, send)
        start: Message | None = None
        chunks: list[bytes] = []

        async def rewrite(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                types = [v for k, v in message.get("headers", []) if k == b"content-type"]
                if message["status"] >= 400 and types and types[0].startswith(b"application/json"):
                    start = message
                    return
            elif message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                raw = b"".join(chunks)
                try:
                    body = json.loads(raw)
                    if isinstance(body, dict) and "error" in body and "type" not in body:
                        raw = json.dumps(anthropic_envelope(start["status"], body)).encode()
                except ValueError:
                    pass
                headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
                headers.append((b"content-length", str(len(raw)).encode()))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": raw})
                return
            await send(message)

        await self.app(scope, receive, rewrite)
