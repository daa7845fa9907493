"""The FastAPI application speaking the part of the Hub HTTP API that `huggingface_hub` uses."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from rvec_hub.hub.server import lfs, routes_files, routes_refs, routes_repos
from rvec_hub.hub.server.api_errors import HubApiError, handle_api_error
from rvec_hub.hub.server.auth import TokenTable
from rvec_hub.hub.server.context import HubContext
from rvec_hub.hub.server.guard import BodyLimits, BodyTooLarge, RequestGuard, too_large
from rvec_hub.hub.server.storage import HubStorage
from rvec_hub.hub.server.throttle import AuthThrottle


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """A body the client should not have sent: 400 with the fields at fault (values are not echoed)."""
    assert isinstance(exc, RequestValidationError)
    where = sorted({".".join(str(p) for p in err.get("loc", ())) for err in exc.errors()})
    message = f"malformed request body or parameters: {', '.join(where) or 'unknown field'}"
    return HubApiError(400, message).to_response()


async def _handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    """Framework errors (unknown route, wrong method, unparsable body) in the Hub's error shape."""
    assert isinstance(exc, HTTPException)
    if isinstance(exc, BodyTooLarge):
        return too_large(exc.limit).to_response()
    return HubApiError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})).to_response()


def create_app(
    root: Path,
    tokens: Mapping[str, str],
    *,
    page_size: int = 1000,
    limits: BodyLimits | None = None,
    allow_version_tag_rewrite: bool = False,
    throttle: AuthThrottle | None = None,
    verify_blobs: bool = True,
) -> FastAPI:
    """Build the Hub-protocol app serving the repositories stored under `root`.

    Args:
        root: storage directory (created if missing); everything the server keeps lives inside it.
        tokens: `{username: token}`; writes need one of these tokens as `Authorization: Bearer ...`.
            Empty means a read-only server.
        page_size: entries per page of tree, commit and model listings (the Hub uses 1000).
        limits: body size limits (inline commits, LFS objects); defaults to `BodyLimits()`.
        allow_version_tag_rewrite: let owners delete version tags (`v1.2.3`) and repos that have them.
        throttle: lock-out policy for failed authentications; defaults to `AuthThrottle()`.
        verify_blobs: hash blobs before serving them (off only to stand in for a broken Hub in client tests).

    Returns:
        The FastAPI application.

    Example:
        >>> app = create_app(Path("/srv/hub"), {"alice": "hf_alice_token"})
        >>> # uvicorn.run(app, host="127.0.0.1", port=8080)
    """
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    app = FastAPI(title="rvec hub", docs_url=None, redoc_url=None, openapi_url=None)
    ctx = HubContext(
        storage=HubStorage(Path(root), verify_blobs=verify_blobs),
        tokens=TokenTable.from_user_tokens(dict(tokens)),
        upload_secret=secrets.token_bytes(32),
        page_size=page_size,
        limits=limits or BodyLimits(),
        throttle=throttle if throttle is not None else AuthThrottle(),
        allow_version_tag_rewrite=allow_version_tag_rewrite,
    )
    app.state.hub = ctx
    app.add_middleware(RequestGuard, hub=ctx)
    app.add_exception_handler(HubApiError, handle_api_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(HTTPException, _handle_http_exception)
    # Specific prefixes first: the catch-all `/{namespace}/{name}/...` routes come last.
    app.include_router(routes_repos.router)
    app.include_router(routes_refs.router)
    app.include_router(routes_files.router)
    app.include_router(lfs.router)
    return app
