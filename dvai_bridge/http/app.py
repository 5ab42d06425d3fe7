"""The ASGI app: routes, error handlers, metrics, and the guards around them. No inference."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import FastAPI

from ..defaults import SHUTDOWN_GRACE_S
from ..protocol.anthropic.service import MessagesService
from ..protocol.openai_responses.service import ResponsesService
from ..protocol.openai_responses.store import ResponseStore, StoreLimits
from ..protocol.router import ModelRouter
from ..protocol.service import OpenAIService
from ..protocol.tokens import TokenService
from . import agent_routes, connections
from .anthropic_errors import AnthropicErrors
from .drain import Drain, DrainGuard
from .errors import install_error_handlers
from .methods import HeadAsGet, PlainOptions
from .metrics import install_metrics
from .openapi import install_openapi
from .routes import router
from .security import MAX_BODY_BYTES, BodyLimit, Cors, HostGuard, KeyCheck, OriginPolicy


def create_app(
    service: OpenAIService | ModelRouter,
    *,
    cors_origin: str | Iterable[str] | None = (),
    api_key: str | Iterable[str] | None = None,
    allowed_hosts: Iterable[str] = (),
    max_body_bytes: int = MAX_BODY_BYTES,
    shutdown_grace_s: float = SHUTDOWN_GRACE_S,
    body_timeout_s: float | None = None,
    responses_store: StoreLimits | None = None,
) -> FastAPI:
    """The app over ``service``. ``app.state.drain`` lets whoever stops the server drain it.

    Requests pass, outermost first: metrics, HostGuard (Host and Origin), CORS, DrainGuard,
    KeyCheck (when keys are given), BodyLimit, HeadAsGet, PlainOptions, then the routes.
    ``cors_origin``: ``()`` loopback pages only, origins to add to them, ``"*"`` any page,
    ``None`` no page (see ``OriginPolicy``). The body's deadline is the
    connection edge's (``connections.DEFAULT_LIMITS``) unless ``body_timeout_s`` is given.
    ``responses_store``: the limits of the stored responses (``previous_response_id``).
    """
    app = FastAPI(title="dvai-bridge", version="0.1.0", docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.responses = ResponsesService(service, ResponseStore(responses_store or StoreLimits()))
    app.state.messages = MessagesService(service)
    app.state.tokens = TokenService(service)
    app.state.drain = drain = Drain(shutdown_grace_s)
    install_error_handlers(app)
    keys = [api_key] if isinstance(api_key, str) else [k for k in api_key or () if k]
    origins = OriginPolicy.of(cors_origin)
    # add_middleware wraps what is already there: the last one added sees a request first.
    app.add_middleware(PlainOptions)
    app.add_middleware(HeadAsGet)
    app.add_middleware(
        BodyLimit,
        max_bytes=max_body_bytes,
        timeout_s=body_timeout_s or connections.DEFAULT_LIMITS.body_timeout_s,
    )
    if keys:
        app.add_middleware(KeyCheck, keys=keys)
    app.add_middleware(DrainGuard, drain=drain)
    if origins.open:
        app.add_middleware(Cors, origins=origins)
    app.add_middleware(HostGuard, allowed_hosts=allowed_hosts, origins=origins)
    app.add_middleware(AnthropicErrors)  # /v1/messages errors in Anthropic's envelope
    install_metrics(app, service.engine_metrics)
    app.include_router(router)
    app.include_router(agent_routes.router)
    install_openapi(app, keys=bool(keys))
    return app
