"""The ASGI app: routes, error handlers, CORS. No inference logic."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ..protocol.service import OpenAIService
from .errors import install_error_handlers
from .routes import router


def create_app(service: OpenAIService, *, cors_origin: str | list[str] | None = "*") -> FastAPI:
    app = FastAPI(title="dvai-bridge", version="0.1.0", docs_url=None, redoc_url=None)
    app.state.service = service
    install_error_handlers(app)
    if cors_origin:
        origins = [cors_origin] if isinstance(cors_origin, str) else list(cors_origin)
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"],
                           allow_headers=["*"])
    app.include_router(router)
    return app
