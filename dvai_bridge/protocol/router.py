"""Several models behind one port: the request's ``model`` picks the engine that answers it.

``ModelRouter`` offers the routes what ``OpenAIService`` offers (chat, completions, embeddings,
models, health, metrics), and for each request leases the named model from the ``ModelSet``
(loading it if need be) and hands the request to that model's own ``OpenAIService``. The lease
is held until the answer is complete (a stream: until its last chunk), so a model being
evicted finishes its running requests first.

A request may carry Ollama's ``keep_alive``: seconds (or ``"5m"``, ``"30s"``, ``"1h"``) the model
stays loaded after it; 0 unloads it as soon as it is idle, a negative value keeps it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any, TypeVar

from pydantic import BaseModel, Field

from ..engine.metrics import EngineMetrics
from ..engine.model_set import Lease, ModelSet
from ..errors import InvalidRequest
from .model_names import ModelCatalog
from .preprocess import Preprocessor
from .reasoning import ReasoningOptions
from .service import OpenAIService

T = TypeVar("T")

_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: Any) -> float | None:
    """A request's ``keep_alive`` in seconds (negative: forever); None when absent."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    else:
        raise InvalidRequest(
            "keep_alive is a number of seconds or a duration such as '5m', "
            "'30s', '1h' (negative: keep the model loaded).",
            param="keep_alive",
        )
    return float("inf") if seconds < 0 else seconds


class ModelRouter:
    def __init__(
        self,
        models: ModelSet,
        *,
        strict_model_names: bool = False,
        prep: Preprocessor | None = None,
    ) -> None:
        self.model_set = models
        self.prep = prep or Preprocessor()
        self.catalog = ModelCatalog(
            [(s.name, s.entry.aliases) for s in models.slots.values()], strict=strict_model_names
        )
        self._services: dict[str, tuple[int, OpenAIService]] = {}
        models.on_free.append(self._forget)

    def _forget(self, name: str) -> None:
        """Drop the service of a model that goes (its backend is freed with it)."""
        self._services.pop(name, None)

    # -- leasing -----------------------------------------------------------------------
    async def _lease(self, req: Any) -> tuple[Lease, OpenAIService]:
        name = self.catalog.resolve(getattr(req, "model", None))
        keep = keep_alive_seconds((getattr(req, "model_extra", None) or {}).get("keep_alive"))
        lease = await self.model_set.acquire(name, keep)
        cached = self._services.get(name)
        if cached is None or cached[0] != lease.generation:
            spec = lease.slot.entry.spec  # the model's own settings (a ModelSpec)
            reasoning = ReasoningOptions.from_config(getattr(spec, "config", None))
            service = OpenAIService(lease.engine, self.prep, reasoning, served_name=name)
            self._services[name] = cached = (lease.generation, service)
        return lease, cached[1]

    async def _answer(self, req: Any, call: Callable[[OpenAIService], Awaitable[T]]) -> T:
        lease, service = await self._lease(req)
        try:
            return await call(service)
        finally:
            lease.release()

    async def _stream(
        self, req: Any, open_: Callable[[OpenAIService], Awaitable[AsyncIterator[dict[str, Any]]]]
    ) -> AsyncIterator[dict[str, Any]]:
        lease, service = await self._lease(req)
        try:
            chunks = await open_(service)
        except BaseException:
            lease.release()
            raise
        return _Releasing(chunks, lease)

    # -- the API -------------------------------------------------------------------------
    async def chat(self, req: Any) -> dict[str, Any]:
        return await self._answer(req, lambda s: s.chat(req))

    async def chat_stream(self, req: Any) -> AsyncIterator[dict[str, Any]]:
        return await self._stream(req, lambda s: s.chat_stream(req))

    async def open_chat_stream(self, req: Any) -> tuple[int, AsyncIterator[dict[str, Any]]]:
        lease, service = await self._lease(req)
        try:
            prompt, chunks = await service.open_chat_stream(req)
        except BaseException:
            lease.release()
            raise
        return prompt, _Releasing(chunks, lease)

    async def chat_prompt(self, req: Any) -> tuple[int, ...]:
        return await self._answer(req, lambda s: s.chat_prompt(req))

    def model_name(self, name: str | None) -> str:
        return self.catalog.resolve(name)

    async def run_on(self, name: str | None, call: Callable[[OpenAIService], Awaitable[T]]) -> T:
        return await self._answer(SimpleNamespace(model=name), call)

    async def completion(self, req: Any) -> dict[str, Any]:
        return await self._answer(req, lambda s: s.completion(req))

    async def completion_stream(self, req: Any) -> AsyncIterator[dict[str, Any]]:
        return await self._stream(req, lambda s: s.completion_stream(req))

    async def embeddings(self, req: Any) -> dict[str, Any]:
        return await self._answer(req, lambda s: s.embeddings(req))

    def models_listing(self) -> list[tuple[str, dict[str, Any]]]:
        states = {m["name"]: m for m in self.model_set.status()}
        return [
            (n, {"value": states[self.catalog.names[n]]["state"]}) for n in self.catalog.listed()
        ]

    def models(self) -> dict[str, Any]:  # the name the routes call
        return {
            "object": "list",
            "data": [self.catalog.entry(n, status) for n, status in self.models_listing()],
        }

    def model(self, model_id: str) -> dict[str, Any]:
        state = dict(self.models_listing()).get(model_id)
        return self.catalog.entry(model_id, state)

    async def load_model(self, name: str | None) -> dict[str, Any]:
        slot = await asyncio.to_thread(self.model_set.load, self.catalog.resolve(name))
        if slot.error is not None:
            raise slot.error
        return {"success": True, "model": slot.name, "load_seconds": slot.load_s}

    async def unload_model(self, name: str | None) -> dict[str, Any]:
        resolved = self.catalog.resolve(name)
        was = await asyncio.to_thread(self.model_set.unload, resolved)
        return {"success": True, "model": resolved, "was_loaded": was}

    # -- operations ----------------------------------------------------------------------
    def health(self) -> tuple[dict[str, Any], bool]:
        """Each model's ``state`` and whether it is ``ready`` (loaded, its engine sound); the
        server is ready (200) while some model can serve, loaded or loadable. A model that
        cannot (its load failed, or its engine did) makes the status ``degraded`` and is named
        in ``reason``; when none can serve, the status is ``error`` and the answer a 503."""
        status = self.model_set.status()
        broken = []
        for m in status:
            m["ready"] = m["state"] == "loaded" and "reason" not in m
            if m["state"] == "failed" or (m["state"] == "loaded" and not m["ready"]):
                broken.append(m["name"])
        serving = len(status) > len(broken)
        body: dict[str, Any] = {
            "status": "ok" if not broken else "degraded" if serving else "error",
            "model": self.catalog.order[0],
            "models": status,
            "queued": sum(m.get("queued", 0) for m in status),
            "running": sum(m.get("running", 0) for m in status),
        }
        if broken:
            body["reason"] = f"not serving: {', '.join(broken)} (see each model's reason)"
        return body, serving

    def engine_metrics(self) -> list[tuple[dict[str, str], EngineMetrics]]:
        return [
            ({"model": s.name}, s.engine.metrics())
            for s in self.model_set.loaded()
            if s.engine is not None
        ]


class _Releasing:
    """A stream of chunks that gives the model's lease back when it ends or is closed."""

    def __init__(self, chunks: AsyncIterator[dict[str, Any]], lease: Lease) -> None:
        self.chunks, self.lease = chunks, lease

    def __aiter__(self) -> _Releasing:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            return await self.chunks.__anext__()
        except BaseException:
            self.lease.release()
            raise

    async def aclose(self) -> None:
        try:
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self.lease.release()

    def __del__(self) -> None:  # never iterated nor closed: still give the model back
        self.lease.release()


class ModelAction(BaseModel):
    """The body of ``POST /models/load`` and ``/models/unload`` (llama-server's names)."""

    model: str = Field(min_length=1, description="A configured model's name or alias.")
