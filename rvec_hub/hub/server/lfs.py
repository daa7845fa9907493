"""The git-lfs batch API (upload only) with signed, short-lived upload URLs.

`huggingface_hub` PUTs the bytes to the `href` of the batch answer *without* its token (on the
real Hub that is a presigned S3 URL), so the href carries its own authorization: an HMAC over
repo, oid, size and expiry, keyed by a secret that lives only in the server process. The bytes are
hashed while they stream to a temporary file and adopted only when sha256 and size match.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from rvec_hub.hub.server.api_errors import HubApiError, bad_request, forbidden, repo_not_found
from rvec_hub.hub.server.auth import require_write
from rvec_hub.hub.server.context import HubContext, base_url, caller, hub
from rvec_hub.hub.server.guard import too_large
from rvec_hub.hub.server.models import LfsBatchRequest, LfsObject
from rvec_hub.hub.server.paths import is_sha256

router = APIRouter()

UPLOAD_TTL_S = 3600
LFS_MEDIA_TYPE = "application/vnd.git-lfs+json"


def _signature(secret: bytes, repo_id: str, oid: str, size: int, expires: int) -> str:
    message = f"{repo_id}\n{oid}\n{size}\n{expires}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


@router.post("/{namespace}/{name_git}/info/lfs/objects/batch")
def batch(namespace: str, name_git: str, body: LfsBatchRequest, request: Request) -> JSONResponse:
    """Answer an upload batch: objects already stored get no actions, others get upload + verify hrefs."""
    if not name_git.endswith(".git"):
        raise HubApiError(404, "Not found")
    repo_id = f"{namespace}/{name_git[:-len('.git')]}"
    ctx = hub(request)
    require_write(ctx.storage.get_repo(repo_id), caller(request))
    if body.operation != "upload":
        raise bad_request("only the LFS 'upload' operation is supported; download files through /resolve")
    if body.hash_algo != "sha256":
        raise bad_request("only sha256 LFS objects are supported")
    store = ctx.storage.objects(repo_id)
    expires = int(time.time()) + UPLOAD_TTL_S
    base = base_url(request)
    objects = []
    max_size = ctx.limits.max_lfs_bytes
    for obj in body.objects:
        if not is_sha256(obj.oid) or obj.size < 0:
            objects.append(_object_error(obj, 422, "oid must be 64 lowercase hex digits and size >= 0"))
        elif obj.size > max_size:
            objects.append(_object_error(
                obj, 413, f"object of {obj.size} bytes is larger than this server's limit of {max_size} bytes "
                "(`rvec hub serve --max-lfs-bytes`)"))
        elif store.has_blob(obj.oid, obj.size):
            objects.append({"oid": obj.oid, "size": obj.size})
        else:
            sig = _signature(ctx.upload_secret, repo_id, obj.oid, obj.size, expires)
            query = urlencode({"size": obj.size, "expires": expires, "sig": sig})
            objects.append({
                "oid": obj.oid,
                "size": obj.size,
                "authenticated": True,
                "actions": {
                    "upload": {"href": f"{base}/lfs-upload/{repo_id}/{obj.oid}?{query}", "header": {}},
                    "verify": {"href": f"{base}/lfs-verify/{repo_id}", "header": {}},
                },
            })
    return JSONResponse({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                        media_type=LFS_MEDIA_TYPE)


def _object_error(obj: LfsObject, code: int, message: str) -> dict:
    return {"oid": obj.oid, "size": obj.size, "error": {"code": code, "message": message}}


@router.put("/lfs-upload/{namespace}/{name}/{oid}", openapi_extra={"requestBody": {
    "required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload(namespace: str, name: str, oid: str, request: Request) -> JSONResponse:
    """Receive the bytes of one LFS object through a signed URL; refuse them unless sha256 and size match."""
    repo_id = f"{namespace}/{name}"
    ctx, q = hub(request), request.query_params
    try:
        size, expires = int(q["size"]), int(q["expires"])
        sig = q["sig"]
    except (KeyError, ValueError):
        _hide_unless_public(ctx, repo_id)
        raise forbidden("upload URL is not signed; ask the LFS batch endpoint for one") from None
    expected = _signature(ctx.upload_secret, repo_id, oid, size, expires)
    if not hmac.compare_digest(expected, sig) or expires < time.time():
        _hide_unless_public(ctx, repo_id)
        raise forbidden("upload URL signature is invalid or expired; ask the LFS batch endpoint again")
    if size > ctx.limits.max_lfs_bytes:
        raise too_large(ctx.limits.max_lfs_bytes)
    store = ctx.storage.objects(repo_id)
    tmp = store.new_upload()
    digest, received = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as f:
            async for chunk in request.stream():
                received += len(chunk)
                if received > size:
                    raise bad_request(f"upload of {oid} is larger than the announced {size} bytes")
                digest.update(chunk)
                f.write(chunk)
        if received != size or digest.hexdigest() != oid:
            raise bad_request(
                f"uploaded bytes do not match object {oid} ({received} bytes, sha256 {digest.hexdigest()}); "
                "retry the upload"
            )
        store.adopt_upload(tmp, oid)
    finally:
        tmp.unlink(missing_ok=True)
    return JSONResponse({}, headers={"ETag": f'"{oid}"'})


def _hide_unless_public(ctx: HubContext, repo_id: str) -> None:
    """404 RepoNotFound for a repo that is absent or private, so an unsigned upload learns nothing."""
    try:
        repo = ctx.storage.get_repo(repo_id)
    except HubApiError:
        raise repo_not_found(repo_id) from None
    if repo.private:
        raise repo_not_found(repo_id)


@router.post("/lfs-verify/{namespace}/{name}")
def verify(namespace: str, name: str, body: LfsObject, request: Request) -> JSONResponse:
    """Confirm that an object is stored with the expected size."""
    repo_id = f"{namespace}/{name}"
    ctx = hub(request)
    require_write(ctx.storage.get_repo(repo_id), caller(request))
    if not is_sha256(body.oid) or not ctx.storage.objects(repo_id).has_blob(body.oid, body.size):
        raise HubApiError(404, f"LFS object {body.oid} ({body.size} bytes) is not stored in {repo_id}")
    return JSONResponse({"oid": body.oid, "size": body.size}, media_type=LFS_MEDIA_TYPE)
