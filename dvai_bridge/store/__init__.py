"""The model store: resolve a reference, download it with byte progress, list and delete.

refs       the reference grammar (repo id[@rev], repo/file.gguf, URL, local paths)
resolve    download_model / locate_model: a reference -> files on this machine
hub        Hugging Face repos and files into the standard HF cache (resumable)
gguf       GGUF files from plain URLs into our GGUF cache (resumable, sha256)
fetch      one resumable HTTP download
meter      byte counting -> ``download`` progress events
cache      list_cached_models / delete_cached_model over both caches and the MLX imports
imports    MLX imports of GGUF files: which are stale (nothing will load them again)
inuse      leases of running bridges: a served model is not deleted
locations  where the caches are (read from the environment at call time)
"""

from ..errors import ModelInUse
from .cache import (
    CachedModel,
    DeletePlan,
    delete_cached_model,
    list_cached_models,
    prune_stale_imports,
)
from .inuse import RunningServer, running_servers
from .refs import ModelRef, parse_reference
from .resolve import download_model, locate_model

__all__ = [
    "CachedModel",
    "DeletePlan",
    "ModelInUse",
    "ModelRef",
    "RunningServer",
    "delete_cached_model",
    "download_model",
    "list_cached_models",
    "locate_model",
    "parse_reference",
    "prune_stale_imports",
    "running_servers",
]
