"""Atomic output directories: build in a hidden sibling, rename into place, remove on any failure."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputExistsError


@contextmanager
def atomic_directory(target: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes `target` only if the block succeeds.

    Args:
        target: the final directory.
        force: replace an existing `target` (it is removed only after the new one is complete).

    Example:
        >>> with atomic_directory(Path("out")) as tmp:
        ...     (tmp / "a.txt").write_text("x")
    """
    target = Path(target)
    if target.exists() and not force:
        raise OutputExistsError(f"{target} already exists; choose another path or pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.rvec-tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        replace_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_directory(source: Path, target: Path) -> None:
    """Rename a finished `source` to `target`; an existing `target` is removed only after the swap."""
    if target.exists():
        old = target.parent / f".{target.name}.rvec-old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)
