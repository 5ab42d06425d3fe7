"""Who may drive the server: Host and Origin checks, API keys, CORS, and a body-size limit.

A loopback server is reachable by every process on the machine and, through the browser, by
every web page the user opens. The guards, outermost first:

    HostGuard      403  Host header not a loopback name or an allowed host (DNS rebinding);
                        Origin header from a web page that CORS does not allow
    Cors                preflight OPTIONS -> 204 (Access-Control-Allow-Private-Network too)
    (Drain)        503  the server is stopping (see ``drain.py``)
    KeyCheck       401  no or wrong ``Authorization: Bearer <key>`` (``/health`` stays open)
    BodyLimit      413  a body over the limit, with or without Content-Length
                   408  a body that has not ended ``timeout_s`` after the headers
                   400  a body in UTF-16 or UTF-32 (JSON here is UTF-8)

Each is a small ASGI middleware that answers with the OpenAI error envelope; docs/security.md
says what each one protects against.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.middleware.cors import CORSMiddleware
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..defaults import MAX_BODY_MB
from ..errors import (
    ConfigurationInvalid,
    Forbidden,
    HostNotAllowed,
    InvalidRequest,
    OriginNotAllowed,
    PayloadTooLarge,
    RequestError,
    Unauthorized,
)
from .errors import envelope, error_response

log = logging.getLogger(__name__)

MAX_BODY_BYTES = MAX_BODY_MB << 20
BODY_TIMEOUT_S = 60.0
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
OPEN_PATHS = frozenset({"/health"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE", "QUERY"})


# -- policy ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SecurityOptions:
    """What ``create_app`` needs to guard the app; ``from_config`` builds it from a StartConfig."""

    api_keys: frozenset[str] = frozenset()
    allowed_hosts: tuple[str, ...] = ()
    cors_origin: str | Iterable[str] | None = ()
    max_body_bytes: int = MAX_BODY_BYTES

    @classmethod
    def from_config(cls, config: Any) -> SecurityOptions:
        """Read the key file, add the bound address to the allowed hosts, warn if exposed."""
        keys = load_api_keys(config.api_key, config.api_key_file)
        hosts = list(config.allowed_hosts)
        if not _is_wildcard(config.host):
            hosts.append(config.host)
        warn_if_exposed(config.host, keys)
        return cls(keys, tuple(hosts), config.cors_origin, config.max_body_mb << 20)

    def app_options(self) -> dict[str, Any]:
        return {
            "api_key": self.api_keys,
            "allowed_hosts": self.allowed_hosts,
            "cors_origin": self.cors_origin,
            "max_body_bytes": self.max_body_bytes,
        }


# Pages served from this machine's loopback names, any port: what the server allows by default.
LOOPBACK_ORIGIN_REGEX = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]{1,5})?"
_LOOPBACK_ORIGIN = re.compile(LOOPBACK_ORIGIN_REGEX)


@dataclass(frozen=True)
class OriginPolicy:
    """Which web pages (``Origin`` headers) may use the server, from ``cors_origin``.

    ``None``: none. Otherwise pages on loopback origins (``http(s)://localhost``,
    ``127.0.0.1``, ``[::1]``, any port), plus the origins listed; ``"*"`` (alone or listed):
    every page. ``[]``, the default, is loopback origins only.
    """

    any_origin: bool = False
    loopback: bool = True
    origins: frozenset[str] = frozenset()

    @classmethod
    def of(cls, cors_origin: str | Iterable[str] | None) -> OriginPolicy:
        if cors_origin is None:
            return cls(loopback=False)
        listed = [cors_origin] if isinstance(cors_origin, str) else list(cors_origin)
        return cls("*" in listed, True, frozenset(_origin_key(o) for o in listed if o != "*"))

    def allows(self, origin: str) -> bool:
        key = _origin_key(origin)
        return (
            self.any_origin
            or key in self.origins
            or (self.loopback and _LOOPBACK_ORIGIN.fullmatch(key) is not None)
        )

    @property
    def open(self) -> bool:
        """Whether any page at all may call the server (CORS headers are sent)."""
        return self.any_origin or self.loopback or bool(self.origins)


def _origin_key(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def load_api_keys(api_key: str | Iterable[str] | None, api_key_file: str | None) -> frozenset[str]:
    """Keys from the option (one or several) and from a file of one key per line."""
    given = [api_key] if isinstance(api_key, str) else list(api_key or ())
    keys = {k.strip() for k in given if k and k.strip()}
    if api_key_file:
        path = Path(api_key_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationInvalid(
                f"Cannot read the API key file {path}: {exc}", param="api_key_file"
            ) from None
        _warn_if_shared(path)
        from_file = {ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")}
        if not from_file:
            raise ConfigurationInvalid(
                f"The API key file {path} holds no key.", param="api_key_file"
            )
        keys |= from_file
    return frozenset(keys)


def _warn_if_shared(path: Path) -> None:
    """A key file that other users may read gives the key away."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if os.name == "posix" and mode & 0o077:
        log.warning(
            "the API key file %s can be read or written by other users (mode %s); "
            "run: chmod 600 %s",
            path,
            oct(mode & 0o777),
            path,
        )


def is_loopback(host: str) -> bool:
    name = _normalize(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    return _normalize(host) in ("", "0.0.0.0", "::")


def warn_if_exposed(host: str, keys: frozenset[str]) -> None:
    if is_loopback(host) or keys:
        return
    log.warning(
        "\n" + "!" * 78 + "\n"
        "!! dvai-bridge is listening on %s, which is NOT a loopback address, and no API key\n"
        "!! is set: anyone who can reach this machine on the network can use the model.\n"
        "!! Set --api-key / api_key (or DVAI_BRIDGE_API_KEY), or bind 127.0.0.1.\n" + "!" * 78,
        host,
    )


def _normalize(host: str) -> str:
    """A Host header or host name without port, brackets, case or trailing dot."""
    h = host.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        port = h[end + 1 :] if end > 0 else "?"
        if port and not (port[0] == ":" and port[1:].isdigit()):
            return h  # malformed: matches nothing
        h = h[1:end]
    elif h.count(":") == 1:
        h, port = h.split(":")
        if not port.isdigit():
            return host  # malformed: matches nothing
    return h.rstrip(".")


# -- middleware ------------------------------------------------------------------------------
async def _refuse(
    exc: RequestError,
    scope: Scope,
    receive: Receive,
    send: Send,
    headers: dict[str, str] | None = None,
) -> None:
    response = error_response(exc)
    if headers:
        response.headers.update(headers)
    await response(scope, receive, send)


async def _refuse_envelope(
    status: int, message: str, code: str, scope: Scope, receive: Receive, send: Send
) -> None:
    """For refusals no ``BridgeError`` class stands for; the connection is closed after."""
    await envelope(status, message, "invalid_request_error", None, code, {"Connection": "close"})(
        scope, receive, send
    )


class HostGuard:
    """Answer only Host names we serve (DNS rebinding) and Origins CORS allows (drive-by POSTs).

    A page on ``evil.example`` that rebinds its name to 127.0.0.1 still sends
    ``Host: evil.example``; only loopback names and ``allowed_hosts`` pass. A browser sends
    ``Origin`` with every cross-origin POST, even those it sends without a preflight; an Origin
    the CORS policy does not allow is refused before the request does anything.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Iterable[str] = (),
        origins: OriginPolicy | None = None,
    ) -> None:
        self.app = app
        names = {_normalize(h) for h in allowed_hosts}
        self.any_host = "*" in names
        self.suffixes = tuple(n for n in names if n.startswith("."))
        self.names = LOOPBACK_NAMES | {n for n in names if not n.startswith(".")}
        self.origins = origins or OriginPolicy()

    def host_allowed(self, host: str | None) -> bool:
        if host is None or self.any_host:  # HTTP/1.0 without Host: not a browser
            return True
        name = _normalize(host)
        if name in self.names or (self.suffixes and name.endswith(self.suffixes)):
            return True
        try:  # an IP literal cannot be rebound; loopback ones are ours
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def origin_allowed(self, origin: str | None) -> bool:
        return origin is None or self.origins.allows(origin)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host = headers.get("host")
        if not self.host_allowed(host):
            log.warning("refused a request for Host %r (not a loopback name or allowed host)", host)
            return await _refuse(
                HostNotAllowed(
                    f"Host {host!r} is not served here. This server answers loopback names "
                    "(127.0.0.1, localhost, [::1]) and its allowed_hosts; this guards against "
                    "DNS rebinding. Add the name to allowed_hosts (--allowed-host) if you "
                    "meant it.",
                    param="host",
                ),
                scope,
                receive,
                send,
            )
        origin = headers.get("origin")
        if not self.origin_allowed(origin):
            log.warning("refused a request from Origin %r (not allowed by cors_origin)", origin)
            return await _refuse(
                OriginNotAllowed(
                    f"Origin {origin!r} may not use this server; allow it with cors_origin "
                    "(--cors-origin).",
                    param="origin",
                ),
                scope,
                receive,
                send,
            )
        await self.app(scope, receive, send)


class Cors(CORSMiddleware):
    """Starlette's CORS over an ``OriginPolicy``, with preflights answered 204 and a refused
    preflight as an envelope.

    ``Access-Control-Allow-Private-Network: true`` goes on preflights that ask for it from an
    allowed origin (Chrome's Private Network Access: a public page calling a loopback server);
    a refused preflight carries no Access-Control-Allow-* header at all.
    """

    def __init__(self, app: ASGIApp, *, origins: OriginPolicy) -> None:
        super().__init__(
            app,
            allow_origins=["*"] if origins.any_origin else sorted(origins.origins),
            allow_origin_regex=LOOPBACK_ORIGIN_REGEX if origins.loopback else None,
            allow_methods=["*"],
            allow_headers=["*"],
            allow_private_network=True,
            max_age=3600,
        )
        self.policy = origins

    def is_allowed_origin(self, origin: str) -> bool:
        return self.policy.allows(origin)

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        headers = {
            k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")
        }
        if response.status_code == 200:
            return Response(status_code=204, headers=headers)
        why = bytes(response.body).decode()
        out = error_response(
            Forbidden(
                f"{why} (preflight for {request_headers['origin']!r}).",
                param="origin",
                code="cors_preflight_refused",
            )
        )
        out.headers.update(
            {k: v for k, v in headers.items() if not k.startswith("access-control-allow")}
        )
        return out


class KeyCheck:
    """``Authorization: Bearer <key>`` must name one of the keys; compared in constant time.

    Both sides are hashed first, so neither the key's length nor which key matched shows in the
    time an answer takes.
    """

    def __init__(self, app: ASGIApp, *, keys: Iterable[str]) -> None:
        self.app = app
        self.digests = tuple(hashlib.sha256(k.encode()).digest() for k in keys)

    def authorized(self, header: str | None, api_key: str | None = None) -> bool:
        """``Authorization: Bearer <key>``, or Anthropic's ``x-api-key: <key>``."""
        if api_key is not None:
            scheme, token = "bearer", api_key
        else:
            scheme, _, token = (header or "").partition(" ")
        given = hashlib.sha256(token.strip().encode()).digest()
        ok = False
        for digest in self.digests:
            ok |= hmac.compare_digest(given, digest)
        return ok and scheme.lower() == "bearer"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        if not self.authorized(headers.get("authorization"), headers.get("x-api-key")):
            return await _refuse(
                Unauthorized("Missing or wrong API key (send Authorization: Bearer <key>)."),
                scope,
                receive,
                send,
                {"WWW-Authenticate": "Bearer"},
            )
        await self.app(scope, receive, send)


class BodyLimit:
    """Read the whole body first, refusing it past ``max_bytes`` or ``timeout_s``, then hand
    it on.

    Content-Length over the limit is refused before a byte is read; a chunked body is counted
    as it arrives. A body that has not ended ``timeout_s`` after the headers is 408. After the
    body, ``receive`` passes through (the routes watch it for the client's disconnect).
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int = MAX_BODY_BYTES, timeout_s: float = BODY_TIMEOUT_S
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"The request body is larger than this server's limit of "
            f"{self.max_bytes:,} bytes ({self.max_bytes / (1 << 20):g} MiB)."
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            return await self.app(scope, receive, send)
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _refuse(self._too_large(), scope, receive, send, {"Connection": "close"})
        chunks: list[bytes] = []
        size = 0
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while True:
            try:
                message = await asyncio.wait_for(
                    receive(), deadline - asyncio.get_running_loop().time()
                )
            except TimeoutError:
                return await _refuse_envelope(
                    408,
                    f"The request body did not arrive within {self.timeout_s:g} s.",
                    "request_timeout",
                    scope,
                    receive,
                    send,
                )
            if message["type"] != "http.request":  # the client left before the body ended
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                return await _refuse(
                    self._too_large(), scope, receive, send, {"Connection": "close"}
                )
            chunks.append(body)
            if not message.get("more_body", False):
                break
        encoding = json.detect_encoding(b"".join(chunks[:4])[:4]) if size else "utf-8"
        if encoding not in ("utf-8", "utf-8-sig"):
            return await _refuse(
                InvalidRequest(
                    f"The request body is encoded as {encoding.upper()}; send JSON encoded as "
                    "UTF-8.",
                    code="invalid_request",
                ),
                scope,
                receive,
                send,
            )
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
