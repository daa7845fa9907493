"""What every route needs: the storage, the token table, and a few request helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote

from fastapi import Request

from rvec_hub.hub.server.api_errors import bad_request
from rvec_hub.hub.server.auth import TokenTable, require_read
from rvec_hub.hub.server.guard import BodyLimits
from rvec_hub.hub.server.models import RepoRecord
from rvec_hub.hub.server.storage import HubStorage
from rvec_hub.hub.server.throttle import AuthThrottle


@dataclass(frozen=True)
class HubContext:
    """Server-wide state, stored on `app.state.hub`."""

    storage: HubStorage
    tokens: TokenTable
    upload_secret: bytes
    page_size: int = 1000
    limits: BodyLimits = field(default_factory=BodyLimits)
    throttle: AuthThrottle = field(default_factory=AuthThrottle)
    allow_version_tag_rewrite: bool = False


def hub(request: Request) -> HubContext:
    """The server context of the app handling `request`."""
    return request.app.state.hub


def caller(request: Request) -> str | None:
    """User making the request (None when anonymous); `RequestGuard` authenticated it before the route ran."""
    state = request.scope.get("state") or {}
    if "hub_user" in state:
        return state["hub_user"]
    return hub(request).tokens.caller(request)


def readable_repo(request: Request, repo_id: str) -> tuple[RepoRecord, str | None]:
    """The repo and the caller, or 404 RepoNotFound when it is absent or hidden from the caller."""
    ctx = hub(request)
    user = caller(request)
    repo = ctx.storage.get_repo(repo_id)
    require_read(repo, user)
    return repo, user


def base_url(request: Request) -> str:
    """The URL the client used to reach us, without trailing slash."""
    return str(request.base_url).rstrip("/")


def raw_segments(request: Request, skip: int) -> list[str]:
    """Percent-decoded path segments after the first `skip` ones, split on the *raw* path.

    The client quotes revisions with `safe=""`, so `refs/pr/1` arrives as one `refs%2Fpr%2F1` segment;
    splitting the decoded path would cut it in two.
    """
    raw = request.scope.get("raw_path") or request.url.path.encode()
    parts = raw.decode("latin-1").split("?", 1)[0].split("/")[1:]
    if len(parts) < skip:
        raise bad_request("malformed URL path")
    try:
        return [unquote(p, encoding="utf-8", errors="strict") for p in parts[skip:]]
    except UnicodeDecodeError:
        raise bad_request("URL path has a percent-encoding that is not UTF-8") from None


def truthy(value: str | None) -> bool:
    """Query-string booleans as the client sends them (`True`, `true`, `1`)."""
    return value is not None and value.lower() in ("1", "true", "yes", "on")
