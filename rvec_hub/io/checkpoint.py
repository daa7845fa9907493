"""Model checkpoints as rvec reads them: a directory of safetensors shards and a config, nothing pickled."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError, RvecError
from .safetensors_io import DTYPES, SafetensorsFile, TensorInfo

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Files copied next to applied weights so the output loads like the base.
SIDECAR_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "tokenizer.model",
)
# The card and license files travel with what `rvec apply` derives from a base.
HUB_PATTERNS = ["*.safetensors", "*.safetensors.index.json", *SIDECAR_FILES, "README.md", "LICENSE*", "NOTICE*", "USE_POLICY.md"]


@dataclass
class Checkpoint:
    """A model checkpoint opened for streaming: its config and where each tensor lies.

    Attributes:
        path: the local directory.
        config: `config.json` as a dict.
        tensors: every tensor's location, in file order.
        source: what the user named (a path or a Hub id with revision), for manifests.
        revision: for a Hub model, the commit it was resolved to.
        repo_id: for a Hub model, its id.
        headers_only: opened from its safetensors headers alone (shapes and dtypes, no weights to read).
    """

    path: Path
    config: dict
    tensors: dict[str, TensorInfo]
    source: str
    revision: str | None = None
    repo_id: str | None = None
    headers_only: bool = False
    _files: dict[str, SafetensorsFile] = field(default_factory=dict, repr=False)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype most of the floating-point weights are stored in."""
        counts: dict[torch.dtype, int] = {}
        for info in self.tensors.values():
            if info.dtype.is_floating_point:
                counts[info.dtype] = counts.get(info.dtype, 0) + info.nbytes
        return max(counts, key=counts.get) if counts else torch.float32

    def file_of(self, name: str) -> SafetensorsFile:
        """The open shard that holds `name`."""
        if self.headers_only:
            raise CheckpointError(f"{self.source} was opened from its safetensors headers only; its weights cannot be read")
        return self._files[self._owner[name]]

    def read_rows(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows of one tensor, read from disk without touching the rest of the shard."""
        return self.file_of(name).read_rows(name, start, stop)

    def map_rows(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """`read_rows` as a view of the file's cached pages instead of a copy (`SafetensorsFile.map_rows`)."""
        return self.file_of(name).map_rows(name, start, stop)

    def close(self) -> None:
        """Close every shard."""
        for f in self._files.values():
            f.close()

    def __post_init__(self) -> None:
        self._owner: dict[str, str] = {}


def _refuse_pickle(path: Path) -> None:
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    raise CheckpointError(
        f"{path} holds no safetensors weights"
        + (f", only pickle files ({', '.join(pickles[:3])})" if pickles else "")
        + "; rvec never unpickles weights: convert them with "
        "`AutoModelForCausalLM.from_pretrained(...).save_pretrained(dir, safe_serialization=True)` in a trusted environment"
    )


def _shard_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{index} is not a valid safetensors index ({exc})") from exc
        names = sorted(set(weight_map.values()))
        for name in names:
            # Checked by name, not by where it resolves: a Hub cache snapshot links each shard into blobs/.
            shard = path / name
            if not isinstance(name, str) or "/" in name or "\\" in name or name in (".", "..") or not name.endswith(".safetensors"):
                raise CheckpointError(f"{index} names {name!r}, which is not a safetensors file inside {path}")
            if not shard.exists():
                raise CheckpointError(f"{index} lists {name}, which is missing; the download is incomplete")
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        _refuse_pickle(path)
    return files


def _hub_failure(repo_id: str, endpoint: str | None, exc: BaseException) -> RvecError:
    """One line for a Hub model that cannot be fetched, saying what is missing when the cache must answer."""
    from huggingface_hub import is_offline_mode
    from huggingface_hub.errors import (
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
        RevisionResolutionError,
    )

    from ..errors import HubError

    if isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError)):
        return HubError(f"cannot fetch {repo_id}: {str(exc).splitlines()[0]}")
    if isinstance(exc, (RevisionResolutionError, LocalEntryNotFoundError)):
        why = "HF_HUB_OFFLINE is set" if is_offline_mode() else f"the Hub at {endpoint or 'huggingface.co'} cannot be reached"
        what = "is only partly in the Hub cache" if isinstance(exc, IncompleteSnapshotError) else "is not in the Hub cache"
        return HubError(f"{why} and base {repo_id} {what}; download it once online (`hf download {repo_id}`) or pass a local directory")
    if isinstance(exc, HfHubHTTPError):
        return HubError(f"cannot fetch {repo_id}: {str(exc).splitlines()[0]}")
    # Connection errors carry long chains; one line is enough.
    return HubError(f"cannot fetch {repo_id}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def _resolve_hub(repo_id: str, revision: str | None, *, endpoint: str | None, token: str | None) -> str:
    """The commit a Hub model's revision names; from the cache's refs when offline or unreachable."""
    from huggingface_hub import HfApi

    try:
        return HfApi(endpoint=endpoint, token=token).resolve_revision(repo_id, revision=revision).resolved
    except Exception as exc:
        raise _hub_failure(repo_id, endpoint, exc) from exc


def _download(repo_id: str, revision: str | None, *, endpoint: str | None, token: str | None) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download

    commit = _resolve_hub(repo_id, revision, endpoint=endpoint, token=token)
    try:
        local = snapshot_download(repo_id, revision=commit, allow_patterns=HUB_PATTERNS, endpoint=endpoint, token=token)
    except Exception as exc:
        raise _hub_failure(repo_id, endpoint, exc) from exc
    return Path(local), commit


def _cached_weights(repo_id: str, commit: str) -> bool:
    """True when the Hub cache holds every safetensors shard of this commit (so headers are read from disk)."""
    from huggingface_hub import try_to_load_from_cache

    index = try_to_load_from_cache(repo_id, "model.safetensors.index.json", revision=commit)
    if isinstance(index, str):
        try:
            names = set(json.loads(Path(index).read_text())["weight_map"].values())
        except (ValueError, KeyError, OSError):
            return False
    else:
        names = {"model.safetensors"}
    return all(isinstance(try_to_load_from_cache(repo_id, n, revision=commit), str) for n in names)


def open_checkpoint_headers(ref: str | Path, *, endpoint: str | None = None, token: str | None = None) -> Checkpoint:
    """Open a model for a compatibility check only: its config and every tensor's name, shape and dtype.

    A local directory, or a Hub model whose weights are already cached, is opened as usual (only the
    safetensors headers are read from disk). Any other Hub model is never downloaded: `config.json` is
    fetched, and each shard's header is read with HTTP range requests (`get_safetensors_metadata`).

    Args:
        ref: a directory, or a Hub id (`id` or `id@revision`).
        endpoint: Hub endpoint for ids.
        token: Hub token for private repositories.

    Returns:
        A checkpoint whose `tensors` are complete; when `headers_only`, its weights cannot be read.

    Example:
        >>> base = open_checkpoint_headers("Qwen/Qwen2.5-7B-Instruct")  # reads about 100 kB per shard
        >>> base.tensors["model.norm.weight"].shape
    """
    repo_id, revision = _hub_id(ref)
    if repo_id is None:
        return open_checkpoint(ref, endpoint=endpoint, token=token)
    from huggingface_hub import HfApi, hf_hub_download, is_offline_mode

    commit = _resolve_hub(repo_id, revision, endpoint=endpoint, token=token)
    if _cached_weights(repo_id, commit) or is_offline_mode():
        return open_checkpoint(ref, endpoint=endpoint, token=token)
    try:
        config_path = Path(hf_hub_download(repo_id, "config.json", revision=commit, endpoint=endpoint, token=token))
        metadata = HfApi(endpoint=endpoint, token=token).get_safetensors_metadata(repo_id, revision=commit)
    except Exception as exc:
        from huggingface_hub.errors import EntryNotFoundError, NotASafetensorsRepoError, SafetensorsParsingError

        if isinstance(exc, (NotASafetensorsRepoError, EntryNotFoundError)):
            raise CheckpointError(
                f"{repo_id} has no config.json or no safetensors weights; rvec never unpickles weights: use a model "
                "saved with `save_pretrained(..., safe_serialization=True)`"
            ) from exc
        if isinstance(exc, SafetensorsParsingError):
            raise CheckpointError(f"{repo_id}: a safetensors header does not parse ({exc})") from exc
        raise _hub_failure(repo_id, endpoint, exc) from exc
    ckpt = Checkpoint(path=config_path.parent, config=_read_config(config_path), tensors={}, source=str(ref),
                      revision=commit, repo_id=repo_id, headers_only=True)
    for shard, meta in sorted(metadata.files_metadata.items()):
        for name, info in meta.tensors.items():
            if info.dtype not in DTYPES:
                raise CheckpointError(f"{repo_id}/{shard}: tensor {name} has dtype {info.dtype}, which rvec does not handle")
            if name in ckpt.tensors:
                raise CheckpointError(f"{repo_id}: tensor {name} appears in two shards")
            begin, end = info.data_offsets
            # Offsets are relative to the shard's data section; a header-only checkpoint never reads them.
            ckpt.tensors[name] = TensorInfo(name, DTYPES[info.dtype], tuple(info.shape), begin, end - begin)
            ckpt._owner[name] = shard
    return ckpt


def _hub_id(ref: str | Path) -> tuple[str | None, str | None]:
    """(repo id, revision) when `ref` names a Hub model rather than an existing path; (None, None) otherwise."""
    text = str(ref)
    if Path(text).exists() or text.startswith((".", "/", "~")) or text.partition("@")[0].count("/") != 1:
        return None, None
    repo_id, _, rev = text.partition("@")
    return repo_id, rev or None


def _read_config(config_path: Path) -> dict:
    try:
        return json.loads(config_path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{config_path} is not valid JSON ({exc})") from exc


def open_checkpoint(ref: str | Path, *, endpoint: str | None = None, token: str | None = None) -> Checkpoint:
    """Open a local model directory, or download a Hub model (`id` or `id@revision`, safetensors only).

    Args:
        ref: a directory, or a Hub repository id.
        endpoint: Hub endpoint for ids (defaults to huggingface_hub's).
        token: Hub token for private repositories.

    Returns:
        The checkpoint, its shards opened and validated.

    Example:
        >>> ckpt = open_checkpoint("Qwen/Qwen2.5-0.5B-Instruct")
        >>> ckpt.tensors["model.norm.weight"].shape
    """
    path = Path(ref)
    revision = repo_id = None
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise CheckpointError(f"{path} is a pickle file; rvec reads safetensors only and never unpickles weights")
        raise CheckpointError(f"{path} is a file; pass the model directory that holds config.json and the safetensors shards")
    if not path.exists():
        text = str(ref)
        if text.startswith((".", "/", "~")) or text.count("/") != 1:
            raise CheckpointError(f"{ref} does not exist; pass a model directory or a Hub id like Qwen/Qwen2.5-0.5B")
        repo_id, _, rev = text.partition("@")
        path, revision = _download(repo_id, rev or None, endpoint=endpoint, token=token)
        if not any(path.glob("*.safetensors")):
            raise CheckpointError(
                f"{repo_id}@{revision[:12]} is in the Hub cache without its weights (only its config was fetched); "
                f"download them once online (`hf download {repo_id}`) or pass a local directory"
            )
    config_path = path / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{path} has no config.json; pass a Hugging Face model directory")
    ckpt = Checkpoint(path=path, config=_read_config(config_path), tensors={}, source=str(ref), revision=revision, repo_id=repo_id)
    for shard in _shard_files(path):
        f = SafetensorsFile(shard)
        ckpt._files[shard.name] = f
        for name, info in f.tensors.items():
            if name in ckpt.tensors:
                raise CheckpointError(f"{path}: tensor {name} appears in two shards")
            ckpt.tensors[name] = info
            ckpt._owner[name] = shard.name
    return ckpt
