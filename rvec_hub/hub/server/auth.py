"""Tokens and who may do what.

Tokens come only from the server's side: a token file (`username token` per line) and/or the
environment (`RVEC_HUB_TOKEN`, user `RVEC_HUB_USER`, default `admin`). They are compared in constant
time and never written to logs or error messages.

Rules: reading a public repo needs nothing; a private repo is visible only to the user whose name is
its namespace (to everyone else it does not exist: 404 RepoNotFound). Writing needs a token, and a
user writes only under their own namespace.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from rvec_hub.errors import UsageError
from rvec_hub.hub.server.api_errors import forbidden, invalid_token, repo_not_found, unauthorized
from rvec_hub.hub.server.models import RepoRecord

MIN_TOKEN_LENGTH = 16
ENV_TOKEN = "RVEC_HUB_TOKEN"
ENV_USER = "RVEC_HUB_USER"
DEFAULT_ENV_USER = "admin"


def load_tokens(token_file: Path | None = None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Read the server's tokens from a token file and/or the environment.

    Args:
        token_file: file with one `username token` pair per line; blank lines and `#` comments skipped.
        environ: where to read `RVEC_HUB_TOKEN` / `RVEC_HUB_USER` (defaults to `os.environ`).

    Returns:
        `{username: token}`.

    Example:
        >>> load_tokens(None, {"RVEC_HUB_TOKEN": "0123456789abcdef"})
        {'admin': '0123456789abcdef'}
    """
    environ = os.environ if environ is None else environ
    tokens: dict[str, str] = {}
    problems: list[str] = []
    if token_file is not None:
        try:
            lines = Path(token_file).read_text().splitlines()
        except OSError as err:
            raise UsageError(f"cannot read token file {token_file}: {err.strerror}; check --token-file") from None
        for number, line in enumerate(lines, start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            parts = stripped.split()
            if len(parts) != 2:  # never echo the line: it may hold a token
                problems.append(f"line {number}: expected 'username token'")
            elif parts[0] in tokens:
                problems.append(f"line {number}: user {parts[0]!r} appears twice")
            else:
                tokens[parts[0]] = parts[1]
    env_token = environ.get(ENV_TOKEN, "").strip()
    if env_token:
        user = environ.get(ENV_USER, "").strip() or DEFAULT_ENV_USER
        if user in tokens and tokens[user] != env_token:
            problems.append(f"{ENV_TOKEN} gives user {user!r} a token different from the token file's")
        tokens[user] = env_token
    if problems:
        raise UsageError(f"invalid tokens in {token_file or 'the environment'}", problems=problems)
    check_tokens(tokens)
    return tokens


def check_tokens(tokens: Mapping[str, str]) -> None:
    """Refuse empty, short or shared tokens (a shared token would make the user ambiguous)."""
    seen: set[str] = set()
    for user, token in tokens.items():
        if not token or not user:
            raise UsageError(f"user {user!r} has an empty name or token; give every user a non-empty token")
        if len(token) < MIN_TOKEN_LENGTH:  # never echo the token itself
            raise UsageError(
                f"the token of user {user!r} has {len(token)} characters; tokens need at least {MIN_TOKEN_LENGTH} "
                "(make one with `openssl rand -hex 16`)"
            )
        if token in seen:
            raise UsageError("two users share one token; give every user their own token")
        seen.add(token)


@dataclass(frozen=True)
class TokenTable:
    """Maps bearer tokens to user names."""

    users_by_token: tuple[tuple[str, str], ...]

    @classmethod
    def from_user_tokens(cls, tokens: Mapping[str, str]) -> TokenTable:
        """Build from `{username: token}`."""
        check_tokens(tokens)
        return cls(tuple((token, user) for user, token in tokens.items()))

    def user_for(self, token: str) -> str | None:
        """The user owning `token`, compared in constant time, or None."""
        found = None
        for known, user in self.users_by_token:
            if hmac.compare_digest(known.encode(), token.encode()):
                found = user
        return found

    def caller(self, request: Request) -> str | None:
        """User making the request; None when anonymous; 401 for an unknown token."""
        header = request.headers.get("authorization")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise invalid_token()
        user = self.user_for(token.strip())
        if user is None:
            raise invalid_token()
        return user


def can_read(repo: RepoRecord, user: str | None) -> bool:
    """Whether `user` may see `repo`."""
    return not repo.private or user == repo.namespace


def require_read(repo: RepoRecord, user: str | None) -> None:
    """404 RepoNotFound unless `user` may see `repo` (a private repo's existence is not revealed)."""
    if not can_read(repo, user):
        raise repo_not_found(repo.repo_id)


def require_user(user: str | None) -> str:
    """401 unless the request carried a valid token."""
    if user is None:
        raise unauthorized()
    return user


def require_write(repo: RepoRecord, user: str | None) -> str:
    """The writing user; 401 anonymous, 404 for a private repo of someone else, 403 otherwise."""
    user = require_user(user)
    require_read(repo, user)
    if user != repo.namespace:
        raise forbidden(f"user {user!r} cannot write to {repo.repo_id}: users write only under their own namespace")
    return user


def require_namespace(namespace: str, user: str | None) -> str:
    """The user, if they may create repos in `namespace`."""
    user = require_user(user)
    if user != namespace:
        raise forbidden(f"user {user!r} cannot create repos under {namespace!r}; use your own namespace {user!r}")
    return user
