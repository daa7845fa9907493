"""A Hub-protocol server: the unmodified `huggingface_hub` client can push to and pull from it.

Public API:
    create_app(root, tokens) -> FastAPI
    serve(root, host="127.0.0.1", port=8080, tokens=None)
    running_server(root, tokens) -> context manager yielding the base URL
    load_tokens(token_file=None, environ=None) -> {username: token}
"""

from __future__ import annotations

from rvec_hub.hub.server.app import create_app
from rvec_hub.hub.server.auth import load_tokens
from rvec_hub.hub.server.runner import running_server, serve

__all__ = ["create_app", "load_tokens", "running_server", "serve"]
