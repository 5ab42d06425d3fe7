"""Where the store keeps things, read from the environment at call time.

    HF cache     $HF_HUB_CACHE, else $HF_HOME/hub, else huggingface_hub's default
                 (the standard cache: ``hf cache ls`` and mlx-lm see the same files)
    our cache    $DVAI_BRIDGE_CACHE, else ~/.cache/dvai-bridge
      gguf/      GGUF files fetched from URLs, one folder per URL
      mlx-imports/  GGUF files converted for the MLX backend, one folder per import
      serving/   one lease per running bridge (see ``inuse``)

Reading at call time (rather than at import, as ``huggingface_hub.constants`` does) lets tests
and embedding apps point the store somewhere else without re-importing anything.
"""

from __future__ import annotations

import os
from pathlib import Path

_TRUE = {"1", "on", "true", "yes"}


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    explicit = os.environ.get("HF_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def hf_endpoint() -> str | None:
    """The Hub to talk to (``HF_ENDPOINT``); None means huggingface_hub's default."""
    value = os.environ.get("HF_ENDPOINT")
    return value.rstrip("/") if value else None


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, now or when the hub was imported."""
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return True
    return bool(constants.HF_HUB_OFFLINE)


def bridge_cache_dir() -> Path:
    root = os.environ.get("DVAI_BRIDGE_CACHE") or os.path.join("~", ".cache", "dvai-bridge")
    return Path(root).expanduser()


def gguf_cache_dir() -> Path:
    return bridge_cache_dir() / "gguf"


def mlx_imports_dir() -> Path:
    return bridge_cache_dir() / "mlx-imports"


def serving_dir() -> Path:
    return bridge_cache_dir() / "serving"
