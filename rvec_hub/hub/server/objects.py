"""Content-addressed objects of one repository: blobs named by sha256, commits named by id.

Layout under the repo directory::

    objects/blobs/ab/ab12...   raw file content, name = sha256 of the content
    objects/commits/cd/cd34...json   canonical JSON of a CommitRecord, name = sha1 of that JSON
    tmp/                        uploads in progress (same filesystem, so adoption is a rename)
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from rvec_hub.hub.server.api_errors import HubApiError, repo_not_found
from rvec_hub.hub.server.integrity import BlobVerifier
from rvec_hub.hub.server.models import CommitRecord, TreeEntry
from rvec_hub.hub.server.paths import git_blob_sha1, is_commit_id, is_sha256, lfs_pointer


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a fsynced temporary sibling and `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class ObjectStore:
    """Blobs and commits of one repository; never takes a path from a request.

    Args:
        repo_dir: the repository's directory.
        verifier: checks blobs against their sha256 before they are served or vouched for (None: trust disk).
    """

    def __init__(self, repo_dir: Path, verifier: BlobVerifier | None = None) -> None:
        self._dir = repo_dir
        self._verifier = verifier
        self._blobs = repo_dir / "objects" / "blobs"
        self._commits = repo_dir / "objects" / "commits"
        self._tmp = repo_dir / "tmp"

    @property
    def repo_dir(self) -> Path:
        """The repository directory this store belongs to."""
        return self._dir

    def _make_dirs(self, folder: Path) -> None:
        # Never recreate the directory of a repo deleted meanwhile: its name must stay free.
        if not self._dir.is_dir():
            raise repo_not_found(f"{self._dir.parent.name}/{self._dir.name}")
        folder.mkdir(parents=True, exist_ok=True)

    # -- blobs -------------------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        """Where the blob with this sha256 lives (it may not exist)."""
        if not is_sha256(sha256):
            raise HubApiError(400, f"{sha256!r} is not a sha256 (64 lowercase hex digits)")
        return self._blobs / sha256[:2] / sha256

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        """Whether the blob is stored intact (and, when `size` is given, has that size).

        A blob that no longer hashes to its name is quarantined and counts as absent, so clients are
        asked to upload it again instead of being told it is there.
        """
        path = self.blob_path(sha256)
        try:
            if size is not None and path.stat().st_size != size:
                return False
        except FileNotFoundError:
            return False
        if self._verifier is None:
            return path.is_file()
        return self._verifier.check(path, sha256)

    def put_bytes(self, data: bytes, *, lfs: bool) -> TreeEntry:
        """Store `data` as a blob and return the tree entry that points at it."""
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha256)
        if not self.has_blob(sha256, len(data)):
            self._make_dirs(path.parent)
            atomic_write_bytes(path, data)
        return self.entry_for(sha256, len(data), lfs=lfs, data=None if lfs else data)

    def entry_for(self, sha256: str, size: int, *, lfs: bool, data: bytes | None = None) -> TreeEntry:
        """Tree entry for a stored blob; the git oid is the blob's sha1, or the LFS pointer's for LFS files."""
        if lfs:
            git_oid = git_blob_sha1(lfs_pointer(sha256, size))
        else:
            if data is None:
                data = self.blob_path(sha256).read_bytes()
            git_oid = git_blob_sha1(data)
        return TreeEntry(sha256=sha256, size=size, lfs=lfs, git_oid=git_oid)

    def new_upload(self) -> Path:
        """A fresh temporary file path for a streamed upload."""
        self._make_dirs(self._tmp)
        return self._tmp / f"upload-{uuid.uuid4().hex}"

    def adopt_upload(self, tmp: Path, sha256: str) -> None:
        """Move a finished, verified upload into the blob store (a no-op if an intact copy is there)."""
        path = self.blob_path(sha256)
        if self.has_blob(sha256):
            tmp.unlink(missing_ok=True)
            return
        self._make_dirs(path.parent)
        try:
            os.replace(tmp, path)
        except FileNotFoundError:  # the repo was deleted while the bytes streamed in
            raise repo_not_found(f"{self._dir.parent.name}/{self._dir.name}") from None
        if self._verifier is not None:
            self._verifier.trust(path)  # hashed while it streamed in

    # -- commits -----------------------------------------------------------------------------------

    def _commit_path(self, commit_id: str) -> Path:
        if not is_commit_id(commit_id):
            raise HubApiError(400, f"{commit_id!r} is not a commit id (40 lowercase hex digits)")
        return self._commits / commit_id[:2] / f"{commit_id}.json"

    def commits_with_prefix(self, prefix: str) -> list[str]:
        """Ids of the stored commits starting with `prefix` (at least 2 lowercase hex digits)."""
        folder = self._commits / prefix[:2]
        if not folder.is_dir():
            return []
        return sorted(p.name.removesuffix(".json") for p in folder.iterdir()
                      if p.name.startswith(prefix) and is_commit_id(p.name.removesuffix(".json")))

    def has_commit(self, commit_id: str) -> bool:
        """Whether this repo holds a commit with this id."""
        return is_commit_id(commit_id) and self._commit_path(commit_id).is_file()

    def read_commit(self, commit_id: str) -> CommitRecord:
        """Load a commit; a missing one is a storage inconsistency, reported as a 500."""
        path = self._commit_path(commit_id)
        try:
            return CommitRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise HubApiError(500, f"commit {commit_id} is referenced but missing from the store") from None

    def write_commit(self, record: CommitRecord) -> str:
        """Store a commit and return its id; every blob it adds must already be stored.

        Files carried over from the parent are not rechecked: one whose blob was quarantined must not
        block the commit that uploads it again.
        """
        inherited = self.read_commit(record.parent).tree if record.parent else {}
        missing = [p for p, e in record.tree.items() if inherited.get(p) != e and not self.has_blob(e.sha256, e.size)]
        if missing:
            raise HubApiError(500, f"commit refers to blobs that are not stored: {', '.join(missing[:5])}")
        data = record.canonical_bytes()
        commit_id = hashlib.sha1(data).hexdigest()
        path = self._commit_path(commit_id)
        if not path.is_file():
            self._make_dirs(path.parent)
            atomic_write_bytes(path, data)
        return commit_id

    def history(self, commit_id: str, limit: int | None = None) -> list[tuple[str, CommitRecord]]:
        """Commits from `commit_id` back to the root, newest first."""
        out: list[tuple[str, CommitRecord]] = []
        current: str | None = commit_id
        while current is not None and (limit is None or len(out) < limit):
            record = self.read_commit(current)
            out.append((current, record))
            current = record.parent
        return out
