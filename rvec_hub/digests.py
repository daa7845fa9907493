"""Digests remembered per file, so that a payload rvec wrote or verified is not hashed again while unchanged.

Hashing is most of the time `apply` and a server start spend on a vector once the merge itself is fast:
988 MB of sha256 is about a second of one core. Like git's index, a record holds a file's digest with its
device, inode, size, modification time and change time, taken before it was read, and is found by device
and inode, so it follows a file that is renamed or whose folder is (as every output is, into place). It
counts only while all five are unchanged. Any write to the file moves its change time, which no user
can set back, and a replaced or copied file has another inode. File times come from a clock that ticks
every few milliseconds, so a read starts only once the file's change time is a safe margin in the past:
a write during or after the read then always shows. So a record stands for exactly the bytes that were hashed.

What a record does not catch is a change below the file system, such as a failing disk flipping bits.
`rvec check` therefore always reads and hashes every file, and `RVEC_VERIFY=full` makes every command do so.

Records live in `$HF_HOME/rvec/digests/` (`HF_HOME` defaults to `~/.cache/huggingface`), one small JSON
file per payload file, written beside and renamed. A record that cannot be written is simply not kept.
The folder keeps the `KEEP` most recently written records: past that, writing one removes the oldest
quarter (a file whose record went is hashed again on its next open, and recorded again).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

from .defaults import hf_rvec_dir

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
KEEP = 4096  # records, about 250 bytes each


def record_dir() -> Path:
    """`$HF_HOME/rvec/digests`, read from the environment when called."""
    return hf_rvec_dir("digests")


# Well over two ticks of the kernel's coarse file-time clock (at most 10 ms at HZ=100).
_SETTLE_NS = 30_000_000


def settled(real: Path) -> os.stat_result | None:
    """The status of `real` once its change time is `_SETTLE_NS` in the past (waits at most that long);
    None when no record should be made (records are off, or the change time lies in the future)."""
    if not trusted():
        return None
    st = os.stat(real)
    wait = st.st_ctime_ns + _SETTLE_NS - time.time_ns()
    if wait > _SETTLE_NS:
        return None
    if wait > 0:
        time.sleep(wait / 1e9)
        st = os.stat(real)
    return st


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _record_path(st: os.stat_result) -> Path:
    return record_dir() / f"{hashlib.sha256(f'{st.st_dev}:{st.st_ino}'.encode()).hexdigest()}.json"


def trusted() -> bool:
    """Whether records may stand in for hashing (`RVEC_VERIFY=full` says no)."""
    return os.environ.get("RVEC_VERIFY", "").strip().lower() != "full"


def recorded(real: Path) -> str | None:
    """The sha256 recorded for the file `real`, if it is unchanged since; else None."""
    if not trusted():
        return None
    try:
        st = os.stat(real)
        record = json.loads(_record_path(st).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("stat") != _identity(st):
        return None
    digest = record.get("sha256")
    return digest if isinstance(digest, str) and _SHA256.match(digest) else None


def record(real: Path, before: os.stat_result, digest: str) -> None:
    """Remember `digest` for `real`, hashed from a read that began when the file's status was `before`
    (from `settled`).

    Nothing is kept if the file changed while it was read.
    """
    try:
        if _identity(os.stat(real)) != _identity(before):
            return
        target = _record_path(before)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"stat": _identity(before), "sha256": digest}, f)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _prune(target.parent)
    except OSError:
        return


def _prune(folder: Path) -> None:
    """Past `KEEP` records, remove the oldest written until three quarters of `KEEP` remain."""
    with os.scandir(folder) as it:
        names = [e.name for e in it if e.name.endswith(".json") and not e.name.startswith(".")]
    if len(names) <= KEEP:
        return
    ages = []
    for name in names:
        try:
            ages.append((os.stat(folder / name).st_mtime_ns, name))
        except OSError:  # another process removed it meanwhile
            continue
    for _, name in sorted(ages)[: max(0, len(ages) - KEEP * 3 // 4)]:
        (folder / name).unlink(missing_ok=True)
