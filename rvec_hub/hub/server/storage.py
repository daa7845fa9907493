"""Repositories and refs on disk under one root directory; survives restarts.

Layout::

    ROOT/repos/NAMESPACE/NAME/repo.json           RepoRecord
    ROOT/repos/NAMESPACE/NAME/refs/heads/BRANCH   commit id
    ROOT/repos/NAMESPACE/NAME/refs/tags/TAG       commit id
    ROOT/repos/NAMESPACE/NAME/objects/...         see objects.py
    ROOT/repos/NAMESPACE/NAME/.lock               held while refs change

Refs are rewritten with temp file + `os.replace` while holding an exclusive `flock` on the repo's
lock file, which serializes threads and processes alike.

A repo appears by renaming a fully written staging directory (`.NAME.creating-*`, never listed)
onto its name, so a crash mid-creation leaves no half repo and no duplicate listing; a directory
under a repo's name without `repo.json` (what an upload racing a deletion can leave) does not
exist as far as the server is concerned and is moved away when the name is created again.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from rvec_hub.hub.server.api_errors import (
    HubApiError,
    bad_request,
    conflict,
    repo_not_found,
    revision_not_found,
)
from rvec_hub.hub.server.integrity import BlobVerifier
from rvec_hub.hub.server.models import CommitRecord, RepoRecord, utc_now_iso
from rvec_hub.hub.server.objects import ObjectStore, atomic_write_bytes
from rvec_hub.hub.server.paths import is_commit_id, is_short_commit_id, validate_ref_name, validate_repo_part

RefKind = Literal["heads", "tags"]
DEFAULT_BRANCH = "main"
# Fault injection for crash-safety tests: the server SIGKILLs itself at the named point.
CRASH_AT_ENV = "RVEC_HUB_CRASH_AT"


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)

# Written as the first commit of every repo, as the Hub does, so that binary files stay LFS for git users.
GITATTRIBUTES = "".join(
    f"*.{ext} filter=lfs diff=lfs merge=lfs -text\n"
    for ext in ("safetensors", "bin", "pt", "pth", "ckpt", "gguf", "onnx", "h5", "msgpack", "npy", "npz",
                "pkl", "pickle", "zip", "gz", "tar", "zst", "tgz", "parquet", "arrow", "model", "ot", "tflite")
)


def split_repo_id(repo_id: str) -> tuple[str, str]:
    """Validate `namespace/name` and return its two parts (400 when malformed)."""
    parts = repo_id.split("/")
    if len(parts) != 2:
        raise bad_request(f"invalid repo id {repo_id!r}: expected 'namespace/name'")
    return validate_repo_part(parts[0], "namespace"), validate_repo_part(parts[1], "repo name")


class HubStorage:
    """All repositories under `root`; every method validates the names it is given."""

    def __init__(self, root: Path, *, verify_blobs: bool = True) -> None:
        self.root = Path(root).resolve()
        self._repos = self.root / "repos"
        self._repos.mkdir(parents=True, exist_ok=True)
        self._thread_lock = threading.Lock()
        self.verifier = BlobVerifier(self.root) if verify_blobs else None

    # -- repositories ------------------------------------------------------------------------------

    def _repo_dir(self, repo_id: str) -> Path:
        namespace, name = split_repo_id(repo_id)
        path = self._repos / namespace / name
        if self._repos not in path.resolve().parents:  # defence in depth: names were validated already
            raise bad_request(f"invalid repo id {repo_id!r}")
        return path

    def objects(self, repo_id: str) -> ObjectStore:
        """The object store of an existing repo."""
        self.get_repo(repo_id)
        return ObjectStore(self._repo_dir(repo_id), self.verifier)

    def get_repo(self, repo_id: str) -> RepoRecord:
        """The record of `repo_id`, or 404 RepoNotFound."""
        path = self._repo_dir(repo_id) / "repo.json"
        try:
            return RepoRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise repo_not_found(repo_id) from None

    def list_repos(self) -> Iterator[RepoRecord]:
        """Every repository, sorted by id (staging directories and nameless remains are not repos)."""
        for ns_dir in sorted(p for p in self._repos.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for repo_dir in sorted(p for p in ns_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                try:
                    record = RepoRecord.model_validate_json((repo_dir / "repo.json").read_bytes())
                except (FileNotFoundError, ValueError):
                    continue
                if record.repo_id == f"{ns_dir.name}/{repo_dir.name}":
                    yield record

    def create_repo(self, repo_id: str, *, private: bool, author: str) -> RepoRecord:
        """Create a repo with one initial commit on `main` holding `.gitattributes`; 409 if it exists."""
        namespace, name = split_repo_id(repo_id)
        repo_dir = self._repo_dir(repo_id)
        with self._root_lock():
            if (repo_dir / "repo.json").exists():
                raise conflict(f"You already created this model repo: {repo_id}")
            staging = repo_dir.parent / f".{name}.creating-{uuid.uuid4().hex[:8]}"
            staging.mkdir(parents=True)
            try:
                store = ObjectStore(staging)
                entry = store.put_bytes(GITATTRIBUTES.encode(), lfs=False)
                record = CommitRecord(
                    parent=None, tree={".gitattributes": entry}, title="initial commit",
                    author=author, date=utc_now_iso(),
                )
                commit_id = store.write_commit(record)
                atomic_write_bytes(staging / "refs" / "heads" / DEFAULT_BRANCH, commit_id.encode())
                repo = RepoRecord(namespace=namespace, name=name, private=private, created_at=record.date)
                atomic_write_bytes(staging / "repo.json", repo.model_dump_json().encode())
                _crash_point("create_repo:staged")
                self._move_into_place(staging, repo_dir)
                _crash_point("create_repo:done")
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return repo

    def _move_into_place(self, staging: Path, repo_dir: Path) -> None:
        """Rename `staging` onto `repo_dir`, moving away the remains of a deleted repo of that name."""
        for _ in range(5):
            try:
                os.replace(staging, repo_dir)
                return
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    raise
            self._to_trash(repo_dir)  # no repo.json there (checked under the lock): an upload's leftovers
        raise HubApiError(503, f"could not create {repo_dir.parent.name}/{repo_dir.name}: its name is busy; retry")

    def _to_trash(self, path: Path) -> None:
        trash = self.root / ".trash" / uuid.uuid4().hex
        trash.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def delete_repo(self, repo_id: str) -> None:
        """Remove a repo: renamed away first, so it disappears at once, then deleted."""
        self.get_repo(repo_id)
        repo_dir = self._repo_dir(repo_id)
        trash = self.root / ".trash" / uuid.uuid4().hex
        trash.parent.mkdir(parents=True, exist_ok=True)
        with self._root_lock():
            os.replace(repo_dir, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def set_private(self, repo_id: str, private: bool) -> RepoRecord:
        """Change a repo's visibility."""
        with self.ref_lock(repo_id):
            repo = self.get_repo(repo_id).model_copy(update={"private": private})
            atomic_write_bytes(self._repo_dir(repo_id) / "repo.json", repo.model_dump_json().encode())
        return repo

    # -- locks -------------------------------------------------------------------------------------

    @contextmanager
    def _flock(self, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    @contextmanager
    def _root_lock(self) -> Iterator[None]:
        with self._thread_lock, self._flock(self.root / ".lock"):
            yield

    @contextmanager
    def ref_lock(self, repo_id: str) -> Iterator[None]:
        """Hold the repo's ref lock: read-check-write of refs inside it cannot lose an update."""
        self.get_repo(repo_id)
        with self._flock(self._repo_dir(repo_id) / ".lock"):
            yield

    # -- refs --------------------------------------------------------------------------------------

    def _ref_path(self, repo_id: str, kind: RefKind, name: str) -> Path:
        return self._repo_dir(repo_id) / "refs" / kind / validate_ref_name(name)

    def refs(self, repo_id: str, kind: RefKind) -> dict[str, str]:
        """All branches (`heads`) or tags of a repo: name -> commit id."""
        folder = self._repo_dir(repo_id) / "refs" / kind
        if not folder.is_dir():
            return {}
        return {p.name: p.read_text().strip() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}

    def read_ref(self, repo_id: str, kind: RefKind, name: str) -> str | None:
        """Commit id a branch or tag points at, or None."""
        try:
            return self._ref_path(repo_id, kind, name).read_text().strip()
        except FileNotFoundError:
            return None

    def write_ref(self, repo_id: str, kind: RefKind, name: str, commit_id: str) -> None:
        """Point a branch or tag at a commit; call inside `ref_lock`."""
        if not self.objects(repo_id).has_commit(commit_id):
            raise revision_not_found(repo_id, commit_id)
        atomic_write_bytes(self._ref_path(repo_id, kind, name), commit_id.encode())

    def delete_ref(self, repo_id: str, kind: RefKind, name: str) -> None:
        """Remove a branch or tag; 404 RevisionNotFound when absent. Call inside `ref_lock`."""
        path = self._ref_path(repo_id, kind, name)
        if not path.is_file():
            raise revision_not_found(repo_id, name)
        path.unlink()

    def resolve(self, repo_id: str, revision: str) -> str:
        """Commit id for a branch, tag, `refs/heads/X`, `refs/tags/X` or full commit id."""
        self.get_repo(repo_id)
        for prefix, kind in (("refs/heads/", "heads"), ("refs/tags/", "tags")):
            if revision.startswith(prefix):
                name = revision[len(prefix):]
                found = self._safe_read_ref(repo_id, kind, name)  # type: ignore[arg-type]
                if found is None:
                    raise revision_not_found(repo_id, revision)
                return found
        for kind in ("heads", "tags"):
            found = self._safe_read_ref(repo_id, kind, revision)  # type: ignore[arg-type]
            if found is not None:
                return found
        if is_commit_id(revision) and self.objects(repo_id).has_commit(revision):
            return revision
        if is_short_commit_id(revision):
            found = self.objects(repo_id).commits_with_prefix(revision)
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise bad_request(f"short commit id {revision} is ambiguous in {repo_id} ({len(found)} commits "
                                  "start with it); give more hex digits")
        raise revision_not_found(repo_id, revision)

    def _safe_read_ref(self, repo_id: str, kind: RefKind, name: str) -> str | None:
        try:
            return self.read_ref(repo_id, kind, name)
        except HubApiError:  # an invalid ref name simply names no ref
            return None
