"""On-disk records (frozen, versioned) and the request bodies the server accepts."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rvec_hub.hub.server.paths import is_commit_id, is_sha256, path_problem

FORMAT_VERSION = 1


def utc_now_iso() -> str:
    """Current time in the Hub's timestamp format (`2024-01-31T12:00:00.000Z`)."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TreeEntry(_Frozen):
    """One file of a commit: its content blob (by sha256), size, storage kind and git object id."""

    sha256: str
    size: int = Field(ge=0)
    lfs: bool
    git_oid: str

    @model_validator(mode="after")
    def _check_hashes(self) -> TreeEntry:
        if not is_sha256(self.sha256):
            raise ValueError(f"sha256 {self.sha256!r} is not 64 lowercase hex digits")
        if len(self.git_oid) != 40:
            raise ValueError(f"git oid {self.git_oid!r} is not 40 hex digits")
        return self

    @property
    def etag(self) -> str:
        """What the Hub reports as the file's ETag: sha256 for LFS files, git blob id otherwise."""
        return self.sha256 if self.lfs else self.git_oid


class CommitRecord(_Frozen):
    """A commit: parent, full flat tree, message and author. Its id is the sha1 of its canonical JSON."""

    format_version: Literal[1] = FORMAT_VERSION
    parent: str | None
    tree: dict[str, TreeEntry]
    title: str
    message: str = ""
    author: str
    date: str

    @model_validator(mode="after")
    def _check(self) -> CommitRecord:
        if self.parent is not None and not is_commit_id(self.parent):
            raise ValueError(f"parent {self.parent!r} is not a commit id")
        bad = [f"{p!r}: {problem}" for p in self.tree if (problem := path_problem(p)) is not None]
        if bad:
            raise ValueError("invalid paths in tree: " + "; ".join(bad))
        return self

    def canonical_bytes(self) -> bytes:
        """Deterministic serialization: what the commit id hashes and what is stored."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()

    @property
    def commit_id(self) -> str:
        """40-hex id of this commit."""
        return hashlib.sha1(self.canonical_bytes()).hexdigest()


class RepoRecord(_Frozen):
    """A repository's settings as stored in `repo.json`."""

    format_version: Literal[1] = FORMAT_VERSION
    namespace: str
    name: str
    private: bool = False
    created_at: str

    @property
    def repo_id(self) -> str:
        """`namespace/name`."""
        return f"{self.namespace}/{self.name}"


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CreateRepoRequest(_Request):
    """Body of `POST /api/repos/create` as `HfApi.create_repo` sends it."""

    name: str
    organization: str | None = None
    type: str | None = None
    visibility: str | None = None
    private: bool | None = None

    @property
    def is_private(self) -> bool:
        """Visibility asked for; public unless told otherwise."""
        if self.visibility is not None:
            return self.visibility == "private"
        return bool(self.private)


class DeleteRepoRequest(_Request):
    """Body of `DELETE /api/repos/delete`."""

    name: str
    organization: str | None = None
    type: str | None = None


class RepoSettingsRequest(_Request):
    """Body of `PUT /api/models/{repo}/settings` (only visibility is honoured)."""

    private: bool | None = None
    visibility: str | None = None


class CreateTagRequest(_Request):
    """Body of `POST /api/models/{repo}/tag/{rev}`."""

    tag: str
    message: str | None = None


class CreateBranchRequest(_Request):
    """Body of `POST /api/models/{repo}/branch/{branch}`."""

    startingPoint: str | None = None


class LfsObject(_Request):
    """One object of an LFS batch request."""

    oid: str
    size: int


class LfsBatchRequest(_Request):
    """Body of `POST /{repo}.git/info/lfs/objects/batch`."""

    operation: str
    transfers: list[str] = Field(default_factory=lambda: ["basic"])
    objects: list[LfsObject]
    hash_algo: str = "sha256"
