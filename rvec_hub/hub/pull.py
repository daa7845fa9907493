"""`rvec pull`: resolve a version to a commit, download with resume, verify every byte, then move into place.

Downloads go to a hidden staging directory beside the destination; only when every file matches the
sha256 and size its manifest records is the staging directory renamed into place. A mismatch leaves the
destination as it was. The staging directory is named after the commit, so a pull that was killed picks
up where it stopped (see `fetch.py`).

Default destination: `<HF_HUB_CACHE>/rvec/models--OWNER--NAME/<COMMIT>/`, a plain directory (not the
symlinked snapshot layout of `huggingface_hub`, whose downloads in this version restart from zero when
a process dies). Nothing here trusts a path that came from a server: files are named by the manifest,
whose paths are validated, and by nothing else.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from huggingface_hub import HfApi
from huggingface_hub.hf_api import RepoFile

from ..errors import HubError, OutputExistsError, RvecError
from ..io.atomic import replace_directory
from ..manifest import MANIFEST_NAME, load_manifest
from ..vector import verify_files
from ._errors import endpoint_of, hub_errors
from .fetch import PARTIAL, Fetcher
from .versions import resolve, split_ref


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
    """Where pulled vectors live by default; reads HF_HUB_CACHE / HF_HOME when called, not at import."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]) / "rvec"
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home) / "hub" / "rvec"


def pull(
    ref: str,
    *,
    output: str | Path | None = None,
    force: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    quiet: bool = True,
) -> PullResult:
    """Download a vector version and verify every file against its manifest.

    Args:
        ref: `REPO_ID`, `REPO_ID@1.0.0`, `REPO_ID@v1.0.0`, `REPO_ID@latest` (highest release) or
            `REPO_ID@<commit sha or branch>`; without `@` the latest version, or `main` if none is tagged.
        output: directory to create (default: the Hub cache).
        force: replace `output` if it exists (only once the new copy is verified).
        endpoint: Hub endpoint (default: HF_ENDPOINT or huggingface.co).
        token: Hub token for private repositories (default: HF_TOKEN or the stored login).
        quiet: no progress bars.

    Returns:
        Where the verified vector is, and the commit it was resolved to.

    Raises:
        HubError: the repository, version or a file does not exist, or the Hub cannot be reached.
        IntegrityError: a downloaded file differs from the manifest; nothing is moved into place.

    Example:
        >>> pull("acme/qwen2.5-reasoning@1.0.0", output="vec").commit
        '3f2a...'
    """
    repo_id, spec = split_ref(ref)
    endpoint = endpoint_of(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(repo_id, endpoint, token=token):
        resolved = resolve(api, repo_id, spec)
        commit = resolved.commit
        tree = {f.path: f for f in api.list_repo_tree(repo_id, revision=commit, recursive=True) if isinstance(f, RepoFile)}
    version = str(resolved.version) if resolved.version else None
    if MANIFEST_NAME not in tree:
        raise HubError(f"{repo_id}@{spec or commit[:12]} has no {MANIFEST_NAME}: it is not an rvec vector")

    in_cache = output is None
    target = cache_root() / f"models--{repo_id.replace('/', '--')}" / commit if in_cache else Path(output)
    staging = target.parent / f".{target.name}.rvec-pull-{commit[:12]}"
    # Two pulls to one place take turns; the lock lives in the cache, not beside the output.
    locks = cache_root() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / hashlib.sha256(str(staging.resolve()).encode()).hexdigest()[:32]) + ".lock"):
        if not in_cache and target.exists() and (not target.is_dir() or any(target.iterdir())) and not force:
            raise OutputExistsError(f"{target} already exists; choose another -o or pass --force to replace it")
        if in_cache and _verified(target):
            return PullResult(target, repo_id, version, commit)
        target.parent.mkdir(parents=True, exist_ok=True)
        fetch = Fetcher(repo_id, commit, endpoint, token, tree, quiet)
        try:
            with hub_errors(repo_id, endpoint, token=token):
                manifest = fetch.manifest(staging)
                fetch.payload(staging, manifest)
        finally:
            fetch.hasher.shutdown()
        _move_into_place(staging, target)
    return PullResult(target, repo_id, version, commit)


def _verified(directory: Path) -> bool:
    # A cached copy is used only if it still matches its manifest byte for byte.
    if not (directory / MANIFEST_NAME).is_file():
        return False
    try:
        verify_files(directory, load_manifest(directory))
    except (RvecError, OSError):
        return False
    return True


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename the verified staging directory to `target`, replacing what was there only after it is complete."""
    for leftover in staging.rglob(f"*{PARTIAL}"):
        leftover.unlink()
    replace_directory(staging, target)
