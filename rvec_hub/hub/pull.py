"""`rvec pull`: resolve a version to a commit, download it into the Hub cache, verify every byte.

Vectors live in the standard Hugging Face cache, as any model repository does:
`$HF_HUB_CACHE/models--OWNER--NAME/snapshots/<commit>/` (see `cache.py`). A snapshot already there is
re-verified against its manifest and used without a download. With `HF_HUB_OFFLINE=1`, or when the Hub
cannot be reached, the reference resolves from the cache alone (`refs/v1.0.0` files recorded by earlier
pulls). `-o DIR` copies the verified snapshot into a plain directory, which appears only once complete.
Nothing here trusts a path that came from a server: files are named by the manifest, whose paths are
validated, and by nothing else.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx2
from filelock import FileLock
from huggingface_hub import HfApi, is_offline_mode
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.hf_api import RepoFile

from ..errors import HubError, IntegrityError, OutputExistsError
from ..io.atomic import refuse_overlap, replace_directory, signals_held
from ..manifest import MANIFEST_NAME
from ._errors import endpoint_of, hub_errors
from .cache import hub_cache, snapshot_folder, storage_folder, write_ref
from .fetch import Fetcher, cached_manifest, payload_problems
from .push import CARD_NAME
from .versions import Resolved, resolve, resolve_cached, split_ref

# What "the Hub cannot be reached" looks like; the cache answers instead.
_UNREACHABLE = (OfflineModeIsEnabled, httpx2.TransportError, ConnectionError)


@dataclass(frozen=True)
class PullResult:
    """A verified vector on disk and the commit it came from."""

    path: Path
    repo_id: str
    version: str | None
    commit: str

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"path": str(self.path), "repo_id": self.repo_id, "version": self.version, "commit": self.commit}


def cache_root() -> Path:
    """The Hub cache pulled vectors live in (`HF_HUB_CACHE`, else `$HF_HOME/hub`), as `huggingface_hub` sees it."""
    return hub_cache()


def pull(
    ref: str,
    *,
    output: str | Path | None = None,
    force: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    quiet: bool = True,
) -> PullResult:
    """Download a vector version into the Hub cache and verify every file against its manifest.

    Args:
        ref: `REPO_ID`, `REPO_ID@1.0.0`, `REPO_ID@v1.0.0`, `REPO_ID@latest` (highest release) or
            `REPO_ID@<commit sha or branch>`; without `@` the latest version, or `main` if none is tagged.
        output: also copy the verified vector into this plain directory (default: the cache snapshot only).
        force: replace `output` if it exists (only once the new copy is complete).
        endpoint: Hub endpoint (default: HF_ENDPOINT or huggingface.co).
        token: Hub token for private repositories (default: HF_TOKEN or the stored login).
        quiet: no progress bars.

    Returns:
        Where the verified vector is (the cache snapshot, or `output`), and the commit it was resolved to.

    Raises:
        HubError: the repository, version or a file does not exist, or the Hub cannot be reached and the
            cache does not hold the reference.
        IntegrityError: a file differs from the manifest; it is removed from the cache and nothing is written.

    Example:
        >>> pull("acme/qwen2.5-reasoning@1.0.0").path
        PosixPath('.../hub/models--acme--qwen2.5-reasoning/snapshots/3f2a...')
    """
    repo_id, spec = split_ref(ref)
    endpoint = endpoint_of(endpoint)
    target = Path(output) if output is not None else None
    if target is not None:
        refuse_overlap(target, [hub_cache()])  # the copy comes out of the cache; replacing it must not touch the cache
    if target is not None and target.exists() and (not target.is_dir() or any(target.iterdir())) and not force:
        raise OutputExistsError(f"{target} already exists; choose another -o or pass --force to replace it")
    resolved, unreachable = _resolve_online(repo_id, spec, endpoint, token)
    if resolved is None:
        resolved = resolve_cached(repo_id, spec)
        if resolved is None:
            raise _not_cached(repo_id, spec, endpoint, unreachable)
    commit = resolved.commit
    with _lock(repo_id, commit):
        if not _cached_and_verified(repo_id, commit):
            if unreachable is not None:
                raise _not_cached(repo_id, spec, endpoint, unreachable, commit=commit)
            _download(repo_id, commit, spec, endpoint, token, quiet)
        if resolved.ref:
            write_ref(repo_id, resolved.ref, commit)
        folder = snapshot_folder(repo_id, commit)
        if target is not None:
            _copy_out(repo_id, commit, target)
    version = str(resolved.version) if resolved.version else None
    return PullResult(target if target is not None else folder, repo_id, version, commit)


def _resolve_online(repo_id: str, spec: str | None, endpoint: str, token: str | None) -> tuple[Resolved | None, Exception | None]:
    """Ask the Hub; (None, why) when it cannot be reached, so that the cache answers instead."""
    if is_offline_mode():
        return None, OfflineModeIsEnabled()
    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(repo_id, endpoint, token=token):
        try:
            return resolve(api, repo_id, spec), None
        except httpx2.ProxyError:
            raise
        except _UNREACHABLE as exc:
            return None, exc


def _download(repo_id: str, commit: str, spec: str | None, endpoint: str, token: str | None, quiet: bool) -> None:
    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(repo_id, endpoint, token=token):
        tree = {f.path: f for f in api.list_repo_tree(repo_id, revision=commit, recursive=True) if isinstance(f, RepoFile)}
        if MANIFEST_NAME not in tree:
            raise HubError(f"{repo_id}@{spec or commit[:12]} has no {MANIFEST_NAME}: it is not an rvec vector")
        fetch = Fetcher(repo_id, commit, endpoint, token, tree, quiet)
        fetch.payload(fetch.manifest())


def _cached_and_verified(repo_id: str, commit: str) -> bool:
    # A cached snapshot is used only if it still matches its manifest byte for byte; files that rotted are forgotten.
    manifest = cached_manifest(repo_id, commit)
    return manifest is not None and not payload_problems(repo_id, commit, manifest)


def _not_cached(repo_id: str, spec: str | None, endpoint: str, why: Exception | None, *, commit: str | None = None) -> HubError:
    ref = f"{repo_id}@{spec}" if spec else repo_id
    what = f"{ref} (commit {commit[:12]}) is not complete in the Hub cache" if commit else f"{ref} is not in the Hub cache"
    if isinstance(why, OfflineModeIsEnabled):
        return HubError(f"HF_HUB_OFFLINE is set and {what} ({hub_cache()}); run `rvec pull {ref}` once online, or unset HF_HUB_OFFLINE")
    return HubError(
        f"cannot reach the Hub at {endpoint} ({type(why).__name__}) and {what}; check --endpoint / HF_ENDPOINT and that "
        "the server is running (`rvec hub serve`)"
    )


def _lock(repo_id: str, commit: str) -> FileLock:
    # Two pulls of one commit take turns; the lock lives beside huggingface_hub's own, which cache scans skip.
    locks = hub_cache() / ".locks" / storage_folder(repo_id).name
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(str(locks / f"rvec-{commit}.lock"))


def _copy_out(repo_id: str, commit: str, target: Path) -> None:
    """Copy a verified snapshot's files (the bytes, not the links) into `target`, replacing it only when complete."""
    folder = snapshot_folder(repo_id, commit)
    manifest = cached_manifest(repo_id, commit)
    if manifest is None:  # pragma: no cover - verified just before, under the lock
        raise IntegrityError(f"{folder} lost its {MANIFEST_NAME} while being copied; run the pull again")
    names = [MANIFEST_NAME, *([CARD_NAME] if (folder / CARD_NAME).is_file() else []), *(f.path for f in manifest.files)]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.rvec-pull-{commit[:12]}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for name in names:
            dest = staging.joinpath(*name.split("/"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder.joinpath(*name.split("/")), dest)
        replace_directory(staging, target)
    except BaseException:
        with signals_held():
            shutil.rmtree(staging, ignore_errors=True)
        raise
