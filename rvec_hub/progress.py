"""Progress bars for long work, silenced by `--quiet`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def progress(total: int, desc: str, *, quiet: bool = False, unit: str = "B") -> Iterator[tqdm]:
    """A byte-counting tqdm bar on stderr; a disabled one when `quiet`."""
    bar = tqdm(
        total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024 if unit == "B" else 1000,
        disable=quiet, file=sys.stderr, leave=False, dynamic_ncols=True,
    )
    try:
        yield bar
    finally:
        bar.close()
