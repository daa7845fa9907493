"""Atomic outputs: build in a hidden sibling, rename into place, remove on any failure or signal.

An output never overlaps an input: a path that equals, lies inside or contains a file the command reads
is refused before anything is written, `--force` or not, so replacing the output can never delete the
base, a vector, a donor or the cache they came from. The rename and the clean-up run with SIGINT and
SIGTERM held back, so a signal cannot leave `.NAME.rvec-tmp-*` or `.NAME.rvec-old-*` behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputExistsError, UsageError

_HELD = (signal.SIGINT, signal.SIGTERM)
_ARRIVED: list[int] = []  # signals the CLI's handlers saw (`record_signal`)


def record_signal(signum: int) -> None:
    """Note that `signum` arrived, from a handler that then raises. Python drops an exception raised where it
    ignores errors (a weak reference's callback, the import system's clean-up of a module lock) and the run
    would go on as if never interrupted: an output is not put in place after a recorded signal
    (`replace_directory`), and the CLI exits as interrupted."""
    _ARRIVED.append(signum)


def forget_signals() -> None:
    """Clear the record (the CLI does at the start and end of each command)."""
    _ARRIVED.clear()


def _act_on_recorded_signal() -> None:
    """Raise what the first signal recorded since `forget_signals` has its handler raise, as if it had arrived now."""
    if _ARRIVED:
        signum = _ARRIVED[0]
        handler = signal.getsignal(signum)
        if callable(handler):
            handler(signum, None)
        raise KeyboardInterrupt


def refuse_overlap(target: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Raise UsageError when `target` equals, lies inside or contains any input (paths resolved through symlinks).

    Args:
        target: the output path a command would create or replace.
        inputs: every file or directory the command reads (None entries are skipped).

    Example:
        >>> refuse_overlap("out", ["base", "vec"])
    """
    out = Path(target).resolve()
    for item, inp in _resolved(inputs):
        if out == inp:
            how = "is"
        elif inp.is_relative_to(out):
            how = "contains"
        elif out.is_relative_to(inp):
            how = "lies inside"
        else:
            continue
        raise UsageError(
            f"output {target} {how} the input {item}{'' if str(item) == str(inp) else f' ({inp})'}; "
            "choose an output directory outside every input (--force never replaces an input)"
        )


def _resolved(inputs: Iterable[str | Path | None]) -> Iterator[tuple[str | Path, Path]]:
    """Each input resolved, and inside an input directory every symlink's target (a Hub cache snapshot links to its blobs)."""
    for item in inputs:
        if item is None:
            continue
        path = Path(item)
        yield item, path.resolve()
        if path.parent.name == "snapshots":  # a Hub cache snapshot: its repository folder holds the blobs and refs
            yield item, path.parent.parent.resolve()
        if path.is_dir():
            for link in path.rglob("*"):
                if link.is_symlink():
                    yield link, link.resolve()


@contextmanager
def atomic_directory(target: Path, *, force: bool = False, inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes `target` only if the block succeeds.

    Args:
        target: the final directory.
        force: replace an existing `target` (it is removed only after the new one is complete).
        inputs: what the command reads; a `target` overlapping one of them is refused, even with `force`.

    Raises:
        UsageError: `target` overlaps an input. OutputExistsError: it exists and `force` is off.

    Example:
        >>> with atomic_directory(Path("out"), inputs=["vec"]) as tmp:
        ...     (tmp / "a.txt").write_text("x")
    """
    target = Path(target)
    refuse_overlap(target, inputs)
    if (target.exists() or target.is_symlink()) and not force:
        raise OutputExistsError(f"{target} already exists; choose another path or pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.rvec-tmp-{uuid.uuid4().hex[:8]}"
    try:
        # Created inside the try: a signal landing just after mkdir still removes it.
        tmp.mkdir()
        yield tmp
        replace_directory(tmp, target)
    except BaseException:
        with signals_held():
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_directory(source: Path, target: Path) -> None:
    """Rename a finished `source` to `target`; an existing `target` is removed only after the swap.

    If the swap fails, the old `target` is put back; no `.NAME.rvec-old-*` survives either way. After a
    recorded signal (`record_signal`) nothing is renamed: the signal's exception is raised instead.
    """
    _act_on_recorded_signal()
    with signals_held():
        if not (target.exists() or target.is_symlink()):
            os.replace(source, target)
            return
        old = target.parent / f".{target.name}.rvec-old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
        try:
            os.replace(source, target)
        except BaseException:
            os.replace(old, target)
            raise
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back inside the block and act on them after it (a no-op off the main thread).

    The Python-level handlers are swapped for a recorder rather than masking the signals, because a signal
    may land on any thread while its Python handler always runs on the main one.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: arrived.append(signum)) for sig in _HELD}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in arrived[:1]:
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)
