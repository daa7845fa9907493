"""Progress bars for long work: on an interactive stderr only, and silenced the way the ecosystem silences them.

A bar is drawn when stderr is a terminal, unless `--quiet` was passed or `TQDM_DISABLE` or
`HF_HUB_DISABLE_PROGRESS_BARS` is set (the variables tqdm and huggingface_hub honour), so logs and pipes
get no carriage-return noise. `quiet_hub_bars` also switches off huggingface_hub's own download and upload
bars, for `-q`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

_TRUE = {"1", "true", "yes", "on"}


def bars_disabled(quiet: bool = False) -> bool:
    """True when no bar should be drawn: `quiet`, either environment switch, or a stderr that is not a terminal."""
    if quiet:
        return True
    if any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")):
        return True
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return True


@contextmanager
def progress(total: int, desc: str, *, quiet: bool = False, unit: str = "B") -> Iterator[tqdm]:
    """A tqdm bar on stderr (bytes by default); a disabled one when `bars_disabled(quiet)`."""
    bar = tqdm(
        total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024 if unit == "B" else 1000,
        disable=bars_disabled(quiet), file=sys.stderr, leave=False, dynamic_ncols=True,
    )
    try:
        yield bar
    finally:
        bar.close()


def quiet_hub_bars() -> None:
    """Switch off huggingface_hub's progress bars for the rest of the process (`rvec -q`)."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
