"""HTTP errors shaped the way `huggingface_hub.utils.hf_raise_for_status` reads them.

The client maps the `X-Error-Code` header to its exception types (RepoNotFound ->
RepositoryNotFoundError, RevisionNotFound -> RevisionNotFoundError, EntryNotFound ->
EntryNotFoundError) and shows `X-Error-Message`; the JSON body carries the same text.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from rvec_hub.errors import HubError

INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


class HubApiError(HubError):
    """An error the server answers with: status code, optional `X-Error-Code`, message and extra headers."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        error_code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_code = error_code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def to_response(self) -> JSONResponse:
        """The JSON response for this error, with the headers the client inspects."""
        headers = dict(self.headers)
        # Header values must be printable ASCII here; user-supplied names may carry anything else.
        headers["X-Error-Message"] = "".join(c if " " <= c <= "~" else "?" for c in str(self))
        if self.error_code is not None:
            headers["X-Error-Code"] = self.error_code
        return JSONResponse({**self.extra, "error": str(self)}, status_code=self.status_code, headers=headers)


async def handle_api_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI exception handler for `HubApiError`."""
    assert isinstance(exc, HubApiError)
    return exc.to_response()


def repo_not_found(repo_id: str) -> HubApiError:
    """404 RepoNotFound: the repo does not exist or the caller may not see it."""
    return HubApiError(404, f"Repository not found: {repo_id}", error_code="RepoNotFound")


def revision_not_found(repo_id: str, revision: str) -> HubApiError:
    """404 RevisionNotFound: no branch, tag or commit of that name."""
    return HubApiError(404, f"Invalid rev id: {revision} in {repo_id}", error_code="RevisionNotFound")


def entry_not_found(repo_id: str, path: str, commit: str | None = None) -> HubApiError:
    """404 EntryNotFound; carries X-Repo-Commit so the client can cache the absence."""
    headers = {"X-Repo-Commit": commit} if commit else None
    return HubApiError(
        404, f"Entry not found: {path} in {repo_id}", error_code="EntryNotFound", headers=headers
    )


def bad_request(message: str) -> HubApiError:
    """400 for a malformed request."""
    return HubApiError(400, message)


def unauthorized(message: str = "This action needs a token: pass `token=` or set HF_TOKEN") -> HubApiError:
    """401 for a missing token."""
    return HubApiError(401, message)


def invalid_token() -> HubApiError:
    """401 for a token the server does not know (the client then does not claim RepoNotFound)."""
    return HubApiError(401, INVALID_CREDENTIALS)


def forbidden(message: str) -> HubApiError:
    """403 for a valid token without the right to do this."""
    return HubApiError(403, message)


def conflict(message: str) -> HubApiError:
    """409 for something that already exists."""
    return HubApiError(409, message)


def precondition_failed(message: str) -> HubApiError:
    """412 for a stale `parentCommit`."""
    return HubApiError(412, message)
