"""Downloading one commit of a vector into the standard Hugging Face cache, every file verified.

Files arrive through `hf_hub_download` at the resolved commit, so they land as blobs with snapshot links
exactly where `snapshot_download` puts them. `rvec.json` and the card are checked against the ids the
commit's tree listing gives them; every payload file against the size and sha256 the manifest records,
hashed as soon as it lands while the next one downloads (`huggingface_hub` offers no hook to hash the
bytes in flight, and its downloads restart from zero when interrupted). A file that fails is removed from
the cache, blob and snapshot link, so no snapshot keeps looking complete with bytes that did not verify.
Files are named by the manifest (whose paths are validated), never by the server.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from huggingface_hub.hf_api import RepoFile
from tqdm.auto import tqdm

from ..errors import HubError, IntegrityError, RvecError
from ..manifest import MANIFEST_NAME, FileEntry, Manifest, parse_manifest
from ..vector import sha256_file
from .cache import forget_file, snapshot_folder
from .push import CARD_NAME

_BLOCK = 8 * 1024 * 1024
# Files fetched side by side; each is hashed on its own thread as soon as it is complete.
_WORKERS = 4


class _SilentBar(tqdm):
    def __init__(self, *args, **kwargs) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _git_blob_id(path: Path) -> str:
    # The id git (and the Hub's tree listing) gives a regular file: sha1 of a "blob <size>\0" header and the bytes.
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _file_problem(folder: Path, entry: FileEntry) -> str | None:
    path = folder.joinpath(*entry.path.split("/"))
    if not path.is_file():
        return f"{entry.path} is missing"
    if path.stat().st_size != entry.size:
        return f"{entry.path} has {path.stat().st_size} bytes, manifest says {entry.size}"
    return None if sha256_file(path) == entry.sha256 else f"{entry.path} sha256 differs from the manifest"


def payload_problems(repo_id: str, commit: str, manifest: Manifest) -> list[str]:
    """Check every payload file of a cached snapshot against the manifest; forget the ones that differ.

    Returns:
        One line per file that is missing or differs (each removed from the cache).
    """
    folder = snapshot_folder(repo_id, commit)
    entries = list(manifest.files)
    # hashlib releases the GIL, so files hash side by side.
    with ThreadPoolExecutor(max_workers=max(1, min(len(entries), os.cpu_count() or 1))) as pool:
        found = list(pool.map(lambda e: _file_problem(folder, e), entries))
    for entry, problem in zip(entries, found):
        if problem:
            forget_file(repo_id, commit, entry.path)
    return [p for p in found if p]


def cached_manifest(repo_id: str, commit: str) -> Manifest | None:
    """The manifest of a cached snapshot, or None when it is absent or unreadable."""
    path = snapshot_folder(repo_id, commit) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return parse_manifest(path.read_text(), f"{repo_id}@{commit[:12]}/{MANIFEST_NAME}")
    except (RvecError, OSError, UnicodeDecodeError):
        return None


class Fetcher:
    """Downloads the files of one commit into the Hub cache, each verified once it is complete."""

    def __init__(self, repo_id: str, commit: str, endpoint: str, token: str | None, tree: dict[str, RepoFile], quiet: bool) -> None:
        self.repo_id, self.commit, self.endpoint, self.token, self.tree = repo_id, commit, endpoint, token, tree
        self.bar = _SilentBar if quiet else None

    def manifest(self) -> Manifest:
        """Fetch `rvec.json` (and the card), checked against the ids the tree listing gives them."""
        folder = snapshot_folder(self.repo_id, self.commit)
        names = [n for n in (MANIFEST_NAME, CARD_NAME) if n in self.tree]
        for name in names:  # a cached copy that rotted is fetched again, not reported as the Hub's fault
            if (folder / name).is_file() and self._check_listed(folder / name, self.tree[name], name):
                forget_file(self.repo_id, self.commit, name)
        problems = []
        for name in names:
            path = self._download(name)
            problem = self._check_listed(path, self.tree[name], name)
            if problem:
                forget_file(self.repo_id, self.commit, name)
                problems.append(problem)
        _fail_if(problems, self.repo_id, self.commit)
        return parse_manifest((folder / MANIFEST_NAME).read_text(), f"{self.repo_id}@{self.commit[:12]}/{MANIFEST_NAME}")

    def payload(self, manifest: Manifest) -> None:
        """Fetch every payload file the manifest lists and check its size and sha256."""
        missing = [f.path for f in manifest.files if f.path not in self.tree]
        if missing:
            raise HubError(
                f"{self.repo_id}@{self.commit[:12]} lacks {len(missing)} file(s) its manifest lists, e.g. {missing[0]}; "
                "the push was incomplete: ask the author to push it again",
                problems=missing,
            )

        folder = snapshot_folder(self.repo_id, self.commit)

        def fetch(entry: FileEntry) -> str | None:
            # Hashed right after it lands, while the other workers still download (the bytes are still in page cache).
            self._download(entry.path)
            problem = _file_problem(folder, entry)
            if problem:
                forget_file(self.repo_id, self.commit, entry.path)
            return problem

        with ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="rvec-fetch") as pool:
            problems = [p for p in pool.map(fetch, manifest.files) if p]
        _fail_if(problems, self.repo_id, self.commit)

    def _download(self, name: str) -> Path:
        try:
            return Path(hf_hub_download(
                self.repo_id, name, revision=self.commit, endpoint=self.endpoint, token=self.token,
                library_name="rvec", tqdm_class=self.bar,
            ))
        except LocalEntryNotFoundError as exc:
            # hf_hub_download hides why the Hub refused the file (e.g. a 410 for a quarantined blob): say it.
            if isinstance(exc.__cause__, (HfHubHTTPError, httpx2.TransportError)):
                raise exc.__cause__ from None
            raise
        except OSError as exc:
            if "Consistency check failed" not in str(exc):
                raise
            # The server sent a different number of bytes than its headers promised.
            raise IntegrityError(
                f"{self.repo_id}@{self.commit[:12]}: {name} arrived with the wrong size; the Hub copy is corrupt or was "
                "modified, nothing was kept; tell the author or pull another version"
            ) from None

    def _check_listed(self, path: Path, listed: RepoFile, name: str) -> str | None:
        if listed.lfs is not None:
            ok = sha256_file(path) == listed.lfs.sha256
        else:
            ok = _git_blob_id(path) == listed.blob_id
        return None if ok else f"{name} differs from the commit's tree listing"


def _fail_if(problems: list[str], repo_id: str, commit: str) -> None:
    if problems:
        raise IntegrityError(
            f"{repo_id}@{commit[:12]} fails verification: {'; '.join(problems)}; the Hub copy is corrupt or was "
            "modified, and its files were removed from the cache; tell the author or pull another version",
            problems=problems,
        )
