"""Stored objects are checked against their names: a blob is named by its sha256, a commit by its sha1.

`BlobVerifier` hashes a blob before it is first served (or vouched for to a client) and again
whenever its file changes on disk (device, inode, size, mtime or ctime differ from the last check;
ctime cannot be set back from user space). A blob whose bytes no longer hash to its name is moved
to `ROOT/quarantine/` and is never served under its old ETag: the server answers 410 and asks for
the file to be pushed again. `fsck` rehashes everything, including blobs whose stat did not change
(bit rot), and quarantines what fails.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from rvec_hub.hub.server.paths import is_commit_id, is_sha256

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
STALE_TMP_S = 3600  # unfinished uploads older than this are leftovers


def sha256_of(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _signature(path: Path) -> tuple[int, ...] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def quarantine(root: Path, path: Path, reason: str) -> Path | None:
    """Move a corrupted object out of the store into `root/quarantine/`; None if it was already gone."""
    target_dir = Path(root) / "quarantine"
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}-{path.name}"
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return None
    logger.error("quarantined %s (%s) to %s", path, reason, target)
    return target


class BlobVerifier:
    """Remembers which blobs hashed correctly, keyed by their stat signature (bounded LRU).

    Args:
        root: the server's storage root (quarantine goes under it).
        max_entries: verified blobs remembered at most.
    """

    def __init__(self, root: Path, max_entries: int = 100_000) -> None:
        self.root = Path(root)
        self.max_entries = max_entries
        self._verified: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def trust(self, path: Path) -> None:
        """Record a blob the server itself just hashed while writing it."""
        signature = _signature(path)
        if signature is not None:
            with self._lock:
                self._verified[str(path)] = signature
                self._verified.move_to_end(str(path))

    def check(self, path: Path, sha256: str) -> bool:
        """Whether the blob at `path` exists and hashes to `sha256`; a mismatch is quarantined."""
        before = _signature(path)
        if before is None:
            return False
        key = str(path)
        with self._lock:
            if self._verified.get(key) == before:
                self._verified.move_to_end(key)
                return True
        try:
            actual = sha256_of(path)
        except FileNotFoundError:
            return False
        if actual != sha256:
            quarantine(self.root, path, f"sha256 is {actual}")
            with self._lock:
                self._verified.pop(key, None)
            return False
        if _signature(path) == before:  # unchanged while it was hashed
            with self._lock:
                self._verified[key] = before
                self._verified.move_to_end(key)
                while len(self._verified) > self.max_entries:
                    self._verified.popitem(last=False)
        return True


@dataclass
class FsckReport:
    """What `fsck` checked and what it found."""

    repos: int = 0
    blobs: int = 0
    commits: int = 0
    quarantined: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    removed_leftovers: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when nothing was corrupted or missing."""
        return not self.quarantined and not self.problems

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"clean": self.clean, "repos": self.repos, "blobs": self.blobs, "commits": self.commits,
                "quarantined": self.quarantined, "problems": self.problems,
                "removed_leftovers": self.removed_leftovers}


def fsck(root: Path) -> FsckReport:
    """Rehash every blob and commit under a hub root, quarantine what fails, report what is lost.

    Also removes what interrupted work leaves behind: half-created repos (`.NAME.creating-*`),
    deleted repos still in `.trash` or left under their name without `repo.json`, and uploads
    unfinished for over an hour.

    Args:
        root: the `--root` of `rvec hub serve`.

    Returns:
        An `FsckReport`; `clean` is False when something was quarantined or a ref or file lost its object.

    Example:
        >>> fsck(Path("./hub-data")).clean
        True
    """
    from rvec_hub.hub.server.models import CommitRecord, RepoRecord

    root = Path(root)
    report = FsckReport()
    repos_dir = root / "repos"
    _remove_leftovers(root, report)
    if not repos_dir.is_dir():
        return report
    for ns_dir in sorted(p for p in repos_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for repo_dir in sorted(p for p in ns_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            repo_id = f"{ns_dir.name}/{repo_dir.name}"
            try:
                record = RepoRecord.model_validate_json((repo_dir / "repo.json").read_bytes())
            except FileNotFoundError:  # a deleted repo's remains (an upload that outlived it): never a live repo
                shutil.rmtree(repo_dir, ignore_errors=True)
                report.removed_leftovers.append(str(repo_dir.relative_to(root)))
                continue
            except ValueError:
                report.problems.append(f"{repo_id}: repo.json is not a valid repo record")
                continue
            if record.repo_id != repo_id:
                report.problems.append(f"{repo_id}: repo.json names {record.repo_id}")
            report.repos += 1
            _check_repo(root, repo_dir, repo_id, report, CommitRecord)
    return report


def _check_repo(root: Path, repo_dir: Path, repo_id: str, report: FsckReport, commit_type: type) -> None:
    blobs: set[str] = set()
    for path in sorted((repo_dir / "objects" / "blobs").glob("*/*")):
        if path.name.startswith("."):
            continue
        report.blobs += 1
        if not is_sha256(path.name) or sha256_of(path) != path.name:
            quarantine(root, path, "content does not match its name")
            report.quarantined.append(f"{repo_id}: blob {path.name}")
        else:
            blobs.add(path.name)
    commits: dict[str, object] = {}
    for path in sorted((repo_dir / "objects" / "commits").glob("*/*.json")):
        report.commits += 1
        commit_id = path.name.removesuffix(".json")
        data = path.read_bytes()
        try:
            record = commit_type.model_validate_json(data)
            ok = is_commit_id(commit_id) and hashlib.sha1(data).hexdigest() == commit_id
        except ValueError:
            ok = False
        if not ok:
            quarantine(root, path, "content does not match its name")
            report.quarantined.append(f"{repo_id}: commit {commit_id}")
        else:
            commits[commit_id] = record
    for kind in ("heads", "tags"):
        folder = repo_dir / "refs" / kind
        for ref in sorted(folder.iterdir()) if folder.is_dir() else []:
            if ref.name.startswith("."):
                continue
            target = ref.read_text().strip()
            if target not in commits:
                report.problems.append(f"{repo_id}: {kind[:-1] if kind == 'tags' else 'branch'} {ref.name} "
                                       f"points at missing commit {target}")
    for commit_id, record in commits.items():
        lost = [p for p, entry in record.tree.items() if entry.sha256 not in blobs]  # type: ignore[attr-defined]
        if lost:
            report.problems.append(f"{repo_id}: commit {commit_id[:12]} lost the content of {', '.join(sorted(lost)[:5])}; "
                                   "push those files again")


def _remove_leftovers(root: Path, report: FsckReport) -> None:
    now = time.time()
    repos_dir = root / "repos"
    for staging in sorted(repos_dir.glob("*/.*.creating-*")) if repos_dir.is_dir() else []:
        shutil.rmtree(staging, ignore_errors=True)
        report.removed_leftovers.append(str(staging.relative_to(root)))
    trash = root / ".trash"
    for item in sorted(trash.iterdir()) if trash.is_dir() else []:
        shutil.rmtree(item, ignore_errors=True)
        report.removed_leftovers.append(str(item.relative_to(root)))
    for upload in sorted(repos_dir.glob("*/*/tmp/upload-*")) if repos_dir.is_dir() else []:
        try:
            if now - upload.stat().st_mtime > STALE_TMP_S:
                upload.unlink()
                report.removed_leftovers.append(str(upload.relative_to(root)))
        except FileNotFoundError:
            pass
