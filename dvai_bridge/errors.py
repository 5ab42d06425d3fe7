"""The one exception tree of dvai-bridge.

Every error the bridge raises is a ``BridgeError``. Each class knows the HTTP status, the
OpenAI error ``type`` and ``code`` it maps to; the HTTP layer turns any of them into the OpenAI
envelope ``{"error": {"message", "type", "param", "code"}}`` in exactly one place.

    BridgeError                         500 internal_error
    ├── NotStarted                      503
    ├── AlreadyStarted                  409
    ├── ConfigurationInvalid            400
    │   └── PortsExhausted              400  (every port of the range is busy)
    ├── BackendUnavailable              501
    ├── ModelLoadFailed                 500
    ├── DownloadFailed                  502
    │   └── ChecksumMismatch            502
    ├── ModelInUse                      409  (a served model cannot be deleted)
    ├── BackendError                    500  (the engine failed while generating)
    └── RequestError                    400  invalid_request_error
        ├── InvalidRequest              400  code=invalid_request
        ├── ContextLengthExceeded       400  code=context_length_exceeded
        ├── ModelNotFound               404  code=model_not_found
        ├── NotFound                    404  code=not_found (a stored response)
        ├── Unauthorized                401  code=invalid_api_key
        ├── Forbidden                   403
        │   ├── HostNotAllowed          403  (DNS-rebinding guard)
        │   └── OriginNotAllowed        403
        ├── PayloadTooLarge             413
        ├── NotSupported                501  (a capability this model or backend lacks)
        ├── ServerBusy                  429  (queue full)
        └── ServiceUnavailable          503  (shutting down)
"""

from __future__ import annotations

from typing import Any


class BridgeError(Exception):
    status_code: int = 500
    error_type: str = "internal_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI error envelope for this error."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class NotStarted(BridgeError):
    status_code = 503
    error_type = "service_unavailable"
    code = "not_started"


class AlreadyStarted(BridgeError):
    status_code = 409
    error_type = "conflict"
    code = "already_started"


class ConfigurationInvalid(BridgeError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "configuration_invalid"


class PortsExhausted(ConfigurationInvalid):
    code = "ports_exhausted"


class BackendUnavailable(BridgeError):
    status_code = 501
    error_type = "not_implemented"
    code = "backend_unavailable"


class ModelLoadFailed(BridgeError):
    status_code = 500
    error_type = "internal_error"
    code = "model_load_failed"


class DownloadFailed(BridgeError):
    status_code = 502
    error_type = "download_error"
    code = "download_failed"


class ChecksumMismatch(DownloadFailed):
    code = "checksum_mismatch"


class ModelInUse(BridgeError):
    """A cached model cannot be deleted while a bridge serves it."""

    status_code = 409
    error_type = "conflict"
    code = "model_in_use"


class BackendError(BridgeError):
    status_code = 500
    error_type = "internal_error"
    code = "backend_error"


class RequestError(BridgeError):
    status_code = 400
    error_type = "invalid_request_error"


class InvalidRequest(RequestError):
    code = "invalid_request"  # as the validation 400s (http/errors.py) and docs/usage.md say


class ContextLengthExceeded(RequestError):
    code = "context_length_exceeded"


class ModelNotFound(RequestError):
    status_code = 404
    code = "model_not_found"


class NotFound(RequestError):
    """A stored object (a response id) that does not exist or has expired."""

    status_code = 404
    code = "not_found"


class Unauthorized(RequestError):
    status_code = 401
    code = "invalid_api_key"


class Forbidden(RequestError):
    status_code = 403
    error_type = "permission_error"


class HostNotAllowed(Forbidden):
    code = "host_not_allowed"


class OriginNotAllowed(Forbidden):
    code = "origin_not_allowed"


class PayloadTooLarge(RequestError):
    status_code = 413
    code = "request_too_large"


class NotSupported(RequestError):
    status_code = 501
    error_type = "not_implemented"
    code = "not_supported"


class ServerBusy(RequestError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "server_busy"


class ServiceUnavailable(RequestError):
    status_code = 503
    error_type = "service_unavailable"
    code = "shutting_down"


class EngineFailed(ServiceUnavailable):
    """The engine stopped on an error it could not recover from; ``stop()`` and ``start()``
    bring a new one up. Requests get 503 (with Retry-After) naming the cause meanwhile."""

    error_type = "server_error"
    code = "engine_failed"


__all__ = [
    "AlreadyStarted",
    "BackendError",
    "BackendUnavailable",
    "BridgeError",
    "ChecksumMismatch",
    "ConfigurationInvalid",
    "ContextLengthExceeded",
    "DownloadFailed",
    "EngineFailed",
    "Forbidden",
    "HostNotAllowed",
    "InvalidRequest",
    "ModelInUse",
    "ModelLoadFailed",
    "ModelNotFound",
    "NotFound",
    "NotStarted",
    "NotSupported",
    "OriginNotAllowed",
    "PayloadTooLarge",
    "PortsExhausted",
    "RequestError",
    "ServerBusy",
    "ServiceUnavailable",
    "Unauthorized",
]
