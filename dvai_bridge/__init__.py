"""dvai-bridge: on-device LLM inference behind a local OpenAI-compatible HTTP server."""

from .bridge import BoundServer, Bridge, BridgeStatus, shared
from .config import StartConfig
from .errors import (
    AlreadyStarted,
    BackendError,
    BackendUnavailable,
    BridgeError,
    ChecksumMismatch,
    ConfigurationInvalid,
    ContextLengthExceeded,
    DownloadFailed,
    InvalidRequest,
    ModelLoadFailed,
    ModelNotFound,
    NotStarted,
    NotSupported,
    PortsExhausted,
    RequestError,
    ServerBusy,
    ServiceUnavailable,
)
from .progress import ListenerHandle, ProgressEvent, ProgressHub
from .store import (
    CachedModel,
    DeletePlan,
    ModelInUse,
    delete_cached_model,
    download_model,
    list_cached_models,
)

__version__ = "0.1.0"

__all__ = [
    "AlreadyStarted",
    "BackendError",
    "BackendUnavailable",
    "BoundServer",
    "Bridge",
    "BridgeError",
    "BridgeStatus",
    "CachedModel",
    "ChecksumMismatch",
    "ConfigurationInvalid",
    "ContextLengthExceeded",
    "DeletePlan",
    "DownloadFailed",
    "InvalidRequest",
    "ListenerHandle",
    "ModelInUse",
    "ModelLoadFailed",
    "ModelNotFound",
    "NotStarted",
    "NotSupported",
    "PortsExhausted",
    "ProgressEvent",
    "ProgressHub",
    "RequestError",
    "ServerBusy",
    "ServiceUnavailable",
    "StartConfig",
    "__version__",
    "delete_cached_model",
    "download_model",
    "list_cached_models",
    "shared",
]
