"""Turning `huggingface_hub` exceptions into one-line `HubError`s that say what to do next."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import httpx2
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import HubError, RvecError
from ..redact import redact

DEFAULT_ENDPOINT = "https://huggingface.co"
# A push refused for want of a token may meet an `rvec hub serve` that was given none, which is read-only.
READ_ONLY_HINT = ("; an `rvec hub serve` started without tokens is read-only: restart it with --token-file FILE "
                  "(one `user token` line each) or RVEC_HUB_TOKEN=TOKEN, and push with that token in HF_TOKEN")


def endpoint_of(endpoint: str | None) -> str:
    """The endpoint to use: the argument, else HF_ENDPOINT read now (not at import), else huggingface.co."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _scrub(text: str, token: str | None) -> str:
    # Our server never echoes a token, but another Hub or a proxy echoing headers might: never print one,
    # whether it was passed in or found by huggingface_hub (HF_TOKEN, the stored login).
    from huggingface_hub import get_token

    return redact(text, extra=(token, get_token()))


def _server_says(exc: HfHubHTTPError) -> str:
    message = exc.server_message or str(exc).splitlines()[0]
    return message.strip().rstrip(".")


@contextmanager
def hub_errors(repo_id: str | None, endpoint: str, *, token: str | None = None, writing: bool = False) -> Iterator[None]:
    """Re-raise what `huggingface_hub` throws as a `HubError` naming the repo, the endpoint and the fix.

    Args:
        repo_id: the repository the block talks about, for messages.
        endpoint: the Hub endpoint, for messages.
        token: a token to keep out of every message.
        writing: whether the block writes (401/403 then mean a missing or insufficient token).
    """
    where = f"{repo_id} on {endpoint}" if repo_id else endpoint
    try:
        yield
    except RepositoryNotFoundError as exc:
        if exc.response is not None and exc.response.status_code == 401 and "credentials" in str(exc).lower():
            raise HubError(f"the Hub at {endpoint} rejected the token; check HF_TOKEN or run `hf auth login`"
                           + (READ_ONLY_HINT if writing else "")) from None
        raise HubError(
            f"repository {repo_id} not found on {endpoint}; check the name, and if it is private set HF_TOKEN "
            "or run `hf auth login`"
        ) from None
    except RevisionNotFoundError as exc:
        raise HubError(_scrub(f"{where}: {_server_says(exc)}; list versions with `rvec versions {repo_id}`", token)) from None
    except EntryNotFoundError as exc:
        text = _server_says(exc) if isinstance(exc, HfHubHTTPError) else str(exc)
        raise HubError(_scrub(f"{where}: {text}; the repository is incomplete or not an rvec vector", token)) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        said = _scrub(_server_says(exc), token)
        if status == 401:
            action = "pushing" if writing else "this"
            raise HubError(f"{where}: {action} needs a valid token ({said}); set HF_TOKEN or run `hf auth login`"
                           + (READ_ONLY_HINT if writing else "")) from None
        if status == 403:
            raise HubError(f"{where}: not allowed ({said}); push under a namespace your token may write to") from None
        if status == 412:
            raise HubError(f"{where}: the repository changed while this command ran ({said}); run it again") from None
        if status == 413:
            raise HubError(f"{where}: too large for this Hub ({said})") from None
        raise HubError(f"{where}: the Hub answered {status}: {said}") from None
    except ValueError as exc:
        if isinstance(exc, RvecError):
            raise
        # huggingface_hub reports some server answers (LFS batch errors) as ValueError, server text included.
        said = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise HubError(_scrub(f"{where}: {said}", token)) from None
    except OfflineModeIsEnabled:
        raise HubError(f"HF_HUB_OFFLINE is set, so {where} cannot be reached; unset it or use a local vector directory") from None
    except (httpx2.TransportError, ConnectionError) as exc:
        if "xet-write-token" in str(exc) or "xet-read-token" in str(exc):
            # hf_xet is installed and the Hub (e.g. `rvec hub serve`) does not speak Xet.
            raise HubError(
                f"the Hub at {endpoint} does not accept Xet transfers; set HF_HUB_DISABLE_XET=1 and run again"
            ) from None
        raise HubError(
            f"cannot reach the Hub at {endpoint} ({type(exc).__name__}); check --endpoint / HF_ENDPOINT and that the "
            "server is running (`rvec hub serve`)"
        ) from None
