"""Refs, tags, branches and commit history."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from rvec_hub.hub.server.api_errors import bad_request, conflict, forbidden
from rvec_hub.hub.server.auth import require_write
from rvec_hub.hub.server.context import base_url, caller, hub, readable_repo
from rvec_hub.hub.server.listing import commit_json, page_link, parse_cursor
from rvec_hub.hub.server.models import CreateBranchRequest, CreateTagRequest
from rvec_hub.hub.server.paths import is_version_tag, validate_ref_name
from rvec_hub.hub.server.storage import DEFAULT_BRANCH

router = APIRouter()


def _ref_list(refs: dict[str, str], kind: str) -> list[dict[str, str]]:
    return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": c} for n, c in sorted(refs.items())]


@router.get("/api/models/{namespace}/{name}/refs")
def list_refs(namespace: str, name: str, request: Request) -> JSONResponse:
    """Branches and tags; `converts` and `pullRequests` are always empty here."""
    repo_id = f"{namespace}/{name}"
    readable_repo(request, repo_id)
    storage = hub(request).storage
    return JSONResponse({
        "branches": _ref_list(storage.refs(repo_id, "heads"), "heads"),
        "converts": [],
        "tags": _ref_list(storage.refs(repo_id, "tags"), "tags"),
        "pullRequests": [],
    })


@router.get("/api/models/{namespace}/{name}/commits/{revision:path}")
def list_commits(namespace: str, name: str, revision: str, request: Request) -> JSONResponse:
    """History from `revision` back to the first commit, newest first, paginated."""
    repo_id = f"{namespace}/{name}"
    readable_repo(request, repo_id)
    ctx = hub(request)
    head = ctx.storage.resolve(repo_id, revision)
    history = ctx.storage.objects(repo_id).history(head)
    cursor, size = parse_cursor(request.query_params.get("cursor")), ctx.page_size
    # The next page is pinned to the resolved commit so a concurrent push cannot shift it.
    url = f"{base_url(request)}/api/models/{repo_id}/commits/{head}"
    headers = page_link(url, {}, cursor, len(history), size)
    return JSONResponse([commit_json(c, r) for c, r in history[cursor:cursor + size]], headers=headers)


@router.post("/api/models/{namespace}/{name}/tag/{revision:path}")
def create_tag(namespace: str, name: str, revision: str, body: CreateTagRequest, request: Request) -> JSONResponse:
    """Tag the commit `revision` resolves to; 409 if the tag exists."""
    repo_id = f"{namespace}/{name}"
    storage = hub(request).storage
    require_write(storage.get_repo(repo_id), caller(request))
    tag = validate_ref_name(body.tag)
    return _create_ref(storage, repo_id, "tags", tag, revision,
                       f"tag {tag!r} already exists in {repo_id}; delete it first or pick another name")


@router.delete("/api/models/{namespace}/{name}/tag/{tag:path}")
def delete_tag(namespace: str, name: str, tag: str, request: Request) -> JSONResponse:
    """Remove a tag; 404 RevisionNotFound when it does not exist."""
    repo_id, tag = f"{namespace}/{name}", tag.removeprefix("refs/tags/")
    ctx = hub(request)
    storage = ctx.storage
    require_write(storage.get_repo(repo_id), caller(request))
    if is_version_tag(tag) and not ctx.allow_version_tag_rewrite and storage.read_ref(repo_id, "tags", tag):
        raise version_tag_immutable(repo_id, tag)
    with storage.ref_lock(repo_id):
        storage.delete_ref(repo_id, "tags", tag)
    return JSONResponse({})


def version_tag_immutable(repo_id: str, tag: str):
    """403: a published version tag cannot be deleted or moved (or its repo deleted)."""
    return forbidden(
        f"{tag} of {repo_id} is a published version and cannot be deleted or moved; publish a new version "
        "instead (the server's owner can allow it with `rvec hub serve --allow-version-tag-rewrite`)"
    )


@router.post("/api/models/{namespace}/{name}/branch/{branch:path}")
def create_branch(
    namespace: str, name: str, branch: str, body: CreateBranchRequest, request: Request
) -> JSONResponse:
    """Create a branch at `startingPoint` (default: head of main); 409 if it exists."""
    repo_id, starting_point = f"{namespace}/{name}", body.startingPoint
    storage = hub(request).storage
    require_write(storage.get_repo(repo_id), caller(request))
    validate_ref_name(branch)
    return _create_ref(storage, repo_id, "heads", branch, starting_point or DEFAULT_BRANCH,
                       f"branch {branch!r} already exists in {repo_id}")


@router.delete("/api/models/{namespace}/{name}/branch/{branch:path}")
def delete_branch(namespace: str, name: str, branch: str, request: Request) -> JSONResponse:
    """Remove a branch other than `main`."""
    repo_id = f"{namespace}/{name}"
    storage = hub(request).storage
    require_write(storage.get_repo(repo_id), caller(request))
    if branch == DEFAULT_BRANCH:
        raise bad_request("the main branch cannot be deleted; delete the repo instead")
    with storage.ref_lock(repo_id):
        storage.delete_ref(repo_id, "heads", branch)
    return JSONResponse({})


def _create_ref(storage, repo_id: str, kind: str, name: str, revision: str, exists_message: str) -> JSONResponse:
    """Point a new tag or branch at `revision`; 409 when the name is taken by either kind."""
    other, noun = ("heads", ("branch", "tag")) if kind == "tags" else ("tags", ("tag", "branch"))
    with storage.ref_lock(repo_id):
        commit_id = storage.resolve(repo_id, revision)
        if storage.read_ref(repo_id, kind, name) is not None:
            raise conflict(exists_message)
        if storage.read_ref(repo_id, other, name) is not None:
            raise conflict(f"{name!r} is already a {noun[0]} of {repo_id}; a {noun[1]} needs a name of its own")
        storage.write_ref(repo_id, kind, name, commit_id)
    return JSONResponse({"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": commit_id})
