"""Vector references as users type them: a directory, or REPO_ID[@VERSION] (an optional :ALPHA is split off by `rvec_hub.alpha`)."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import FormatError, UsageError
from .vector import Vector

_REPO_RE = re.compile(r"^[\w.-]+/[\w.-]+(@[\w.+-]+)?$")


def is_hub_ref(ref: str) -> bool:
    """True for `owner/name` or `owner/name@version` that is not a local path."""
    return not Path(ref).exists() and bool(_REPO_RE.match(ref))


def open_vector(
    ref: str | Path, *, endpoint: str | None = None, token: str | None = None, quiet: bool = True, verify: bool | str = True
) -> Vector:
    """Open a vector from a directory or a Hub reference (pulled and verified into the cache).

    Args:
        ref: a vector directory, or `REPO_ID`, `REPO_ID@1.2.0`, `REPO_ID@latest`, `REPO_ID@<commit>`.
        endpoint: Hub endpoint for references.
        token: Hub token for private repositories.
        verify: for a local vector, as `Vector.open` takes it: True hashes every payload file first,
            "background" on a thread (the caller must `wait_verified()` before it publishes anything
            computed from it), False not at all (a caller that verifies it next). A Hub reference is
            verified when it is pulled.

    Returns:
        The opened, verified vector.

    Example:
        >>> open_vector("acme/qwen2.5-reasoning@1.0.0")
    """
    text = str(ref)
    if Path(text).exists():
        return Vector.open(text, verify=verify)
    if not _REPO_RE.match(text):
        raise FormatError(f"{text} is neither a vector directory nor a Hub reference like owner/name@1.0.0")
    try:
        from .hub.client import pull
    except ImportError as exc:  # pragma: no cover - the Hub client ships with rvec
        raise UsageError(f"Hub references need rvec's Hub client ({exc})") from exc
    result = pull(text, endpoint=endpoint, token=token, quiet=quiet)
    # pull verified every file against the manifest already.
    return Vector.open(result.path, verify=False)
