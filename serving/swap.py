"""`rvec swap`: the client side of a live swap, posting new vectors to a running `rvec serve`."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from rvec_hub.errors import RvecError, UsageError

from .wire import ADMIN_PATH, ADMIN_TOKEN_ENV, VectorSpec


def admin_token(token_file: str | None) -> str:
    """The admin token from `token_file`, else `RVEC_ADMIN_TOKEN`.

    Raises:
        UsageError: when neither gives one.
    """
    if token_file is not None:
        try:
            return Path(token_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read the admin token file {token_file}: {exc.strerror}") from None
    token = os.environ.get(ADMIN_TOKEN_ENV)
    if not token:
        raise UsageError(f"a swap needs the server's admin token: pass --token-file FILE or set {ADMIN_TOKEN_ENV}")
    return token


def swap(server: str, specs: list[VectorSpec], token: str, *, timeout: float = 900.0) -> dict:
    """Ask a running `rvec serve` to serve `specs` instead of its current vectors.

    Local vector directories are sent as absolute paths (the server resolves them on its own file system);
    Hub references are pulled and verified by the server.

    Args:
        server: the server's address, e.g. `http://127.0.0.1:8000` (a trailing `/v1` is accepted).
        specs: the vectors to serve from now on, each with its alpha.
        token: the admin token the server was started with.

    Returns:
        The server's answer: the vectors now served and the seconds each phase took.

    Raises:
        RvecError: with the server's reason when it refuses (the previous vectors keep serving).

    Example:
        >>> swap("http://127.0.0.1:8000", [VectorSpec("./vec-b", 0.5)], token)
    """
    entries = []
    for spec in specs:
        ref = str(Path(spec.ref).resolve()) if Path(spec.ref).exists() else spec.ref
        entries.append(VectorSpec(ref, spec.alpha).to_json())
    url = server.rstrip("/").removesuffix("/v1") + ADMIN_PATH
    request = urllib.request.Request(
        url, data=json.dumps({"vectors": entries}).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RvecError(f"{url} refused the swap ({exc.code}): {_reason(exc, token)}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RvecError(f"cannot reach {url}: {reason}; is `rvec serve --admin-token-file` running there?") from None


def _reason(exc: urllib.error.HTTPError, token: str) -> str:
    try:
        text = json.loads(exc.read()).get("error", "")
    except (ValueError, AttributeError):
        text = exc.reason
    # A proxy may echo the request back; the token must not reach the terminal.
    return str(text).replace(token, "***")
