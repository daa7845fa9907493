"""Downloading the files of one commit into a staging directory, each checked as it completes.

Each file streams into `<file>.incomplete` through `huggingface_hub`'s HTTP downloader and continues with
a Range request when an earlier attempt left part of it; bytes are hashed as they arrive, so checking a
file against the manifest's sha256 costs no second read. Files are named by the manifest (whose paths
are validated), never by the server.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from huggingface_hub import hf_hub_url
from huggingface_hub.file_download import http_get
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers
from tqdm.auto import tqdm

from ..errors import HubError, IntegrityError
from ..manifest import MANIFEST_NAME, Manifest, parse_manifest
from ..vector import sha256_file
from .push import CARD_NAME

PARTIAL = ".incomplete"
_BLOCK = 8 * 1024 * 1024


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


class _HashingFile:
    """A file opened for download that hashes every byte written, so verifying needs no second read.

    Opening truncates the file to `keep` bytes and hashes those first (the part a resumed download keeps).
    """

    def __init__(self, f: BinaryIO, keep: int, hasher: ThreadPoolExecutor) -> None:
        self._f, self._digest, self._valid = f, hashlib.sha256(), True
        self._hasher, self._pending = hasher, None
        f.seek(0)
        left = keep
        while left > 0 and (block := f.read(min(_BLOCK, left))):
            self._digest.update(block)
            left -= len(block)
        f.seek(keep)
        f.truncate()

    def write(self, data: bytes) -> int:
        # Hash chunk N on another thread while chunk N+1 arrives (hashlib releases the GIL); one in flight.
        self._wait()
        self._pending = self._hasher.submit(self._digest.update, data)
        return self._f.write(data)

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        self._valid = False  # the downloader rewinds when a server ignores Range: hash the file afresh
        return self._f.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        self._valid = False
        return self._f.truncate(size)

    def hexdigest(self) -> str | None:
        self._wait()
        return self._digest.hexdigest() if self._valid else None


class Fetcher:
    """Downloads the files of one commit into a staging directory, each verified as it completes."""

    def __init__(self, repo_id: str, commit: str, endpoint: str, token: str | None, tree: dict[str, RepoFile], quiet: bool) -> None:
        self.repo_id, self.commit, self.endpoint, self.tree = repo_id, commit, endpoint, tree
        self.headers = build_hf_headers(token=token, library_name="rvec")
        self.bar = _SilentBar if quiet else None
        self.hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rvec-sha256")

    def manifest(self, staging: Path) -> Manifest:
        """Fetch `rvec.json` (and the card), checked against the ids the tree listing gives them."""
        problems = []
        for name in (MANIFEST_NAME, CARD_NAME):
            if name in self.tree:
                path, _ = self._download(staging, name, self.tree[name].size)
                problem = self._check_listed(path, self.tree[name], name)
                if problem:
                    path.unlink()
                    problems.append(problem)
        _fail_if(problems, self.repo_id, self.commit)
        return parse_manifest((staging / MANIFEST_NAME).read_text(), f"{self.repo_id}@{self.commit[:12]}/{MANIFEST_NAME}")

    def payload(self, staging: Path, manifest: Manifest) -> None:
        """Fetch every payload file the manifest lists and check its size and sha256."""
        missing = [f.path for f in manifest.files if f.path not in self.tree]
        if missing:
            raise HubError(
                f"{self.repo_id}@{self.commit[:12]} lacks {len(missing)} file(s) its manifest lists, e.g. {missing[0]}; "
                "the push was incomplete: ask the author to push it again",
                problems=missing,
            )
        problems = []
        for entry in manifest.files:
            path, digest = self._download(staging, entry.path, entry.size)
            if path.stat().st_size != entry.size:
                problems.append(f"{entry.path} has {path.stat().st_size} bytes, manifest says {entry.size}")
            elif (digest or sha256_file(path)) != entry.sha256:
                problems.append(f"{entry.path} sha256 differs from the manifest")
            else:
                continue
            path.unlink()
        _fail_if(problems, self.repo_id, self.commit)

    def _download(self, staging: Path, name: str, size: int) -> tuple[Path, str | None]:
        """Stream one file into `staging/name`, resuming an earlier `.incomplete` copy.

        Returns the file and its sha256, hashed as the bytes arrived (None when it must be hashed again).
        """
        dest = staging.joinpath(*name.split("/"))
        if dest.is_file() and dest.stat().st_size == size:
            return dest, None  # finished by an earlier, interrupted pull
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + PARTIAL)
        have = part.stat().st_size if part.is_file() else 0
        if have > size:
            have = 0
        url = hf_hub_url(self.repo_id, name, revision=self.commit, endpoint=self.endpoint)
        try:
            with open(part, "r+b" if part.exists() else "wb") as f:
                sink = _HashingFile(f, have, self.hasher)
                http_get(url, sink, resume_size=have, headers=self.headers, expected_size=size,
                         displayed_filename=name, tqdm_class=self.bar)
        except OSError as exc:
            if "Consistency check failed" not in str(exc):
                raise
            # The server sent a different number of bytes than its listing and the manifest promise.
            part.unlink(missing_ok=True)
            raise IntegrityError(
                f"{self.repo_id}@{self.commit[:12]}: {name} arrived with the wrong size; the Hub copy is corrupt or was "
                "modified, nothing was written; tell the author or pull another version"
            ) from None
        os.replace(part, dest)
        return dest, sink.hexdigest()

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
            "modified, so nothing was written; tell the author or pull another version",
            problems=problems,
        )
