"""What the Hub tests share: two users with tokens, and a real server on 127.0.0.1 per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rvec_hub.hub.server import running_server

ALICE, BOB = "alice-token-0123456789", "bob-token-9876543210"
TOKENS = {"alice": ALICE, "bob": BOB}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Storage of the test's Hub server."""
    return tmp_path / "hub-root"


@pytest.fixture
def url(root: Path) -> Iterator[str]:
    """A running Hub server (small pages, so listings paginate)."""
    with running_server(root, TOKENS, page_size=3) as base:
        yield base


@pytest.fixture
def unverified_url(root: Path) -> Iterator[str]:
    """A Hub server that serves stored bytes without hashing them: a broken or hostile Hub for client checks."""
    with running_server(root, TOKENS, page_size=3, verify_blobs=False) as base:
        yield base
