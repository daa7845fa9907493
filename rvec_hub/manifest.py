"""`rvec.json`, the manifest of a vector (format v1). See docs/format.md."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import FormatError

FORMAT_VERSION = 1
# Float dtypes a vector's tensors are stored and described in.
STORAGE_DTYPES = ("float32", "bfloat16", "float16", "float64")
# float32's largest value: a default_alpha beyond it can only write non-finite weights.
ALPHA_LIMIT = 3.4028234663852886e38
MANIFEST_NAME = "rvec.json"
# Config fields that fix the shapes a vector touches; part of the base fingerprint.
SIGNATURE_KEYS = (
    "architectures",
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelRef(_Frozen):
    """A model by Hub id (or local name) and revision, where known."""

    id: str | None = None
    revision: str | None = None


class Donors(_Frozen):
    """The two checkpoints a vector was extracted from."""

    reference: ModelRef
    tuned: ModelRef


class BaseSpec(_Frozen):
    """What a base model must look like for the vector to apply."""

    architecture: str
    config: dict[str, Any]
    fingerprint: str
    model_id: str | None = None


class TensorEntry(_Frozen):
    """One tensor of the vector: its shape, how it is encoded, and the payload keys that hold it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    encoding: str
    keys: dict[str, str] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    stats: dict[str, float] = Field(default_factory=dict)

    @field_validator("shape")
    @classmethod
    def _sizes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(d < 0 for d in value):
            raise ValueError(f"shape {list(value)} has a negative dimension")
        return value

    @field_validator("dtype")
    @classmethod
    def _float_dtype(cls, value: str) -> str:
        if value not in STORAGE_DTYPES:
            raise ValueError(f"dtype {value!r} is not one of {', '.join(STORAGE_DTYPES)}")
        return value


class FileEntry(_Frozen):
    """A payload file with its checksum; its path never leaves the vector directory."""

    path: str
    sha256: str
    size: int

    @field_validator("path")
    @classmethod
    def _safe_path(cls, value: str) -> str:
        pure = PurePosixPath(value)
        if not value or "\\" in value or pure.is_absolute() or ".." in pure.parts or any(p in ("", ".") for p in value.split("/")):
            raise ValueError(f"file path {value!r} leaves the vector directory")
        return value


class Manifest(_Frozen):
    """The manifest of a vector directory, `rvec.json`."""

    format_version: Literal[1]
    name: str
    description: str = ""
    license: str = "apache-2.0"
    rvec_version: str
    base: BaseSpec
    donors: Donors
    recipe: str = "tuned - reference"
    default_alpha: float = 1.0
    tensors: list[TensorEntry]
    files: list[FileEntry]
    extract: dict[str, Any] = Field(default_factory=dict)
    compression: dict[str, Any] | None = None
    probe: dict[str, Any] | None = None

    @field_validator("default_alpha")
    @classmethod
    def _finite_alpha(cls, value: float) -> float:
        if not math.isfinite(value) or abs(value) > ALPHA_LIMIT:
            raise ValueError(f"{value!r} is not a finite scale a float32 can hold")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [t.name for t in self.tensors]
        if len(names) != len(set(names)):
            raise ValueError("a tensor is listed twice")
        paths = [f.path for f in self.files]
        if len(paths) != len(set(paths)):
            raise ValueError("a file is listed twice")
        keys = [k for t in self.tensors for k in t.keys.values()]
        if len(keys) != len(set(keys)):
            raise ValueError("two tensors share a payload key")
        return self

    @property
    def entries(self) -> dict[str, TensorEntry]:
        """Tensor entries by name."""
        return {t.name: t for t in self.tensors}

    def to_json(self) -> str:
        """The manifest as it is written to disk."""
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "manifest"
        msg = "missing" if err["type"] == "missing" else err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts[:5]) + (f" (and {len(parts) - 5} more)" if len(parts) > 5 else "")


def parse_manifest(text: str, source: str = MANIFEST_NAME) -> Manifest:
    """Parse and validate a manifest, turning every problem into one readable line."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise FormatError(f"{source} is not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise FormatError(f"{source} must hold a JSON object")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise FormatError(f"{source} uses vector format {version}; this rvec reads format {FORMAT_VERSION}: upgrade with `pip install -U rvec`")
        raise FormatError(f"{source} has format_version {version!r}; rvec reads format {FORMAT_VERSION}")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise FormatError(f"{source} is invalid: {_one_line(exc)}") from None


def load_manifest(directory: Path) -> Manifest:
    """Read `rvec.json` from a vector directory."""
    path = Path(directory) / MANIFEST_NAME
    if not path.exists():
        raise FormatError(f"{directory} is not an rvec vector: it has no {MANIFEST_NAME}")
    return parse_manifest(path.read_text(), str(path))


def config_signature(config: dict) -> dict[str, Any]:
    """The config fields that fix a model's tensor shapes."""
    sig = {k: config.get(k) for k in SIGNATURE_KEYS}
    sig["architectures"] = list(config.get("architectures") or [])
    return sig


def fingerprint(signature: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> str:
    """Hash of the config signature and the names and shapes of the tensors a vector touches."""
    payload = {"config": signature, "tensors": sorted([n, list(s)] for n, s in shapes.items())}
    return "sha256:" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def touched_shapes(manifest: Manifest) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors the vector changes (zero tensors excluded)."""
    return {t.name: tuple(t.shape) for t in manifest.tensors if t.encoding != "zero"}
