"""Validation of every name a request carries: repo ids, ref names, paths inside a repo.

Nothing from a request ever becomes a filesystem path unless it passed one of these checks;
paths inside a repo never touch the filesystem at all (trees are JSON, blobs are named by hash).
"""

from __future__ import annotations

import hashlib
import re

from rvec_hub.hub.server.api_errors import bad_request

_REPO_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_REF_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_COMMIT_ID = re.compile(r"^[0-9a-f]{40}$")
_SHORT_COMMIT_ID = re.compile(r"^[0-9a-f]{7,39}$")
# Published versions: `v1`, `v1.2`, `v1.2.3`, `v1.2.3-rc.1` ... (rvec tags releases `vX.Y.Z`).
_VERSION_TAG = re.compile(r"^v\d+(\.\d+)*([-+][0-9A-Za-z.+-]*)?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# Namespaces that would shadow server routes.
RESERVED_NAMESPACES = frozenset({"api", "lfs-upload", "lfs-verify", "datasets", "spaces", "kernels"})
MAX_PATH_LENGTH = 1024


def validate_repo_part(part: str, what: str) -> str:
    """Return `part` if it is a valid namespace or repo name, else raise a 400."""
    if not _REPO_PART.match(part) or ".." in part or "--" in part or part.endswith(".git"):
        raise bad_request(
            f"invalid {what} {part!r}: use letters, digits, '-', '_' and '.', "
            "start and end with a letter or digit, no '..' or '--'"
        )
    if what == "namespace" and part in RESERVED_NAMESPACES:
        raise bad_request(f"namespace {part!r} is reserved; choose another one")
    return part


def validate_ref_name(name: str) -> str:
    """Return `name` if it can name a branch or a tag, else raise a 400."""
    if not _REF_NAME.match(name) or ".." in name or name.endswith((".lock", ".")) or is_commit_id(name):
        raise bad_request(
            f"invalid branch or tag name {name!r}: use letters, digits, '-', '_' and '.', "
            "no '..', and not a 40-hex commit id"
        )
    return name


def is_commit_id(value: str) -> bool:
    """Whether `value` is a full 40-hex commit id."""
    return bool(_COMMIT_ID.match(value))


def is_short_commit_id(value: str) -> bool:
    """Whether `value` can abbreviate a commit id (7 to 39 lowercase hex digits)."""
    return bool(_SHORT_COMMIT_ID.match(value))


def is_version_tag(name: str) -> bool:
    """Whether a tag names a published version (`v` then a version number), which is immutable."""
    return bool(_VERSION_TAG.match(name))


def is_sha256(value: str) -> bool:
    """Whether `value` is a lowercase 64-hex sha256."""
    return bool(_SHA256.match(value))


def path_problem(path: str) -> str | None:
    """Say what is wrong with a path inside a repo, or return None when it is acceptable."""
    if not isinstance(path, str) or path == "":
        return "empty path"
    if len(path) > MAX_PATH_LENGTH:
        return f"path longer than {MAX_PATH_LENGTH} characters"
    if "\\" in path:
        return "backslash in path"
    if "\x00" in path or any(ord(c) < 0x20 for c in path):
        return "control character in path"
    if path.startswith("/"):
        return "absolute path"
    if re.match(r"^[A-Za-z]:", path):
        return "drive-letter path"
    segments = path.split("/")
    if any(s == "" for s in segments):
        return "empty path segment"
    if any(s in (".", "..") for s in segments):
        return "'.' or '..' segment"
    if segments[0] == ".git":
        return "'.git' folder"
    return None


def validate_file_path(path: str) -> str:
    """Return `path` if it may name a file inside a repo, else raise a 400 naming the problem."""
    problem = path_problem(path)
    if problem is not None:
        raise bad_request(f"invalid path {path!r} in repo: {problem}; use a relative path with '/' separators")
    return path


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob holding `data`."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that git would store in place of an LFS blob."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
