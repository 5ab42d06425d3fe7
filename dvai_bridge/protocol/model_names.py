"""Which names a request's ``model`` may carry, and what ``/v1/models`` lists.

A server with one chat model answers whatever name a client sends, as llama-server does: client
libraries hard-code names (LangChain's ``gpt-3.5-turbo``, openai-agents' default, ``gpt-4o-mini``
in countless configs) and there is nothing else the request could mean. Every answer carries the
served id in ``model``, so the client sees what ran. ``strict`` (``--strict-model-names``) turns
that off: then only the served id, its aliases, ``default`` or no name are accepted, and any other
name is a 404 that lists them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..errors import ModelNotFound

DEFAULT = "default"  # always means "the served model", strict or not


class ModelNames:
    def __init__(
        self,
        chat_id: str,
        *,
        aliases: Sequence[str] = (),
        embedder_id: str | None = None,
        strict: bool = False,
    ) -> None:
        self.chat_id = chat_id
        self.aliases = [a for a in dict.fromkeys(aliases) if a and a != chat_id]
        self.embedder_id = embedder_id
        self.strict = strict
        self.created = int(time.time())  # when this server started serving them

    def listed(self) -> list[str]:
        """The ids ``/v1/models`` lists: the chat model, its aliases, the embedding model."""
        ids = [self.chat_id, *self.aliases]
        if self.embedder_id is not None and self.embedder_id not in ids:
            ids.append(self.embedder_id)
        return ids

    def check_chat(self, name: str | None) -> None:
        """Raise ``ModelNotFound`` unless ``name`` may select the chat model."""
        if self.strict and name and name not in (self.chat_id, *self.aliases, DEFAULT):
            raise ModelNotFound(
                f"The model {name!r} does not exist here; this server serves "
                f"{self._names(self.chat_id, *self.aliases)} (started with "
                "--strict-model-names).",
                param="model",
            )

    def check_embedding(self, name: str | None) -> None:
        """Raise ``ModelNotFound`` unless ``name`` may select the embedding model (on a server
        that has one)."""
        known = (self.chat_id, *self.aliases, DEFAULT, self.embedder_id)
        if self.strict and name and name not in known:
            raise ModelNotFound(
                f"The model {name!r} does not exist here; this server embeds with "
                f"{self.embedder_id!r}.",
                param="model",
            )

    def entry(self, model_id: str) -> dict[str, Any]:
        """``GET /v1/models/{id}``: a listed id or ``default``; anything else is a 404 (a
        client asking whether a name exists gets the truth, even where requests with that name
        would be served)."""
        if model_id == DEFAULT:
            model_id = self.chat_id
        if model_id not in self.listed():
            raise ModelNotFound(
                f"The model {model_id!r} does not exist here; this server lists "
                f"{self._names(*self.listed())}.",
                param="model",
            )
        return self._entry(model_id)

    def listing(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._entry(i) for i in self.listed()]}

    def _entry(self, model_id: str) -> dict[str, Any]:
        return {
            "id": model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "dvai-bridge",
        }

    @staticmethod
    def _names(*names: str) -> str:
        return ", ".join(repr(n) for n in names)


class ModelCatalog:
    """The names of a server configured with several models (``--model NAME=REF``, a models
    file): each model's name and aliases select it. With exactly one model configured the rule
    above holds (any name is served by it unless ``strict``); with several, an unknown name is
    a 404 listing the names."""

    def __init__(
        self, models: Sequence[tuple[str, Sequence[str]]], *, strict: bool = False
    ) -> None:
        self.names = {name: name for name, _ in models}
        for name, aliases in models:
            self.names.update({a: name for a in aliases if a})
        self.order = [n for n, _ in models]
        self.strict = strict
        self.created = int(time.time())

    def resolve(self, name: str | None, param: str = "model") -> str:
        """The configured model ``name`` selects."""
        if name in self.names:
            return self.names[name]  # type: ignore[index]
        if not name or name == DEFAULT:
            return self.order[0]  # the first configured model is the default one
        if len(self.order) == 1 and (not self.strict or not name or name == DEFAULT):
            return self.order[0]
        raise ModelNotFound(
            f"The model {name!r} does not exist here; this server serves "
            f"{ModelNames._names(*self.names)}.",
            param=param,
        )

    def listed(self) -> list[str]:
        return list(self.names)

    def entry(self, model_id: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
        if model_id not in self.names:
            raise ModelNotFound(
                f"The model {model_id!r} does not exist here; this server lists "
                f"{ModelNames._names(*self.names)}.",
                param="model",
            )
        body = {
            "id": model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "dvai-bridge",
        }
        if status is not None:
            body["status"] = status
        return body
