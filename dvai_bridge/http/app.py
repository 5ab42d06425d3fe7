"""The ASGI app: routes, error handlers, CORS, API key. No inference logic."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware

from ..protocol.service import OpenAIService
from .errors import envelope, install_error_handlers
from .metrics import install_metrics
from .routes import router

OPEN_PATHS = ("/health",)


def create_app(service: OpenAIService, *, cors_origin: str | list[str] | None = "*",
               api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="dvai-bridge", version="0.1.0", docs_url=None, redoc_url=None)
    app.state.service = service
    install_error_handlers(app)
    install_metrics(app, service.engine.scheduler.metrics)
    if api_key:
        expected = f"Bearer {api_key}".encode()

        @app.middleware("http")
        async def require_key(request: Request,
                              call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            if request.method == "OPTIONS" or request.url.path in OPEN_PATHS:
                return await call_next(request)
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return envelope(401, "Missing or wrong API key (Authorization: Bearer ...).",
                                "invalid_request_error", None, "invalid_api_key")
            return await call_next(request)
    if cors_origin:
        origins = [cors_origin] if isinstance(cors_origin, str) else list(cors_origin)
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"],
                           allow_headers=["*"])
    app.include_router(router)
    return app
