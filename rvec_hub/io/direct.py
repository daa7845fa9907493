"""A file's bulk written past the page cache.

An output of rvec (a merged model, a vector) is gigabytes written once and read later, if at all, by
another process. Through the page cache every 4 KB of it is a page the kernel allocates, fills and writes
back; on a virtual machine that hands free memory back to its host, each of those pages may be a fault in the
host as well. Writing 3 GiB from one reused 8 MiB buffer on a 2-core AMD EPYC virtual machine took 3.7–9.1 s
(3.6–6.1 s of it system time) through the page cache and 1.1–1.2 s (0.14–0.17 s system) with O_DIRECT.
The cost: the file is not left in the page cache, so the first read after it comes from the disk.

O_DIRECT wants offsets, lengths and buffer addresses aligned to the device's block; `Stream` copies bytes
into a page-aligned staging buffer and writes it whole, at aligned offsets. The last partial block goes
through an ordinary descriptor, and so does everything on a file system that refuses O_DIRECT (tmpfs on
older kernels, some network and FUSE file systems).
"""

from __future__ import annotations

import errno
import mmap
import os
import weakref
from pathlib import Path

# A page: a multiple of every logical block size in use (512 and 4096 bytes).
ALIGN = 4096
STAGE_BYTES = 8 << 20


def stage(nbytes: int | None = None) -> mmap.mmap:
    """A page-aligned staging buffer (`STAGE_BYTES` by default); one serves every `Stream` written one after another."""
    return mmap.mmap(-1, nbytes or STAGE_BYTES)


class Stream:
    """Bytes appended to a file from an aligned offset, past the page cache where the file system allows.

    Args:
        path: the file, already created; `fd` is an ordinary descriptor open on it for writing.
        fd: written through for the last partial block and wherever O_DIRECT is refused; the caller
            closes it.
        offset: where the bytes start, a multiple of `ALIGN`.
        buffer: from `stage`; its size a multiple of `ALIGN`.

    Example:
        >>> s = Stream(path, fd, 4096, stage()); s.write(b"..."); s.close()
    """

    def __init__(self, path: Path, fd: int, offset: int, buffer: mmap.mmap) -> None:
        if offset % ALIGN or len(buffer) % ALIGN:
            raise ValueError(f"offset {offset} and staging size {len(buffer)} must be multiples of {ALIGN}")
        self._fd = fd
        self._pos = offset
        self._stage = memoryview(buffer)
        self._fill = 0
        try:
            self._direct = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError:  # no O_DIRECT here: everything goes through `fd`
            self._direct = -1
        else:  # closed once, by `close` or when a failed write abandons the stream
            self._closer = weakref.finalize(self, os.close, self._direct)

    @property
    def direct(self) -> bool:
        """Whether whole staged blocks still go past the page cache."""
        return self._direct >= 0

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes (anything with the buffer protocol); they may stay staged until `close`."""
        data = memoryview(data).cast("B")
        if self._direct < 0 and not self._fill:
            pwrite_all(self._fd, data, self._pos)
            self._pos += len(data)
            return
        done = 0
        while done < len(data):
            n = min(len(self._stage) - self._fill, len(data) - done)
            self._stage[self._fill : self._fill + n] = data[done : done + n]
            self._fill += n
            done += n
            if self._fill == len(self._stage):
                self._flush()

    def close(self) -> None:
        """Write what is staged and release the O_DIRECT descriptor (not `fd`)."""
        try:
            pwrite_all(self._fd, self._stage[: self._fill], self._pos)
            self._pos += self._fill
            self._fill = 0
        finally:
            self._stop_direct()
            self._stage.release()

    def _flush(self) -> None:
        written = 0
        if self._direct >= 0:
            try:
                written = os.pwrite(self._direct, self._stage, self._pos)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                self._stop_direct()  # opened, but refused at the first write
        pwrite_all(self._fd, self._stage[written:], self._pos + written)
        self._pos += self._fill
        self._fill = 0

    def _stop_direct(self) -> None:
        if self._direct >= 0:
            self._closer()
            self._direct = -1


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """`os.pwrite` until every byte is written."""
    data = memoryview(data).cast("B")
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)
