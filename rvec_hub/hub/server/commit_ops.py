"""The NDJSON commit payload of `HfApi.create_commit`: parse it, then apply it to a tree.

Each line is `{"key": ..., "value": ...}` with key `header` (summary, description, parentCommit),
`file` (base64 content of a regular file), `lfsFile` (sha256 of an already uploaded blob),
`deletedFile` or `deletedFolder`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from rvec_hub.hub.server.api_errors import HubApiError, bad_request, entry_not_found
from rvec_hub.hub.server.models import TreeEntry
from rvec_hub.hub.server.objects import ObjectStore
from rvec_hub.hub.server.paths import is_commit_id, is_sha256, validate_file_path


@dataclass(frozen=True)
class Deletion:
    """A file (`folder=False`) or every file under a folder to remove."""

    path: str
    folder: bool


@dataclass(frozen=True)
class ParsedCommit:
    """What one commit request asks for, with regular files already stored as blobs."""

    summary: str
    description: str
    parent_commit: str | None
    additions: dict[str, TreeEntry] = field(default_factory=dict)
    deletions: tuple[Deletion, ...] = ()


def parse_commit_payload(lines: Iterable[bytes], store: ObjectStore, repo_id: str) -> ParsedCommit:
    """Read the NDJSON lines, validate every path, store regular files; collect all path problems first."""
    header: dict | None = None
    additions: dict[str, TreeEntry] = {}
    deletions: list[Deletion] = []
    problems: list[str] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
            key, value = item["key"], item["value"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise bad_request(f"commit payload line {number} is not a JSON object with 'key' and 'value'") from None
        if key == "header":
            if not isinstance(value, dict):
                raise bad_request(f"commit payload line {number}: the header value must be a JSON object")
            header = value
            continue
        path = value.get("path") if isinstance(value, dict) else None
        try:
            if key == "deletedFolder" and isinstance(path, str):
                path = path.rstrip("/")
            validate_file_path(path)  # type: ignore[arg-type]
        except HubApiError as err:
            problems.append(str(err))
            continue
        if key == "file":
            additions[path] = _regular_file(value, store, path)
        elif key == "lfsFile":
            additions[path] = _lfs_file(value, store, path, repo_id)
        elif key in ("deletedFile", "deletedFolder"):
            deletions.append(Deletion(path=path, folder=key == "deletedFolder"))
        else:
            raise bad_request(f"commit payload line {number}: unknown key {key!r}")
    if problems:
        raise bad_request("; ".join(problems))
    if header is None:
        raise bad_request("commit payload has no header line")
    parent = header.get("parentCommit")
    if parent is not None and not (isinstance(parent, str) and is_commit_id(parent)):
        raise bad_request(f"parentCommit {parent!r} is not a 40-hex commit id")
    summary = str(header.get("summary") or "").strip()
    if not summary:
        raise bad_request("commit summary is empty; pass a commit message")
    return ParsedCommit(
        summary=summary, description=str(header.get("description") or ""), parent_commit=parent,
        additions=additions, deletions=tuple(deletions),
    )


def _regular_file(value: dict, store: ObjectStore, path: str) -> TreeEntry:
    if value.get("encoding", "base64") != "base64":
        raise bad_request(f"{path}: only base64 encoding is supported for regular files")
    try:
        data = base64.b64decode(value.get("content", ""), validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise bad_request(f"{path}: content is not valid base64") from None
    return store.put_bytes(data, lfs=False)


def _lfs_file(value: dict, store: ObjectStore, path: str, repo_id: str) -> TreeEntry:
    oid, algo = value.get("oid"), value.get("algo", "sha256")
    if algo != "sha256" or not isinstance(oid, str) or not is_sha256(oid):
        raise bad_request(f"{path}: lfsFile needs algo 'sha256' and a 64-hex oid")
    if not store.has_blob(oid):
        raise HubApiError(422, f"{path}: LFS object {oid} was not uploaded to {repo_id}; upload it first")
    size = store.blob_path(oid).stat().st_size
    if value.get("size") is not None and (isinstance(value["size"], bool) or value["size"] != size):
        raise HubApiError(422, f"{path}: LFS object {oid} has {size} bytes, the commit says {value['size']}")
    return store.entry_for(oid, size, lfs=True)


def apply_commit(
    tree: dict[str, TreeEntry], parsed: ParsedCommit, repo_id: str, head: str
) -> dict[str, TreeEntry]:
    """New tree = `tree` minus deletions plus additions; 404 EntryNotFound for a missing deleted path."""
    new = dict(tree)
    for deletion in parsed.deletions:
        if deletion.folder:
            prefix = deletion.path + "/"
            doomed = [p for p in new if p.startswith(prefix)]
            if not doomed:
                raise entry_not_found(repo_id, deletion.path, head)
            for p in doomed:
                del new[p]
        elif new.pop(deletion.path, None) is None:
            exc = entry_not_found(repo_id, deletion.path, head)
            raise HubApiError(404, f"A file with this name doesn't exist: {deletion.path}",
                              error_code=exc.error_code, headers=exc.headers)
    new.update(parsed.additions)
    _check_file_folder_clashes(new)
    return new


def _check_file_folder_clashes(tree: dict[str, TreeEntry]) -> None:
    """Refuse a tree where one path is both a file and a folder (`a` and `a/b`)."""
    folders = {"/".join(p.split("/")[:i]) for p in tree for i in range(1, p.count("/") + 1)}
    clashes = sorted(folders & tree.keys())
    if clashes:
        raise bad_request(f"paths used both as file and folder: {', '.join(clashes[:5])}")
