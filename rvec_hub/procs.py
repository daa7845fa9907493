"""Servers rvec starts as child processes (`rvec demo`, `rvec eval`'s vLLM engine, the replication):
each runs in a process group of its own, is waited for over HTTP, and is stopped with its whole group
(vLLM's engine-core processes included) on the way out, on error too."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import RvecError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def background(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """Run `argv` in its own process group, its output into `log`; stop the whole group when the block ends."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        yield proc
    finally:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:  # children the server left behind in its group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    """Return once `url` answers; RvecError, naming `what` and its log, when `proc` exits first or
    `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:] or ["no output"]
            raise RvecError(f"{what} exited during start-up (code {proc.returncode}): {' | '.join(tail)}; its log is {log}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise RvecError(f"{what} did not answer {url} within {timeout:.0f} s; its log is {log}")
