"""Scales (α) as users write them: `VEC:ALPHA` specs and the range a float32 weight can take.

Kept free of torch, so that light commands such as `rvec swap` start fast.
"""

from __future__ import annotations

import math

from .errors import UsageError
from .manifest import ALPHA_LIMIT


def check_alpha(alpha: object, source: str = "alpha") -> float:
    """`alpha` as a float, refused when NaN, infinite or beyond what float32 weights can take.

    Args:
        alpha: the scale, from a flag, a `VEC:ALPHA` suffix or a manifest's `default_alpha`.
        source: where it came from, for the message.

    Raises:
        UsageError: naming the source and the value.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or abs(alpha) > ALPHA_LIMIT:
        raise UsageError(f"{source} {alpha!r} is not a finite scale a float32 can hold (|alpha| ≤ {ALPHA_LIMIT:.4g}); use a value like 1.0 or -0.5")
    return float(alpha)


def split_alpha(spec: str) -> tuple[str, float | None]:
    """`REF:ALPHA` → (REF, ALPHA); a spec without a numeric suffix has no alpha.

    Raises:
        UsageError: a suffix that parses as a number but is NaN, infinite or beyond float32 (`vec:nan`, `vec:1e39`).
    """
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            value = float(tail)
        except ValueError:
            return spec, None
        return head, check_alpha(value, f"alpha in {spec!r}:")
    return spec, None
