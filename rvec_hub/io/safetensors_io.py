"""Streaming safetensors: read row ranges a chunk at a time, write shards without holding them in memory.

Reads go through `pread` into fresh buffers, or map just the rows asked for (`map_rows`), so a pass over a
3 GB checkpoint keeps only the rows in hand resident. Writes reserve room for the header, stream tensor bytes in order, and
write the header last (safetensors allows trailing spaces in the header JSON). The bytes reach the file
from a background thread, a few chunks behind, past the page cache where the file system allows
(`rvec_hub.io.direct`), so writing overlaps the arithmetic.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError
from . import direct

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_CODES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024
# Chunks handed to the writer thread and not yet written: bounds the memory the overlap costs.
_WRITES_IN_FLIGHT = 4


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies in a safetensors file."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int

    @property
    def row_bytes(self) -> int:
        rows = self.shape[0] if self.shape else 1
        return self.nbytes // rows if rows else 0


class SafetensorsFile:
    """One safetensors file opened for streaming reads.

    Args:
        path: the file. Its header is validated by `safe_open` (coverage, offsets) before any read.

    Example:
        >>> f = SafetensorsFile(Path("model.safetensors"))
        >>> rows = f.read_rows("model.embed_tokens.weight", 0, 1024)
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd = -1
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                self.metadata = dict(handle.metadata() or {})
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{self.path} is not a readable safetensors file ({exc}); re-download or re-create it") from exc
        with open(self.path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        data_start = 8 + header_len
        self.tensors: dict[str, TensorInfo] = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in DTYPES:
                raise CheckpointError(f"{self.path}: tensor {name} has dtype {info['dtype']}, which rvec does not handle")
            begin, end = info["data_offsets"]
            self.tensors[name] = TensorInfo(name, DTYPES[info["dtype"]], tuple(info["shape"]), data_start + begin, end - begin)
        self._fd = os.open(self.path, os.O_RDONLY)
        # Closed once, by `close` or when the object is collected, even at interpreter exit.
        self._closer = weakref.finalize(self, os.close, self._fd)

    def close(self) -> None:
        """Release the file descriptor."""
        if self._fd >= 0:
            self._closer()
            self._fd = -1

    def read_rows(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows `[start, stop)` of a tensor along its first dimension (the whole tensor by default)."""
        info = self.tensors[name]
        if not info.shape:
            return self._pread(info.start, info.nbytes).view(info.dtype).reshape(())
        stop = info.shape[0] if stop is None else stop
        raw = self._pread(info.start + start * info.row_bytes, (stop - start) * info.row_bytes)
        return raw.view(info.dtype).reshape((stop - start, *info.shape[1:]))

    def map_rows(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """`read_rows` without its copy: the rows as a view of the file's cached pages, through a private
        mapping of those rows alone, unmapped when the tensor is freed.

        For a pass that reads each row once (`rvec apply`): the copy is half the CPU time of reading a
        dense delta and its base rows and adding them. Writes to the tensor stay private to this process.
        Scalars, rows at an offset their dtype's size does not divide (the kernels read weights through
        pointers of their type) and files that cannot be mapped are read as `read_rows` reads.
        """
        info = self.tensors[name]
        stop = (info.shape[0] if info.shape else 1) if stop is None else stop
        offset = info.start + start * info.row_bytes
        size = (stop - start) * info.row_bytes
        first = offset - offset % mmap.ALLOCATIONGRANULARITY
        if not info.shape or not size or (offset - first) % info.dtype.itemsize:
            return self.read_rows(name, start, stop if info.shape else None)
        try:
            pages = mmap.mmap(self._fd, offset + size - first, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=first)
        except ValueError as exc:  # the file is shorter than its header says
            raise CheckpointError(f"{self.path} ended early: it is truncated; re-download or re-create it") from exc
        except OSError:  # a file system that cannot map files
            return self.read_rows(name, start, stop)
        # The tensor holds the mapping alive; the mapping holds a duplicate of the descriptor.
        raw = torch.frombuffer(pages, dtype=torch.uint8, count=size, offset=offset - first)
        return raw.view(info.dtype).reshape((stop - start, *info.shape[1:]))

    def _pread(self, offset: int, size: int) -> torch.Tensor:
        # An uninitialised tensor: the read fills every byte, so zeroing it first would be a wasted pass.
        out = torch.empty(size, dtype=torch.uint8)
        view = memoryview(out.numpy())
        done = 0
        while done < size:
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n <= 0:
                raise CheckpointError(f"{self.path} ended early: it is truncated; re-download or re-create it")
            done += n
        return out


def tensor_bytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Bytes a tensor of this shape and dtype takes."""
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def _header_entry(name: str, dtype: torch.dtype, shape: tuple[int, ...], begin: int, end: int) -> str:
    return json.dumps({name: {"dtype": DTYPE_CODES[dtype], "shape": list(shape), "data_offsets": [begin, end]}})[1:-1]


@dataclass
class _Pending:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    written: int = 0


class ShardWriter:
    """Writes tensors into size-capped safetensors shards, streaming each tensor's bytes.

    Args:
        directory: where shards go (a temporary output directory, renamed by the caller).
        prefix: shard file stem: `model` gives `model.safetensors` or `model-00001-of-00002.safetensors`.
        max_shard_bytes: a new shard starts before a tensor that would push the current one past this.
        metadata: string metadata stored in every shard header.
        expected: every (name, shape, dtype) that may be written, in order; sizes the reserved header.

    Example:
        >>> w = ShardWriter(tmp, "model", 2**30, {"format": "pt"}, plan)
        >>> w.begin("a", (4, 4), torch.bfloat16); w.write(t); w.finish()
    """

    def __init__(
        self,
        directory: Path,
        prefix: str,
        max_shard_bytes: int,
        metadata: dict[str, str],
        expected: list[tuple[str, tuple[int, ...], torch.dtype]],
    ) -> None:
        self.directory = Path(directory)
        self.prefix = prefix
        self.max_shard_bytes = max_shard_bytes
        self.metadata = metadata
        self._remaining = {name: (tuple(shape), dtype) for name, shape, dtype in expected}
        self._shards: list[tuple[Path, dict[str, tuple]]] = []
        self._file = None
        self._stream: direct.Stream | None = None
        self._stage = direct.stage()  # reused by every shard; pages only where touched
        self._entries: list[tuple[str, torch.dtype, tuple[int, ...], int, int]] = []
        self._offset = 0
        self._reserve = 0
        self._pending: _Pending | None = None
        self.total_bytes = 0
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rvec-shard-writer")
        self._in_flight: deque[Future] = deque()

    def begin(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        """Start a tensor; its bytes follow through `write` calls, in row order."""
        if self._pending is not None:
            self._end_tensor()
        nbytes = tensor_bytes(shape, dtype)
        if self._stream is None or (self._offset and self._offset + nbytes > self.max_shard_bytes):
            self._close_shard()
            self._open_shard()
        self._pending = _Pending(name, dtype, tuple(shape), nbytes)
        self._remaining.pop(name, None)

    def write(self, chunk: torch.Tensor, *, owned: bool = False, written: Callable[[], None] | None = None) -> None:
        """Append rows of the current tensor (any leading row count).

        Args:
            chunk: the rows. Copied before this returns, because callers reuse their buffers, unless
                `owned`: the caller hands the tensor over and leaves it alone until `written` is called.
            written: with `owned`, called on the writer's thread once the writer holds the rows' bytes
                (staged or in the file) or the write failed: their memory may be reused from then on.
        """
        pending = self._pending
        if chunk.dtype != pending.dtype:
            raise TypeError(f"{pending.name}: got {chunk.dtype}, expected {pending.dtype}")
        data = chunk.contiguous().reshape(-1).view(torch.uint8).numpy()
        if not owned:
            data = data.tobytes()
        future = self._io.submit(self._stream.write, data)
        if owned and written is not None:
            future.add_done_callback(lambda _: written())
        self._in_flight.append(future)
        while len(self._in_flight) > _WRITES_IN_FLIGHT:
            self._in_flight.popleft().result()
        pending.written += len(data)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write a whole tensor."""
        self.begin(name, tuple(tensor.shape), tensor.dtype)
        self.write(tensor)

    def finish(self) -> list[tuple[Path, list[str]]]:
        """Close the last shard, give shards their final names and write the index when sharded.

        Returns:
            (path, tensor names) for every shard written.
        """
        if self._pending is not None:
            self._end_tensor()
        self._close_shard()
        if not self._shards:
            self._open_shard()
            self._close_shard()
        self._io.shutdown()
        count = len(self._shards)
        result = []
        weight_map = {}
        for i, (tmp, names) in enumerate(self._shards, 1):
            final = self.directory / (f"{self.prefix}.safetensors" if count == 1 else f"{self.prefix}-{i:05d}-of-{count:05d}.safetensors")
            os.replace(tmp, final)
            result.append((final, list(names)))
            weight_map.update({n: final.name for n in names})
        if count > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.directory / f"{self.prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return result

    def _end_tensor(self) -> None:
        p = self._pending
        if p.written != p.nbytes:
            raise ValueError(f"{p.name}: wrote {p.written} bytes, expected {p.nbytes}")
        self._entries.append((p.name, p.dtype, p.shape, self._offset, self._offset + p.nbytes))
        self._offset += p.nbytes
        self.total_bytes += p.nbytes
        self._pending = None

    def _open_shard(self) -> None:
        meta = json.dumps({"__metadata__": self.metadata})[1:-1]
        # Room for the header of every tensor that could still land in this shard, offsets at 20 digits;
        # the tensor bytes start at a page boundary, as writes past the page cache need.
        worst = sum(len(_header_entry(n, d, s, 10**19, 10**19)) + 1 for n, (s, d) in self._remaining.items())
        self._reserve = -(-(8 + len(meta) + worst + 2) // direct.ALIGN) * direct.ALIGN - 8
        path = self.directory / f".{self.prefix}-shard-{len(self._shards):05d}.partial"
        self._file = open(path, "wb")  # written through its descriptor alone, by offset
        self._stream = direct.Stream(path, self._file.fileno(), 8 + self._reserve, self._stage)
        self._entries = []
        self._offset = 0
        self._shards.append((path, []))

    def _drain(self) -> None:
        while self._in_flight:
            self._in_flight.popleft().result()

    def _close_shard(self) -> None:
        if self._stream is None:
            return
        self._drain()
        self._stream.close()
        meta = json.dumps({"__metadata__": self.metadata})[1:-1]
        parts = [meta] + [_header_entry(*e) for e in self._entries]
        header = ("{" + ",".join(parts) + "}").encode()
        if len(header) > self._reserve or self._reserve > _MAX_HEADER:
            raise ValueError("safetensors header outgrew its reserved space")
        direct.pwrite_all(self._file.fileno(), struct.pack("<Q", self._reserve) + header + b" " * (self._reserve - len(header)), 0)
        self._file.close()
        self._file = self._stream = None
        self._shards[-1][1].extend(e[0] for e in self._entries)
