"""Keeping tokens out of everything rvec prints.

A Hub, a proxy or an OpenAI-compatible server may echo the request's `Authorization` header back in
an error body; rvec repeats what servers say in its messages, so every message that leaves the
process goes through `redact` first. It removes the tokens rvec could have sent (HF_TOKEN, the
stored `hf auth login` token, RVEC_HUB_TOKEN, RVEC_ADMIN_TOKEN, OPENAI_API_KEY, any token passed
explicitly) and
anything shaped like a bearer credential or a Hugging Face token.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "RVEC_HUB_TOKEN", "RVEC_ADMIN_TOKEN", "OPENAI_API_KEY")
MASK = "***"
_SHAPES = (
    re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=:-]{4,}"),
    re.compile(r"\b(Basic)(\s+)[A-Za-z0-9+/]{8,}={0,2}"),
)
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}")
_MIN_SECRET = 4  # shorter strings would mask ordinary words


def _stored_hf_token() -> str | None:
    """The token `hf auth login` stored, found the way huggingface_hub finds it (no import needed)."""
    path = os.environ.get("HF_TOKEN_PATH")
    if not path:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(os.environ.get("HF_HOME") or os.path.join(cache, "huggingface"), "token")
    try:
        return Path(path).read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def known_secrets(extra: Iterable[str | None] = ()) -> list[str]:
    """Tokens rvec might have sent, longest first."""
    values = [os.environ.get(name) for name in TOKEN_ENV_VARS] + [_stored_hf_token(), *extra]
    found = {v.strip() for v in values if isinstance(v, str) and len(v.strip()) >= _MIN_SECRET}
    return sorted(found, key=len, reverse=True)


def redact(text: str, extra: Iterable[str | None] = ()) -> str:
    """`text` with every known token and every bearer-shaped credential replaced by `***`.

    Args:
        text: a message about to be printed.
        extra: more secrets to remove (a token passed as an argument).

    Example:
        >>> redact("401: got Authorization: Bearer hf_abcdefghijkl")
        '401: got Authorization: Bearer ***'
    """
    for secret in known_secrets(extra):
        text = text.replace(secret, MASK)
    for shape in _SHAPES:
        text = shape.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return _HF_TOKEN.sub(MASK, text)
