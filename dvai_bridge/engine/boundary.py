"""The one place the engine turns what a backend raised into a ``BridgeError``.

Backends may raise anything from their libraries while they prefill, step, sample or free a
sequence. Every backend call the engine makes runs inside ``backend_call``: a ``BridgeError``
passes as it is (the backend said what went wrong); any other ``Exception`` is logged once,
with its traceback, and becomes a ``BackendError`` naming what the engine was doing. What is not
an ``Exception`` (the device thread dying, ``KeyboardInterrupt``) is left to the loop, which
makes it the engine's failure state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import BackendError, BridgeError

log = logging.getLogger(__name__)


@contextmanager
def backend_call(what: str) -> Iterator[None]:
    try:
        yield
    except BridgeError:
        raise
    except Exception as exc:
        log.exception("the backend failed while %s", what)
        raise BackendError(f"Generation failed while {what}: {exc}") from exc
