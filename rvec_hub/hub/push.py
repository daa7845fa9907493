"""`rvec push`: publish a verified vector directory as one commit tagged `vX.Y.Z`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from ..card import carry_evaluation, render_card
from ..errors import HubError
from ..manifest import MANIFEST_NAME
from ..vector import Vector
from ._errors import endpoint_of, hub_errors
from .versions import DEFAULT_BRANCH, Version, split_ref, version_tags

CARD_NAME = "README.md"
# Files a Hub repository keeps across versions; everything else belongs to the version being pushed.
_KEPT = {".gitattributes"}


@dataclass(frozen=True)
class PushResult:
    """A published version: where it lives and the commit its tag marks."""

    repo_id: str
    version: Version
    commit: str
    url: str
    files: tuple[str, ...]
    payload_bytes: int

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"repo_id": self.repo_id, "version": str(self.version), "tag": self.version.tag, "commit": self.commit,
                "url": self.url, "files": list(self.files), "payload_bytes": self.payload_bytes}


@contextmanager
def _progress_bars(quiet: bool) -> Iterator[None]:
    # huggingface_hub's upload bars are switched globally; restore what the caller had.
    was_disabled = are_progress_bars_disabled()
    if quiet and not was_disabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if quiet and not was_disabled:
            enable_progress_bars()


def push(
    directory: str | Path,
    repo_id: str,
    version: str,
    *,
    private: bool = False,
    message: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    quiet: bool = False,
) -> PushResult:
    """Publish a vector directory to a Hub repository as version `version`.

    The vector is verified first (manifest and the sha256 of every payload file). The repository is created
    when missing; `rvec.json`, the payload files and a freshly rendered card go up in one commit on `main`
    (large files through LFS), files of the previous version that this one lacks are removed in the same
    commit, and the commit is tagged `vX.Y.Z`. A version that already exists is refused before anything is
    uploaded; a concurrent push to the same repository makes this commit fail instead of overwriting it.

    Args:
        directory: the vector directory.
        repo_id: `owner/name`.
        version: semantic version `X.Y.Z` (a leading `v` is accepted).
        private: create the repository private (an existing repository keeps its visibility).
        message: commit message (default: `rvec NAME X.Y.Z`).
        endpoint: Hub endpoint (default: HF_ENDPOINT or huggingface.co).
        token: Hub token (default: HF_TOKEN or the stored login).
        quiet: no progress bars.

    Returns:
        The published version with its commit.

    Example:
        >>> push("vec", "acme/qwen2.5-reasoning", "1.0.0", endpoint="http://127.0.0.1:8080")
    """
    parsed = Version.parse(version)
    repo_id, spec = split_ref(repo_id)
    if spec is not None:
        raise HubError(f"pass the version with --version, not in the repository id ({repo_id}@{spec})")
    directory = Path(directory)
    vector = Vector.open(directory)
    manifest = vector.manifest
    vector.close()
    endpoint = endpoint_of(endpoint)
    api = HfApi(endpoint=endpoint, token=token)

    with hub_errors(repo_id, endpoint, token=token, writing=True), _progress_bars(quiet):
        url = _create_repo(api, repo_id, private)
        existing = version_tags(api, repo_id)
        if parsed in existing:
            newest = max(existing)
            raise HubError(
                f"{repo_id} already has version {parsed} (commit {existing[parsed][:12]}); versions never change: "
                f"push this one as a new version, e.g. {_next_patch(newest)}"
            )
        head = _branch_head(api, repo_id)
        names = [MANIFEST_NAME, CARD_NAME] + [f.path for f in manifest.files]
        # Keep what `rvec eval --write-card` recorded in the local card (model-index, results table).
        card = carry_evaluation(render_card(manifest, repo_id=repo_id, version=str(parsed)), directory / CARD_NAME).encode()
        stale: list[str] = []
        if head is not None:
            listed = [f.path for f in api.list_repo_tree(repo_id, revision=head, recursive=True) if isinstance(f, RepoFile)]
            stale = [p for p in listed if p not in names and p not in _KEPT]

        def commit(source: Callable[[str], str | BinaryIO]):
            operations: list = [CommitOperationAdd(CARD_NAME, card)]
            operations += [CommitOperationAdd(name, source(name)) for name in names if name != CARD_NAME]
            operations += [CommitOperationDelete(p) for p in stale]
            return api.create_commit(repo_id, operations, commit_message=message or f"rvec {manifest.name} {parsed}",
                                     revision=DEFAULT_BRANCH, parent_commit=head)

        try:
            info = commit(lambda name: str(directory / name))
        except ConnectionError as exc:
            if "xet-write-token" not in str(exc):
                raise
            # hf_xet is installed but this Hub (e.g. `rvec hub serve`) has no Xet; huggingface_hub sends
            # open file objects through LFS instead. Nothing was uploaded by the failed attempt.
            with ExitStack() as files:
                info = commit(lambda name: files.enter_context(open(directory / name, "rb")))
        if parsed in version_tags(api, repo_id):
            # Another push tagged this version while ours uploaded; our commit stays on main, untagged.
            raise HubError(f"{repo_id} version {parsed} was published by someone else during this push; "
                           f"commit {info.oid[:12]} is on main untagged: push again as a new version")
        api.create_tag(repo_id, tag=parsed.tag, revision=info.oid, tag_message=f"{manifest.name} {parsed}")
    return PushResult(
        repo_id=repo_id, version=parsed, commit=info.oid, url=str(url),
        files=tuple(sorted(names)), payload_bytes=sum(f.size for f in manifest.files),
    )


def _create_repo(api: HfApi, repo_id: str, private: bool | None) -> str:
    """The repository's url, the repository created unless it exists.

    `huggingface_hub` reads the url from the answer's JSON body, a 409's ("exists") included; a Hub whose
    answer has no such body leaves a KeyError or a JSON error behind. The repository is then looked up
    instead (a missing one raises, as any other failure does) and its url is the endpoint's.
    """
    try:
        return str(api.create_repo(repo_id, private=private, exist_ok=True))
    except (KeyError, json.JSONDecodeError):
        api.repo_info(repo_id)
        return f"{api.endpoint.rstrip('/')}/{repo_id}"


def _branch_head(api: HfApi, repo_id: str) -> str | None:
    for branch in api.list_repo_refs(repo_id).branches:
        if branch.name == DEFAULT_BRANCH:
            return branch.target_commit
    return None


def _next_patch(version: Version) -> str:
    return f"{version.major}.{version.minor}.{version.patch + 1}"
