"""Repository endpoints: create, delete, settings, info, listing, whoami, README validation."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from rvec_hub.hub.server.api_errors import HubApiError, bad_request
from rvec_hub.hub.server.auth import can_read, require_namespace, require_user, require_write
from rvec_hub.hub.server.cards import CardError, parse_card_data
from rvec_hub.hub.server.context import base_url, caller, hub, readable_repo, truthy
from rvec_hub.hub.server.listing import card_for, model_json, page_link, parse_cursor
from rvec_hub.hub.server.models import CreateRepoRequest, DeleteRepoRequest, RepoSettingsRequest
from rvec_hub.hub.server.paths import is_version_tag
from rvec_hub.hub.server.routes_files import json_body_doc, json_body
from rvec_hub.hub.server.routes_refs import version_tag_immutable
from rvec_hub.hub.server.storage import DEFAULT_BRANCH, split_repo_id

router = APIRouter()


def _only_models(repo_type: str | None) -> None:
    if repo_type not in (None, "model"):
        raise bad_request(f"repo type {repo_type!r} is not served here; this server hosts model repos only")


@router.post("/api/repos/create")
def create_repo(body: CreateRepoRequest, request: Request) -> JSONResponse:
    """Create a model repo under the caller's namespace (or `organization`, which must be the caller)."""
    _only_models(body.type)
    user = require_user(caller(request))
    namespace = body.organization or user
    repo_id = f"{namespace}/{body.name}"
    split_repo_id(repo_id)
    require_namespace(namespace, user)
    url = f"{base_url(request)}/{repo_id}"
    try:
        hub(request).storage.create_repo(repo_id, private=body.is_private, author=user)
    except HubApiError as err:
        if err.status_code == 409:  # `create_repo(exist_ok=True)` reads the url from the 409 body
            err.extra["url"] = url
        raise
    return JSONResponse({"url": url, "name": repo_id, "id": repo_id})


@router.delete("/api/repos/delete")
def delete_repo(body: DeleteRepoRequest, request: Request) -> JSONResponse:
    """Delete a repo and everything in it."""
    _only_models(body.type)
    user = caller(request)
    namespace = body.organization or require_user(user)
    repo_id = f"{namespace}/{body.name}"
    ctx = hub(request)
    storage = ctx.storage
    require_write(storage.get_repo(repo_id), user)
    versions = sorted(t for t in storage.refs(repo_id, "tags") if is_version_tag(t))
    if versions and not ctx.allow_version_tag_rewrite:
        raise version_tag_immutable(repo_id, ", ".join(versions[:5]))
    storage.delete_repo(repo_id)
    return JSONResponse({})


@router.put("/api/models/{namespace}/{name}/settings")
def update_settings(namespace: str, name: str, body: RepoSettingsRequest, request: Request) -> JSONResponse:
    """Change visibility (the only setting this server keeps)."""
    repo_id = f"{namespace}/{name}"
    storage = hub(request).storage
    require_write(storage.get_repo(repo_id), caller(request))
    private = body.private if body.visibility is None else body.visibility == "private"
    if private is not None:
        storage.set_private(repo_id, private)
    return JSONResponse({})


@router.get("/api/whoami-v2")
def whoami(request: Request) -> JSONResponse:
    """Who the token belongs to."""
    user = require_user(caller(request))
    return JSONResponse({
        "type": "user", "id": user, "name": user, "fullname": user, "orgs": [],
        "auth": {"type": "access_token", "accessToken": {"displayName": "rvec-hub", "role": "write"}},
    })


@router.post("/api/validate-yaml", openapi_extra=json_body_doc({
    "type": "object", "properties": {"content": {"type": "string"}, "repoType": {"type": "string"}},
}))
async def validate_yaml(request: Request) -> JSONResponse:
    """Check README.md front matter before a commit, as the client does for every README upload."""
    body = await json_body(request)
    content = body.get("content", "") if isinstance(body, dict) else None
    if not isinstance(content, str):
        raise bad_request("expected a JSON body with 'content' (the README text)")
    try:
        parse_card_data(content)
    except CardError as err:
        return JSONResponse({"errors": [{"message": str(err)}], "warnings": []}, status_code=400)
    return JSONResponse({"errors": [], "warnings": []})


def _repo_info(request: Request, namespace: str, name: str, revision: str) -> JSONResponse:
    repo_id = f"{namespace}/{name}"
    repo, _ = readable_repo(request, repo_id)
    storage = hub(request).storage
    commit_id = storage.resolve(repo_id, revision)
    store = storage.objects(repo_id)
    record = store.read_commit(commit_id)
    card = card_for(store, repo_id, commit_id, record)
    blobs = truthy(request.query_params.get("blobs"))
    return JSONResponse(model_json(repo, commit_id, record, card, siblings=True, blobs=blobs))


@router.get("/api/models/{namespace}/{name}")
def model_info(namespace: str, name: str, request: Request) -> JSONResponse:
    """Model info at `main`: sha, siblings, tags, cardData, lastModified, private."""
    return _repo_info(request, namespace, name, DEFAULT_BRANCH)


@router.get("/api/models/{namespace}/{name}/revision/{revision:path}")
def model_info_at(namespace: str, name: str, revision: str, request: Request) -> JSONResponse:
    """Model info at a branch, tag or commit."""
    return _repo_info(request, namespace, name, revision)


@router.get("/api/models")
def list_models(request: Request) -> JSONResponse:
    """Visible models, filtered by tags (`filter`, all must match), `author` and `search` (substring of id)."""
    ctx = hub(request)
    user = caller(request)
    q = request.query_params
    filters = q.getlist("filter")
    author, search = q.get("author"), (q.get("search") or "").lower()
    expand = set(q.getlist("expand") + q.getlist("expand[]"))
    full = truthy(q.get("full"))
    with_card = full or truthy(q.get("cardData")) or "cardData" in expand
    siblings = full or "siblings" in expand

    rows: list[dict[str, Any]] = []
    for repo in ctx.storage.list_repos():
        if not can_read(repo, user) or (author and repo.namespace != author):
            continue
        if search and search not in repo.repo_id.lower():
            continue
        head = ctx.storage.read_ref(repo.repo_id, "heads", DEFAULT_BRANCH)
        if head is None:
            continue
        store = ctx.storage.objects(repo.repo_id)
        record = store.read_commit(head)
        card = card_for(store, repo.repo_id, head, record)
        data = model_json(repo, head, record, card, siblings=siblings, with_card=with_card)
        if all(f in data["tags"] for f in filters):
            rows.append(data)
    _sort(rows, q.get("sort"), q.get("direction"))

    cursor = parse_cursor(q.get("cursor"))
    size = min(parse_cursor(q.get("limit")) or ctx.page_size, ctx.page_size)
    params = {k: q.getlist(k) for k in q.keys() if k != "cursor"}
    headers = page_link(f"{base_url(request)}/api/models", params, cursor, len(rows), size)
    return JSONResponse(rows[cursor:cursor + size], headers=headers)


def _sort(rows: list[dict[str, Any]], sort: str | None, direction: str | None) -> None:
    key = {"lastModified": "lastModified", "last_modified": "lastModified",
           "createdAt": "createdAt", "created_at": "createdAt"}.get(sort or "", "id")
    descending = direction == "-1" or (direction is None and key != "id")
    rows.sort(key=lambda r: r[key], reverse=descending)
