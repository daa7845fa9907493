"""The ASGI layer in front of every route: who is calling, and how many body bytes they may send.

It runs before FastAPI reads or parses anything:

* a token is checked (and failures throttled) before the route runs, so a write endpoint never
  reads the body of a caller it will refuse; an anonymous write to a repo that anonymous callers
  cannot see answers 404, as reads do;
* the body is counted while it streams in and refused with 413 the moment it passes the route's
  limit (a `Content-Length` over the limit is refused before a byte is read). Nothing is buffered
  here; the limit bounds what a route may later hold.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rvec_hub.hub.server.api_errors import HubApiError, invalid_token, repo_not_found, unauthorized
from rvec_hub.hub.server.throttle import AuthThrottle

MIB = 1 << 20
GIB = 1 << 30
DEFAULT_MAX_INLINE_BYTES = 64 * MIB
DEFAULT_MAX_LFS_BYTES = 64 * GIB
MAX_JSON_BYTES = 4 * MIB  # every other body: repo settings, tags, LFS batches, paths-info, preupload

_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_READ_POSTS = (re.compile(r"^/api/models/[^/]+/[^/]+/paths-info(/|$)"), re.compile(r"^/api/validate-yaml/?$"))
_INLINE_ROUTES = (re.compile(r"^/api/models/[^/]+/[^/]+/commit(/|$)"), re.compile(r"^/api/validate-yaml/?$"))
_UPLOAD = re.compile(r"^/lfs-upload/")
_REPO_IN_PATH = (
    re.compile(r"^/api/models/(?P<ns>[^/]+)/(?P<name>[^/]+)"),
    re.compile(r"^/lfs-(?:upload|verify)/(?P<ns>[^/]+)/(?P<name>[^/]+)"),
    re.compile(r"^/(?P<ns>[^/]+)/(?P<name>[^/]+)\.git/"),
    re.compile(r"^/(?P<ns>[^/]+)/(?P<name>[^/]+)/resolve/"),
)


@dataclass(frozen=True)
class BodyLimits:
    """How many body bytes a request may carry.

    Args:
        max_inline_bytes: an NDJSON commit (regular files travel base64 inside it) or a README check.
        max_lfs_bytes: one LFS object uploaded through a signed URL.
    """

    max_inline_bytes: int = DEFAULT_MAX_INLINE_BYTES
    max_lfs_bytes: int = DEFAULT_MAX_LFS_BYTES

    def __post_init__(self) -> None:
        if self.max_inline_bytes < 1 or self.max_lfs_bytes < 1:
            raise ValueError("body limits must be at least 1 byte")


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a body passes its limit; FastAPI lets HTTPExceptions through unchanged."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body is larger than this endpoint's limit of {limit} bytes")
        self.limit = limit


def too_large(limit: int) -> HubApiError:
    """413 naming the limit and how to raise it."""
    return HubApiError(
        413,
        f"request body is larger than this endpoint's limit of {limit} bytes; the server's owner can raise it "
        "with `rvec hub serve --max-inline-bytes/--max-lfs-bytes`",
        headers={"Connection": "close"},  # the rest of the body is not read: do not keep the connection
    )


def repo_in_path(path: str) -> str | None:
    """`namespace/name` named by a request path, if any."""
    for pattern in _REPO_IN_PATH:
        match = pattern.match(path)
        if match:
            return f"{match['ns']}/{match['name']}"
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class RequestGuard:
    """ASGI middleware: authenticate (throttled), then limit the body while it streams in.

    Args:
        app: the wrapped application.
        hub: the `HubContext` (tokens, storage, limits, throttle).
    """

    def __init__(self, app: ASGIApp, hub: Any) -> None:
        self.app = app
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method", "GET")
        upload = method == "PUT" and _UPLOAD.match(path) is not None
        writing = not upload and method not in _READ_METHODS and not any(p.match(path) for p in _READ_POSTS)
        repo_id = repo_in_path(path)
        try:
            user = None if upload else self._authenticate(scope, repo_id)
            if writing and user is None:
                self._refuse_anonymous_write(repo_id)
            limit = self._limit(path, upload, user)
            declared = _header(scope, b"content-length")
            if declared is not None and declared.strip().isdigit() and int(declared) > limit:
                raise too_large(limit)
        except HubApiError as err:
            if _header(scope, b"content-length") not in (None, "0") or _header(scope, b"transfer-encoding"):
                err.headers.setdefault("Connection", "close")
            await err.to_response()(scope, receive, send)
            return
        scope.setdefault("state", {})["hub_user"] = user
        expects_body = _header(scope, b"content-length") not in (None, "0") or _header(scope, b"transfer-encoding")
        body = _Body(receive, limit)
        await self.app(scope, body.receive, _closing_if_unread(send, body) if expects_body else send)

    def _authenticate(self, scope: Scope, repo_id: str | None) -> str | None:
        header = _header(scope, b"authorization")
        if header is None:
            return None
        throttle: AuthThrottle = self.hub.throttle
        client = scope.get("client")
        client_key = f"client:{client[0] if client else 'unknown'}"
        keys = [client_key] + ([f"user:{repo_id.split('/')[0]}"] if repo_id else [])
        wait = throttle.retry_after(keys)
        if wait > 0:
            raise HubApiError(
                429, f"too many failed authentications; try again in {math.ceil(wait)} s",
                headers={"Retry-After": str(math.ceil(wait))},
            )
        scheme, _, token = header.partition(" ")
        user = self.hub.tokens.user_for(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if user is None:
            throttle.failed(keys)
            raise invalid_token()
        throttle.succeeded(client_key)
        return user

    def _refuse_anonymous_write(self, repo_id: str | None) -> None:
        """404 for a repo an anonymous caller cannot see (absent or private); 401 otherwise."""
        if repo_id is not None:
            repo = self.hub.storage.get_repo(repo_id)  # 404 RepoNotFound / 400 for a malformed name
            if repo.private:
                raise repo_not_found(repo_id)
        raise unauthorized()

    def _limit(self, path: str, upload: bool, user: str | None) -> int:
        limits: BodyLimits = self.hub.limits
        if upload:
            return limits.max_lfs_bytes
        if user is not None and any(p.match(path) for p in _INLINE_ROUTES):
            return limits.max_inline_bytes
        return MAX_JSON_BYTES


class _Body:
    """Wraps `receive`: counts body bytes, raises `BodyTooLarge` past the limit, knows when the body ended."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self.limit = limit
        self.received = 0
        self.done = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.done = not message.get("more_body", False)
            if self.received > self.limit:
                raise BodyTooLarge(self.limit)
        return message


def _closing_if_unread(send: Send, body: _Body) -> Send:
    """`send` that asks to close the connection when answering before the body was read to its end.

    Otherwise the server would keep reading (and discarding) whatever the client still sends.
    """

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start" and not body.done:
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return wrapped
