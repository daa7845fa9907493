"""Where a Hub repository lives in the standard Hugging Face cache, and what the cache alone can tell.

The layout is `huggingface_hub`'s own: `$HF_HUB_CACHE/models--OWNER--NAME/` holds `blobs/` (file bytes,
named by their ETag: the sha256 of LFS files, the git blob id of others), `snapshots/<commit>/` (one
symlink per file, into `blobs/`) and `refs/<name>` (a file holding the commit a branch or tag named).
Files reach it through `hf_hub_download`; rvec itself writes only `refs/v1.0.0`-style files, the way
`huggingface_hub` writes `refs/main`, so that `REPO@1.0.0` and `REPO@latest` resolve without a network.
`hf cache ls`, `hf cache verify` and `scan_cache_dir()` see vectors like any other model repository.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from huggingface_hub import constants

_COMMIT_DIR = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
# What a ref name may look like before it is used as a path under `refs/`.
_REF_NAME = re.compile(r"^[\w.+-]+(/[\w.+-]+)*$")


def hub_cache() -> Path:
    """The Hub cache `huggingface_hub` uses in this process (`HF_HUB_CACHE`, else `$HF_HOME/hub`)."""
    return Path(constants.HF_HUB_CACHE).expanduser()


def storage_folder(repo_id: str) -> Path:
    """`<cache>/models--OWNER--NAME`: everything cached for one model repository."""
    return hub_cache() / ("models--" + repo_id.replace("/", "--"))


def snapshot_folder(repo_id: str, commit: str) -> Path:
    """`<cache>/models--OWNER--NAME/snapshots/<commit>`: the files of one commit, as symlinks into blobs."""
    return storage_folder(repo_id) / "snapshots" / commit


def safe_ref_name(name: str) -> bool:
    """True when `name` can name a file under `refs/` without leaving it."""
    return bool(_REF_NAME.match(name)) and ".." not in name.split("/")


def write_ref(repo_id: str, name: str, commit: str) -> None:
    """Record that `name` (a tag like `v1.0.0`, or a branch) points at `commit`, atomically."""
    if not safe_ref_name(name) or not _COMMIT_DIR.match(commit):
        return
    path = storage_folder(repo_id) / "refs" / name
    if path.is_file() and path.read_text().strip() == commit:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(commit)
    os.replace(tmp, path)


def read_ref(repo_id: str, name: str) -> str | None:
    """The commit a cached ref names, or None."""
    if not safe_ref_name(name):
        return None
    path = storage_folder(repo_id) / "refs" / name
    commit = path.read_text().strip() if path.is_file() else ""
    return commit if _COMMIT_DIR.match(commit) else None


def cached_refs(repo_id: str) -> dict[str, str]:
    """Every ref the cache records for a repository: {name: commit}."""
    refs = storage_folder(repo_id) / "refs"
    found = {}
    for path in sorted(refs.rglob("*")) if refs.is_dir() else []:
        if path.is_file() and not path.name.startswith("."):
            commit = path.read_text().strip()
            if _COMMIT_DIR.match(commit):
                found[path.relative_to(refs).as_posix()] = commit
    return found


def cached_commits(repo_id: str) -> list[str]:
    """Commits that have a snapshot folder in the cache."""
    snapshots = storage_folder(repo_id) / "snapshots"
    return sorted(p.name for p in snapshots.iterdir() if _COMMIT_DIR.match(p.name)) if snapshots.is_dir() else []


def forget_file(repo_id: str, commit: str, relative: str) -> None:
    """Remove one file of a cached snapshot: its blob, and every snapshot link that points at that blob.

    Used for bytes that failed verification, so that no snapshot keeps looking complete with them.
    """
    storage = storage_folder(repo_id)
    pointer = snapshot_folder(repo_id, commit).joinpath(*relative.split("/"))
    blobs = (storage / "blobs").resolve()
    blob = pointer.resolve() if pointer.is_symlink() else None
    pointer.unlink(missing_ok=True)
    if blob is None or blob.parent != blobs:
        return
    blob.unlink(missing_ok=True)
    for link in (storage / "snapshots").rglob("*"):
        if link.is_symlink() and link.resolve() == blob:
            link.unlink(missing_ok=True)
