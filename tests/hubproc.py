"""`rvec hub serve` as a real child process on 127.0.0.1, for tests that kill it, measure it or fuzz it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class HubProcess:
    """A running server: its URL, process and log file."""

    url: str
    process: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def memory_kib(self) -> dict[str, int]:
        """VmRSS (now) and VmHWM (peak so far) of the server process, in KiB."""
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
        return fields

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def write_token_file(path: Path, tokens: Mapping[str, str]) -> Path:
    path.write_text("".join(f"{user} {token}\n" for user, token in tokens.items()))
    return path


@contextmanager
def hub_process(root: Path, tokens: Mapping[str, str], *args: str, env: Mapping[str, str] | None = None,
                cwd: Path | None = None, startup_timeout_s: float = 60.0) -> Iterator[HubProcess]:
    """Start `rvec hub serve --root ROOT` with these tokens; stop it (SIGTERM, then SIGKILL) on exit.

    `cwd` runs `python -m rvec_hub.cli` from another directory, so that its `rvec_hub` is imported.
    """
    root.mkdir(parents=True, exist_ok=True)
    token_file = write_token_file(root.parent / f"{root.name}-tokens.txt", tokens)
    port = free_port()
    log = root.parent / f"{root.name}-server-{port}.log"
    command = [sys.executable, "-m", "rvec_hub.cli", "hub", "serve", "--root", str(root), "--port", str(port),
               "--token-file", str(token_file), *args]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                   cwd=cwd)
    server = HubProcess(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"rvec hub serve exited with {process.returncode}:\n{server.output()}")
            try:
                if httpx2.get(f"{server.url}/api/models", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"rvec hub serve did not start:\n{server.output()}")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
