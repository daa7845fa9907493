"""Versions of a vector on a Hub: semver tags `vX.Y.Z`, and how `REPO@VERSION` resolves to a commit."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import total_ordering

from huggingface_hub import HfApi

from ..errors import HubError, UsageError

DEFAULT_BRANCH = "main"
TAG_PREFIX = "v"
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?$"
)
_COMMIT = re.compile(r"^[0-9a-f]{7,64}$")
_FULL_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@total_ordering
@dataclass(frozen=True)
class Version:
    """A semantic version `MAJOR.MINOR.PATCH[-PRERELEASE]`, ordered by semver precedence.

    Build metadata (`+build`) is refused: two tags that differ only in it would be the same version.

    Example:
        >>> Version.parse("v1.2.0-rc.1") < Version.parse("1.2.0")
        True
    """

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse `1.2.3`, `v1.2.3` or `1.2.3-rc.1`; UsageError for anything else."""
        match = _SEMVER.match(text.removeprefix(TAG_PREFIX))
        if not match:
            raise UsageError(f"version {text!r} is not semantic versioning; use MAJOR.MINOR.PATCH such as 1.0.0 or 1.1.0-rc.1")
        pre = tuple(match.group(4).split(".")) if match.group(4) else ()
        return cls(int(match.group(1)), int(match.group(2)), int(match.group(3)), pre)

    @classmethod
    def from_tag(cls, tag: str) -> Version | None:
        """The version a git tag names (`v1.2.3`), or None for tags that are not versions."""
        if not tag.startswith(TAG_PREFIX):
            return None
        try:
            return cls.parse(tag)
        except UsageError:
            return None

    @property
    def tag(self) -> str:
        """The git tag that marks this version: `v1.2.3`."""
        return TAG_PREFIX + str(self)

    def __str__(self) -> str:
        core = f"{self.major}.{self.minor}.{self.patch}"
        return f"{core}-{'.'.join(self.prerelease)}" if self.prerelease else core

    def _key(self) -> tuple:
        # A release sorts above its prereleases; numeric identifiers sort below alphanumeric ones.
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, not self.prerelease, pre)

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()


@dataclass(frozen=True)
class VersionInfo:
    """One published version: its tag, the commit it marks and when that commit was made."""

    version: Version
    tag: str
    commit: str
    date: datetime | None

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"version": str(self.version), "tag": self.tag, "commit": self.commit,
                "date": self.date.isoformat() if self.date else None}


@dataclass(frozen=True)
class Resolved:
    """A reference resolved to one commit; `version` is None when it named a branch or commit.

    `ref` is the tag or branch the commit was found under (`v1.0.0`, `main`), which the cache records so
    that the same reference resolves offline; None when a commit was named.
    """

    repo_id: str
    version: Version | None
    commit: str
    ref: str | None = None


def split_ref(ref: str) -> tuple[str, str | None]:
    """`owner/name@spec` → (`owner/name`, `spec`); no `@` gives spec None."""
    repo_id, sep, spec = ref.partition("@")
    if not _REPO_ID.match(repo_id) or (sep and not spec):
        raise UsageError(f"{ref!r} is not a Hub reference; write REPO_ID[@VERSION], e.g. acme/reasoning@1.0.0")
    return repo_id, spec or None


def version_tags(api: HfApi, repo_id: str) -> dict[Version, str]:
    """Every version tag of a repo: {version: commit}."""
    found: dict[Version, str] = {}
    for ref in api.list_repo_refs(repo_id).tags:
        version = Version.from_tag(ref.name)
        if version is not None:
            found[version] = ref.target_commit
    return found


def latest(versions: dict[Version, str]) -> Version | None:
    """The highest release; the highest prerelease only when there is no release at all."""
    releases = [v for v in versions if not v.prerelease]
    pool = releases or list(versions)
    return max(pool) if pool else None


def list_versions(api: HfApi, repo_id: str) -> list[VersionInfo]:
    """Every version of a repo, newest first, with its commit and commit date.

    Dates come from the history of `main` in one call; a tag off `main` costs one more.
    """
    tags = version_tags(api, repo_id)
    dates: dict[str, datetime] = {}
    if tags:
        dates = {c.commit_id: c.created_at for c in api.list_repo_commits(repo_id, revision=DEFAULT_BRANCH)}
    out = []
    for version in sorted(tags, reverse=True):
        commit = tags[version]
        if commit not in dates:
            history = api.list_repo_commits(repo_id, revision=commit)
            dates[commit] = history[0].created_at if history else None
        out.append(VersionInfo(version, version.tag, commit, dates[commit]))
    return out


def resolve(api: HfApi, repo_id: str, spec: str | None) -> Resolved:
    """Resolve a version spec to a commit.

    Args:
        api: the Hub client.
        repo_id: `owner/name`.
        spec: `1.0.0` or `v1.0.0` (that version), `latest` (highest release), a commit sha or branch,
            or None (the latest version, or `main` when nothing is tagged).

    Returns:
        The resolved commit, with the version when one was named or implied.
    """
    if spec is None or spec == "latest" or _SEMVER.match(spec.removeprefix(TAG_PREFIX)):
        tags = version_tags(api, repo_id)
        if spec is None and not tags:
            sha = _checked(repo_id, api.model_info(repo_id, revision=DEFAULT_BRANCH).sha)
            return Resolved(repo_id, None, sha, DEFAULT_BRANCH)
        version = latest(tags) if spec in (None, "latest") else Version.parse(spec)
        if version is None:
            raise HubError(f"{repo_id} has no versions yet; push one with `rvec push DIR {repo_id} --version 1.0.0`")
        if version not in tags:
            known = ", ".join(str(v) for v in sorted(tags, reverse=True)[:10])
            raise HubError(f"{repo_id} has no version {version}; it has {known} (see `rvec versions {repo_id}`)")
        return Resolved(repo_id, version, _checked(repo_id, tags[version]), version.tag)
    # A commit sha (full or abbreviated) or a branch name: the Hub resolves it.
    sha = _checked(repo_id, api.model_info(repo_id, revision=spec).sha)
    if _COMMIT.match(spec) and not sha.startswith(spec):
        raise HubError(f"{repo_id}@{spec} resolved to commit {sha}, which is not the commit asked for")
    return Resolved(repo_id, None, sha, None if _COMMIT.match(spec) else spec)


def resolve_cached(repo_id: str, spec: str | None) -> Resolved | None:
    """Resolve a version spec from the Hub cache alone (offline, or when the Hub cannot be reached).

    Versions resolve through the `refs/vX.Y.Z` files a pull records; `latest` (and no spec) to the highest
    version the cache holds a snapshot of; a commit, full or abbreviated, to the one snapshot it names; a
    branch through `refs/<branch>`.

    Returns:
        The resolved commit, or None when the cache cannot tell.
    """
    from .cache import cached_commits, cached_refs, read_ref

    if spec is not None and _COMMIT.match(spec):
        matches = [c for c in cached_commits(repo_id) if c.startswith(spec)]
        if len(matches) == 1:
            return Resolved(repo_id, None, matches[0])
    if spec is None or spec == "latest" or _SEMVER.match(spec.removeprefix(TAG_PREFIX)):
        snapshots = set(cached_commits(repo_id))
        tags = {v: c for name, c in cached_refs(repo_id).items() if (v := Version.from_tag(name)) and c in snapshots}
        version = latest(tags) if spec in (None, "latest") else Version.parse(spec)
        if version is not None and version in tags:
            return Resolved(repo_id, version, tags[version], version.tag)
        if spec is not None:
            return None
        spec = DEFAULT_BRANCH
    commit = read_ref(repo_id, spec)
    return Resolved(repo_id, None, commit, spec) if commit else None


def _checked(repo_id: str, sha: str | None) -> str:
    # The commit names a cache directory, so a server's answer must be a plain hex id and nothing else.
    if not sha or not _FULL_COMMIT.match(sha):
        raise HubError(f"the Hub answered {sha!r} as the commit of {repo_id}, which is not a commit id; check the endpoint")
    return sha
