"""Running the server: in the foreground (`serve`) or on a background thread for tests."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from rvec_hub.errors import HubError
from rvec_hub.hub.server.app import create_app
from rvec_hub.hub.server.guard import BodyLimits

logger = logging.getLogger(__name__)


def serve(
    root: Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    tokens: Mapping[str, str] | None = None,
    *,
    log_level: str = "info",
    limits: BodyLimits | None = None,
    allow_version_tag_rewrite: bool = False,
) -> None:
    """Serve the repos under `root` until interrupted.

    Args:
        root: storage directory.
        host: interface to bind; keep 127.0.0.1 unless a TLS proxy fronts the server.
        port: TCP port.
        tokens: `{username: token}` (see `load_tokens`); None or empty serves read-only.
        log_level: uvicorn log level. Access logs show paths, never the Authorization header.
        limits: body size limits (see `BodyLimits`).
        allow_version_tag_rewrite: let owners delete version tags and repos that have them.

    Example:
        >>> serve(Path("/srv/hub"), port=8080, tokens=load_tokens(Path("tokens.txt")))  # doctest: +SKIP
    """
    tokens = dict(tokens or {})
    if not tokens:
        logger.warning("no tokens configured: the hub is read-only (pass --token-file or set RVEC_HUB_TOKEN)")
    app = create_app(Path(root), tokens, limits=limits, allow_version_tag_rewrite=allow_version_tag_rewrite)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def _free_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


@contextmanager
def running_server(
    root: Path,
    tokens: Mapping[str, str] | None = None,
    *,
    host: str = "127.0.0.1",
    page_size: int = 1000,
    startup_timeout_s: float = 20.0,
    **app_options: object,
) -> Iterator[str]:
    """Run the server on a free port in a background thread; yield its URL, stop it on exit.

    Args:
        root: storage directory.
        tokens: `{username: token}`.
        host: interface to bind.
        page_size: entries per listing page (small values exercise pagination).
        startup_timeout_s: how long to wait for the server to accept connections.
        app_options: more `create_app` options (`limits`, `allow_version_tag_rewrite`, `throttle`).

    Example:
        >>> with running_server(tmp_path / "hub", {"alice": "tok"}) as url:  # doctest: +SKIP
        ...     HfApi(endpoint=url, token="tok").create_repo("alice/demo")
    """
    app = create_app(Path(root), dict(tokens or {}), page_size=page_size, **app_options)  # type: ignore[arg-type]
    sock = _free_socket(host)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"rvec-hub-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise HubError(f"the hub server did not start on {host}:{port}; rerun with RVEC_DEBUG=1 for details")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
