"""A vector directory opened for reading: manifest, verified payload, deltas decoded on demand."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from . import digests
from ._version import __version__
from .encodings import ENCODINGS
from .encodings.base import Payload
from .errors import FormatError, IntegrityError
from .io.safetensors_io import SafetensorsFile
from .manifest import Manifest, TensorEntry, load_manifest

PAYLOAD_PREFIX = "vector"
# One reused block that stays in cache between the read and the hash; a fresh 8 MB `bytes` per read
# cost as much as the hashing (the allocator maps and zeroes it anew each time).
_HASH_BLOCK = 1024 * 1024


def sha256_file(path: Path, *, rehash: bool = False) -> str:
    """Hex sha256 of a file, read in blocks, or the one recorded for it if it is unchanged since (`rvec_hub.digests`).

    Args:
        path: the file.
        rehash: read and hash the file even when a record vouches for it (`rvec check` does).
    """
    real = Path(path).resolve()
    if not rehash and (known := digests.recorded(real)) is not None:
        return known
    before = digests.settled(real)
    digest = hashlib.sha256()
    block = bytearray(_HASH_BLOCK)
    view = memoryview(block)
    with open(real, "rb", buffering=0) as f:
        while n := f.readinto(block):
            digest.update(view[:n])
    if before is not None:
        digests.record(real, before, digest.hexdigest())
    return digest.hexdigest()


def _inside(directory: Path, relative: str) -> Path:
    root = directory.resolve()
    lexical = root / relative
    path = lexical.resolve()
    if root in path.parents:
        return path
    # A Hugging Face cache snapshot (`models--OWNER--NAME/snapshots/<commit>/`) holds each file as a link
    # into the same repository's `blobs/`. Only that link is followed: the folders above it must be real.
    parent = lexical.parent.resolve()
    in_snapshot = root.parent.name == "snapshots" and (parent == root or root in parent.parents)
    if in_snapshot and lexical.is_symlink() and path.parent == (root.parent.parent / "blobs").resolve():
        return lexical
    raise FormatError(f"{directory}: manifest file {relative!r} points outside the vector directory")


def verify_files(directory: Path, manifest: Manifest, *, rehash: bool = False) -> None:
    """Check that every payload file exists with the manifest's size and sha256.

    A file whose digest was recorded when rvec wrote or last hashed it, and whose size, times and inode are
    unchanged since, is not read again unless `rehash` (see `rvec_hub.digests`).

    Raises:
        IntegrityError: listing every file that differs.
    """
    problems = []
    hashed = []
    for entry in manifest.files:
        path = _inside(directory, entry.path)
        if not path.is_file():
            problems.append(f"{entry.path} is missing")
        elif path.stat().st_size != entry.size:
            problems.append(f"{entry.path} has {path.stat().st_size} bytes, manifest says {entry.size}")
        else:
            hashed.append((entry, path))
    # hashlib releases the GIL, so shards hash side by side on as many cores as there are shards.
    with ThreadPoolExecutor(max_workers=max(1, min(len(hashed), os.cpu_count() or 1))) as pool:
        found = list(pool.map(lambda path: sha256_file(path, rehash=rehash), [path for _, path in hashed]))
    for (entry, _), digest in zip(hashed, found):
        if digest != entry.sha256:
            problems.append(f"{entry.path} sha256 differs from the manifest")
    if problems:
        raise IntegrityError(
            f"{directory} fails verification: {'; '.join(problems)}; the vector is corrupt or was modified, fetch it again",
            problems=problems,
        )


def refuse_unknown_encodings(directory: Path, manifest: Manifest) -> None:
    """Raise FormatError naming the rvec version needed when the manifest uses an encoding this one lacks."""
    unknown = sorted({t.encoding for t in manifest.tensors} - set(ENCODINGS))
    if unknown:
        raise FormatError(
            f"{directory} uses encoding {', '.join(unknown)}, which rvec {__version__} cannot read; "
            f"it was written by rvec {manifest.rvec_version}: upgrade to rvec>={manifest.rvec_version}"
        )


class Vector:
    """A reasoning vector on disk.

    Args:
        path: the vector directory.
        manifest: its parsed manifest.

    Example:
        >>> vec = Vector.open("my-vector")
        >>> delta = vec.decode("model.layers.0.mlp.up_proj.weight")
    """

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.entries: dict[str, TensorEntry] = manifest.entries
        self._files: dict[str, SafetensorsFile] = {}
        self._owner: dict[str, str] = {}
        self._pending: Future | None = None

    @classmethod
    def open(cls, path: str | Path, *, verify: bool | str = True) -> Vector:
        """Open a vector directory, check its manifest and (by default) every payload checksum.

        Args:
            path: the vector directory.
            verify: True checks every size and sha256 before returning; "background" hashes on a thread
                while the caller works, and `wait_verified` raises if a file differs (for work whose
                output is published only afterwards); False skips it (for a vector verified just before).
        """
        path = Path(path)
        if not path.is_dir():
            raise FormatError(f"{path} is not a vector directory; pass the directory `rvec extract` wrote, or REPO_ID@VERSION")
        manifest = load_manifest(path)
        refuse_unknown_encodings(path, manifest)
        if verify is True:
            verify_files(path, manifest)
        vec = cls(path, manifest)
        vec._index_payload()
        problems = vec.structure_problems()
        if problems:
            vec.close()
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise FormatError(
                f"{path}: payload does not match its manifest: {problems[0]}{more}; the vector is corrupt, fetch or extract it again",
                problems=problems,
            )
        if verify == "background":
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rvec-verify")
            vec._pending = executor.submit(verify_files, path, manifest)
            executor.shutdown(wait=False)
        return vec

    def wait_verified(self) -> None:
        """Wait for background verification; raise IntegrityError if a payload file differs."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _index_payload(self) -> None:
        for entry in self.manifest.files:
            if not entry.path.endswith(".safetensors"):
                continue
            f = SafetensorsFile(_inside(self.path, entry.path))
            self._files[entry.path] = f
            for key in f.tensors:
                if key in self._owner:
                    raise FormatError(f"{self.path}: payload key {key!r} is stored in both {self._owner[key]} and {entry.path}; the vector is corrupt")
                self._owner[key] = entry.path
        missing = [f"{t.name} ({k})" for t in self.manifest.tensors for k in t.keys.values() if k not in self._owner]
        if missing:
            raise FormatError(f"{self.path}: payload lacks {len(missing)} stored keys, e.g. {missing[0]}; the vector is incomplete")

    # The Payload protocol the encodings read through.
    def read(self, key: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows of one stored payload tensor."""
        return self._files[self._owner[key]].read_rows(key, start, stop)

    def map(self, key: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """`read` as a private mapping of the file's pages instead of a copy, for rows read once
        (`SafetensorsFile.map_rows`)."""
        return self._files[self._owner[key]].map_rows(key, start, stop)

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape of one stored payload tensor."""
        return self._files[self._owner[key]].tensors[key].shape

    def dtype(self, key: str) -> torch.dtype:
        """Dtype of one stored payload tensor."""
        return self._files[self._owner[key]].tensors[key].dtype

    def structure_problems(self) -> list[str]:
        """Every stored tensor whose dtype or shape breaks its manifest entry or its encoding (headers only, no values read)."""
        problems = []
        for entry in self.manifest.tensors:
            problems += ENCODINGS[entry.encoding].validate(entry, self)
        return problems

    def decode_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows `[start, stop)` of the delta for `name`, in float32."""
        entry = self.entries[name]
        return ENCODINGS[entry.encoding].decode_rows(entry, self, start, stop)

    def has_fused_add(self, name: str) -> bool:
        """Whether the encoding of `name` adds its delta into bf16 rows itself (`add_into`)."""
        return ENCODINGS[self.entries[name].encoding].add_into is not None

    def adds_block_by_block(self, name: str) -> bool:
        """Whether `add_into` for `name` holds a bounded piece at a time whatever the row range (`Codec.adds_block_by_block`)."""
        return ENCODINGS[self.entries[name].encoding].adds_block_by_block

    def add_into(
        self, name: str, start: int, stop: int, rows: torch.Tensor, alpha: float, staged: Payload | None = None,
        *, base: torch.Tensor | None = None,
    ) -> tuple[int, float, float] | None:
        """Add α·(rows `[start, stop)` of the delta for `name`) to bf16 `rows` in place with the encoding's
        fused kernel (`rvec_hub.fused`); None, rows untouched, when the encoding has none. `staged`: what
        `staged` read for the same rows. `base`: bf16 rows to add to instead, `rows` getting
        base + α·Δ (in one pass where the encoding can, `Codec.adds_from_base`)."""
        entry = self.entries[name]
        codec = ENCODINGS[entry.encoding]
        if codec.add_into is None:
            return None
        if base is not None and not codec.adds_from_base:
            rows.copy_(base)
            base = None
        extra = {} if base is None else {"base": base}
        return codec.add_into(entry, staged or self, start, stop, rows, alpha, **extra)

    def staged(self, name: str, start: int, stop: int) -> Payload:
        """The payload with the stored rows the encoding of `name` reads for rows `[start, stop)` already
        read, where the encoding declares them (`Codec.reads`): a reader thread calls this so that the
        thread adding the delta does not wait on the file; other reads go to the files as usual."""
        entry = self.entries[name]
        reads = ENCODINGS[entry.encoding].reads
        if reads is None:
            return self
        # Mapped, not copied: these rows are read once, by the add (`SafetensorsFile.map_rows`).
        return _Staged(self, {(key, lo, hi): self.map(key, lo, hi) for key, lo, hi in reads(entry, start, stop)})

    def decode(self, name: str) -> torch.Tensor:
        """The whole delta for `name`, in float32."""
        entry = self.entries[name]
        return self.decode_rows(name, 0, entry.shape[0] if entry.shape else 1)

    @property
    def payload_bytes(self) -> int:
        """Bytes of every payload file."""
        return sum(f.size for f in self.manifest.files)

    def close(self) -> None:
        """Close the payload files."""
        for f in self._files.values():
            f.close()


class _Staged:
    """A vector's payload with some row ranges read ahead (`Vector.staged`)."""

    def __init__(self, vector: Vector, rows: dict[tuple[str, int, int | None], torch.Tensor]) -> None:
        self._vector, self._rows = vector, rows

    def read(self, key: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        found = self._rows.get((key, start, stop))
        return found if found is not None else self._vector.read(key, start, stop)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._vector.shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return self._vector.dtype(key)
