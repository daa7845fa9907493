"""Normal permissions for finished outputs."""

from __future__ import annotations

import os
from pathlib import Path


def make_readable(directory: Path) -> None:
    """Give a finished output directory the permissions a download has (0755 / 0644, less the umask).

    safetensors creates its files 0600; adapters and vectors are meant to be shared like model files.
    """
    umask = os.umask(0)
    os.umask(umask)
    directory = Path(directory)
    directory.chmod(0o777 & ~umask)
    for path in directory.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
