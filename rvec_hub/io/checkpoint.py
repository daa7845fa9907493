"""Model checkpoints as rvec reads them: a directory of safetensors shards and a config, nothing pickled."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError
from .safetensors_io import SafetensorsFile, TensorInfo

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
    """

    path: Path
    config: dict
    tensors: dict[str, TensorInfo]
    source: str
    revision: str | None = None
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
        return self._files[self._owner[name]]

    def read_rows(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows of one tensor, read from disk without touching the rest of the shard."""
        return self.file_of(name).read_rows(name, start, stop)

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
            shard = (path / name).resolve()
            if shard.parent != path.resolve() or not shard.name.endswith(".safetensors"):
                raise CheckpointError(f"{index} names {name!r}, which is not a safetensors file inside {path}")
            if not shard.exists():
                raise CheckpointError(f"{index} lists {name}, which is missing; the download is incomplete")
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        _refuse_pickle(path)
    return files


def _download(repo_id: str, revision: str | None, *, endpoint: str | None, token: str | None) -> tuple[Path, str | None]:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    from ..errors import HubError

    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision, files_metadata=False)
        local = snapshot_download(
            repo_id, revision=info.sha, allow_patterns=HUB_PATTERNS, endpoint=endpoint, token=token
        )
    except HfHubHTTPError as exc:
        raise HubError(f"cannot fetch {repo_id}: {str(exc).splitlines()[0]}") from exc
    except Exception as exc:  # connection errors carry long chains; one line is enough
        raise HubError(f"cannot fetch {repo_id}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    return Path(local), info.sha


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
    revision = None
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
    config_path = path / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{path} has no config.json; pass a Hugging Face model directory")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{config_path} is not valid JSON ({exc})") from exc
    ckpt = Checkpoint(path=path, config=config, tensors={}, source=str(ref), revision=revision)
    for shard in _shard_files(path):
        f = SafetensorsFile(shard)
        ckpt._files[shard.name] = f
        for name, info in f.tensors.items():
            if name in ckpt.tensors:
                raise CheckpointError(f"{path}: tensor {name} appears in two shards")
            ckpt.tensors[name] = info
            ckpt._owner[name] = shard.name
    return ckpt
