"""Defaults that more than one module needs, each written once.

This module imports nothing, so any layer may read it. A default that only one module needs
stays there, on its pydantic field or dataclass field (``StartConfig`` and the backends' Options
models carry most of them; the CLI is generated from those fields).
"""

from __future__ import annotations

# -- the HTTP server ---------------------------------------------------------------------------
SHUTDOWN_GRACE_S = 5.0  # seconds in-flight requests run on after stop (then they are ended)
MAX_BODY_MB = 16  # largest request body, in MiB

# -- the engine, by device kind: (max_batch, prefill_chunk, prompt_cache_mb, cache_share) -------
# cache_share: the prompt cache takes at most this share of the device's memory, when known.
DEVICE_LIMITS: dict[str, tuple[int, int, int, float]] = {
    "cpu": (8, 512, 1024, 0.25),
    "cuda": (64, 2048, 8192, 0.1),
    "metal": (32, 2048, 4096, 0.1),
}

# -- stored responses (POST /v1/responses with store) ------------------------------------------
RESPONSES_MAX = 1000  # responses kept at most
RESPONSES_MAX_MB = 64  # their size limit, in MiB of JSON
RESPONSES_TTL_S = 86400.0  # seconds a stored response lives

# -- reasoning models --------------------------------------------------------------------------
REASONING_FIELD = "reasoning_content"
REASONING_BUDGETS = {"minimal": 64, "low": 256, "medium": 1024}  # tokens, by reasoning_effort
