"""File endpoints: preupload, NDJSON commit, tree listing, paths-info, resolve (GET/HEAD with Range)."""

from __future__ import annotations

import base64
import binascii
import json
import tempfile
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from rvec_hub.hub.server.api_errors import HubApiError, bad_request, entry_not_found, precondition_failed
from rvec_hub.hub.server.auth import require_write
from rvec_hub.hub.server.commit_ops import apply_commit, parse_commit_payload
from rvec_hub.hub.server.context import base_url, caller, hub, raw_segments, readable_repo, truthy
from rvec_hub.hub.server.listing import add_last_commits, file_json, folder_oid, page_link, parse_cursor, tree_items
from rvec_hub.hub.server.models import CommitRecord, utc_now_iso
from rvec_hub.hub.server.paths import is_commit_id, path_problem, validate_file_path

router = APIRouter()

LFS_THRESHOLD = 10 * 1024 * 1024
LFS_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".h5", ".msgpack", ".npy", ".npz",
    ".pkl", ".pickle", ".zip", ".gz", ".tar", ".zst", ".tgz", ".parquet", ".arrow", ".model", ".ot", ".tflite",
)
EXPAND_PAGE_SIZE = 50


def json_body_doc(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI `requestBody` for routes that read their JSON themselves (documents them; fuzzers use it)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def json_body(request: Request) -> Any:
    """The request body parsed as JSON; 400 when it is not JSON."""
    raw = await request.body()
    try:
        return json.loads(raw or b"null")
    except (ValueError, RecursionError):
        raise bad_request("request body is not valid JSON") from None


def upload_mode(path: str, size: int, sample: bytes) -> str:
    """`lfs` for weights, archives, binary or large files; `regular` for small text files."""
    if size >= LFS_THRESHOLD or path.lower().endswith(LFS_SUFFIXES) or b"\x00" in sample:
        return "lfs"
    return "regular"


def _branch_of(repo_id: str, revision: str) -> str:
    """Commits go to branches; a tag or commit id is refused."""
    branch = revision.removeprefix("refs/heads/")
    if is_commit_id(branch) or "/" in branch:
        raise bad_request(f"cannot commit to {revision!r}: commits go to a branch such as 'main'")
    return branch


@router.post("/api/models/{namespace}/{name}/preupload/{revision:path}", openapi_extra=json_body_doc({
    "type": "object", "required": ["files"],
    "properties": {"files": {"type": "array", "items": {
        "type": "object", "required": ["path"],
        "properties": {"path": {"type": "string"}, "sample": {"type": "string"}, "size": {"type": "integer"}},
    }}},
}))
async def preupload(namespace: str, name: str, revision: str, request: Request) -> JSONResponse:
    """Tell the client, file by file, whether to send it inline (`regular`) or through LFS."""
    repo_id = f"{namespace}/{name}"
    if truthy(request.query_params.get("create_pr")):
        raise bad_request("pull requests are not supported by this server; commit to a branch")
    files = _preupload_files(await json_body(request))
    return await run_in_threadpool(_preupload, request, repo_id, revision, files)


def _preupload_files(body: Any) -> list[tuple[str, int, bytes]]:
    """(path, size, sample) of each file a preupload body lists; 400 naming what is malformed."""
    usage = "preupload expects a JSON body {'files': [{'path': str, 'sample': base64 str, 'size': int}]}"
    files = body.get("files") if isinstance(body, dict) else None
    if not isinstance(files, list):
        raise bad_request(usage)
    out, problems = [], []
    for index, item in enumerate(files):
        path = item.get("path") if isinstance(item, dict) else None
        size = item.get("size", 0) if isinstance(item, dict) else None
        sample = item.get("sample") or "" if isinstance(item, dict) else None
        if not isinstance(path, str) or (problem := path_problem(path)) is not None:
            problems.append(f"files[{index}]: {path!r}: {problem if isinstance(path, str) else 'path must be a string'}")
        elif isinstance(size, bool) or not isinstance(size, int) or size < 0:
            problems.append(f"files[{index}]: size must be a non-negative integer")
        elif not isinstance(sample, str):
            problems.append(f"files[{index}]: sample must be a base64 string")
        else:
            try:
                out.append((path, size, base64.b64decode(sample, validate=True)))
            except (binascii.Error, ValueError):
                problems.append(f"files[{index}]: sample is not base64")
    if problems:
        raise bad_request("invalid preupload body: " + "; ".join(problems[:10]))
    return out


def _preupload(request: Request, repo_id: str, revision: str, files: list[tuple[str, int, bytes]]) -> JSONResponse:
    storage = hub(request).storage
    require_write(storage.get_repo(repo_id), caller(request))
    head = storage.resolve(repo_id, _branch_of(repo_id, revision))
    store = storage.objects(repo_id)
    tree = store.read_commit(head).tree
    out = []
    for path, size, sample in files:
        existing = tree.get(path)
        # A blob lost to corruption is reported absent, so the client sends the file again.
        intact = existing is not None and store.has_blob(existing.sha256, existing.size)
        out.append({
            "path": path,
            "uploadMode": upload_mode(path, size, sample),
            "shouldIgnore": False,
            "oid": existing.etag if intact else None,
        })
    return JSONResponse({"files": out, "commitOid": head})


_COMMIT_LINE = {
    "type": "object", "required": ["key", "value"],
    "properties": {
        "key": {"enum": ["header", "file", "lfsFile", "deletedFile", "deletedFolder"]},
        "value": {"type": "object", "properties": {
            **{k: {"type": "string"} for k in ("summary", "description", "parentCommit", "path", "content",
                                               "encoding", "oid", "algo")},
            "size": {"type": "integer"},
        }},
    },
}


@router.post("/api/models/{namespace}/{name}/commit/{revision:path}", openapi_extra={"requestBody": {
    "required": True, "content": {"application/x-ndjson": {"schema": {"type": "array", "items": _COMMIT_LINE}}}}})
async def commit(namespace: str, name: str, revision: str, request: Request) -> JSONResponse:
    """Apply an NDJSON commit to a branch; 412 when `parentCommit` is not the branch head."""
    repo_id = f"{namespace}/{name}"
    if truthy(request.query_params.get("create_pr")):
        raise bad_request("pull requests are not supported by this server; commit to a branch")
    storage = hub(request).storage
    user = require_write(storage.get_repo(repo_id), caller(request))  # before reading any body
    branch = _branch_of(repo_id, revision)
    with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool:
        async for chunk in request.stream():
            spool.write(chunk)
        spool.seek(0)
        return await run_in_threadpool(_commit, request, repo_id, branch, user, spool)


def _lines(spool: IO[bytes]) -> Iterator[bytes]:
    for line in spool:
        yield line


def _commit(request: Request, repo_id: str, branch: str, user: str, spool: IO[bytes]) -> JSONResponse:
    storage = hub(request).storage
    storage.resolve(repo_id, branch)  # 404 RevisionNotFound before doing any work
    store = storage.objects(repo_id)
    parsed = parse_commit_payload(_lines(spool), store, repo_id)
    with storage.ref_lock(repo_id):
        head = storage.read_ref(repo_id, "heads", branch)
        if head is None:
            raise HubApiError(404, f"Invalid rev id: {branch}", error_code="RevisionNotFound")
        if parsed.parent_commit is not None and parsed.parent_commit != head:
            raise precondition_failed(
                f"A commit has happened since {parsed.parent_commit} (head of {branch} is now {head}); "
                "refresh and commit again"
            )
        tree = apply_commit(store.read_commit(head).tree, parsed, repo_id, head)
        record = CommitRecord(
            parent=head, tree=tree, title=parsed.summary, message=parsed.description,
            author=user, date=utc_now_iso(),
        )
        commit_id = store.write_commit(record)
        storage.write_ref(repo_id, "heads", branch, commit_id)
    return JSONResponse({
        "success": True,
        "commitOid": commit_id,
        "commitUrl": f"{base_url(request)}/{repo_id}/commit/{commit_id}",
        "commitMessage": parsed.summary,
        "hookOutput": "",
        "pullRequestUrl": None,
    })


@router.get("/api/models/{namespace}/{name}/tree/{rest:path}")
def list_tree(namespace: str, name: str, rest: str, request: Request) -> JSONResponse:
    """Files and folders under a path at a revision; `recursive`, `expand`, Link pagination."""
    repo_id = f"{namespace}/{name}"
    readable_repo(request, repo_id)
    segments = [s for s in raw_segments(request, 5) if s != ""]
    if not segments:
        raise bad_request("missing revision in tree URL")
    revision, path = segments[0], "/".join(segments[1:])
    if path:
        validate_file_path(path)
    ctx, q = hub(request), request.query_params
    commit_id = ctx.storage.resolve(repo_id, revision)
    store = ctx.storage.objects(repo_id)
    record = store.read_commit(commit_id)
    items = tree_items(repo_id, commit_id, record, path, truthy(q.get("recursive")))
    expand = truthy(q.get("expand"))
    cursor = parse_cursor(q.get("cursor"))
    size = min(ctx.page_size, EXPAND_PAGE_SIZE) if expand else ctx.page_size
    page = items[cursor:cursor + size]
    if expand:
        add_last_commits(store, commit_id, page)
    # Pin the next pages to the commit just listed so a concurrent push cannot shift them.
    url = f"{base_url(request)}/api/models/{repo_id}/tree/{commit_id}" + (f"/{quote(path, safe='')}" if path else "")
    params = {"recursive": q.get("recursive"), "expand": q.get("expand")}
    return JSONResponse(page, headers=page_link(url, params, cursor, len(items), size))


@router.post("/api/models/{namespace}/{name}/paths-info/{revision:path}", openapi_extra=json_body_doc({
    "type": "object", "properties": {"paths": {"type": "array", "items": {"type": "string"}}, "expand": {"type": "boolean"}},
}))
async def paths_info(namespace: str, name: str, revision: str, request: Request) -> JSONResponse:
    """Info for the listed paths that exist (files and folders); absent paths are skipped."""
    if request.headers.get("content-type", "").startswith("application/json"):
        body = await json_body(request)
        paths = body.get("paths", []) if isinstance(body, dict) else None
        expand = bool(body.get("expand")) if isinstance(body, dict) else False
    else:
        form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
        paths, expand = form.get("paths", []), truthy((form.get("expand") or [None])[0])
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise bad_request("paths-info expects 'paths' as a list of strings")
    return await run_in_threadpool(_paths_info, request, f"{namespace}/{name}", revision, paths, expand)


def _paths_info(request: Request, repo_id: str, revision: str, paths: list[str], expand: bool) -> JSONResponse:
    readable_repo(request, repo_id)
    storage = hub(request).storage
    commit_id = storage.resolve(repo_id, revision)
    store = storage.objects(repo_id)
    tree = store.read_commit(commit_id).tree
    items: list[dict[str, Any]] = []
    for path in dict.fromkeys(p.strip("/") for p in paths):
        if path in tree:
            items.append(file_json(path, tree[path]))
        elif path and any(p.startswith(path + "/") for p in tree):
            items.append({"type": "directory", "oid": folder_oid(tree, path), "size": 0, "path": path})
    if expand:
        add_last_commits(store, commit_id, items)
    return JSONResponse(items)


@router.api_route("/{namespace}/{name}/resolve/{rest:path}", methods=["GET", "HEAD"])
def resolve(namespace: str, name: str, rest: str, request: Request) -> FileResponse:
    """Serve a file's bytes (Range supported) with X-Repo-Commit, ETag and, for LFS files, X-Linked-*."""
    repo_id = f"{namespace}/{name}"
    readable_repo(request, repo_id)
    segments = raw_segments(request, 3)
    if len(segments) < 2 or not segments[0]:
        raise bad_request("resolve URLs look like /{namespace}/{name}/resolve/{revision}/{path}")
    revision, path = segments[0], "/".join(segments[1:])
    storage = hub(request).storage
    commit_id = storage.resolve(repo_id, revision)
    store = storage.objects(repo_id)
    entry = store.read_commit(commit_id).tree.get(path)
    if entry is None:
        raise entry_not_found(repo_id, path, commit_id)
    if not store.has_blob(entry.sha256, entry.size):  # hashed on first read and whenever the file changed
        raise HubApiError(
            410, f"the stored content of {path} in {repo_id} failed verification and was quarantined; "
            "push the file again (the server's owner can run `rvec hub fsck`)",
        )
    headers = {"ETag": f'"{entry.etag}"', "X-Repo-Commit": commit_id, "Cache-Control": "private, max-age=0"}
    if entry.lfs:
        headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
    return FileResponse(
        store.blob_path(entry.sha256), headers=headers, media_type="application/octet-stream",
        filename=path.rsplit("/", 1)[-1],
    )
