"""No token ever reaches rvec's output, even when a server or proxy echoes the Authorization header back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2
import pytest

from hubproc import hub_process

HF_SECRET = "hf_SECRETtokenSECRETtoken123456"
OPENAI_SECRET = "sk-openai-SECRET-key-987654321"
ADMIN_SECRET = "admin-SECRET-token-0123456789"
SECRETS = (HF_SECRET, OPENAI_SECRET, ADMIN_SECRET, "SECRET")


class _Echo(BaseHTTPRequestHandler):
    """Answers everything with the configured status and a body quoting the request's headers."""

    status = 400

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        said = f"proxy refused {self.path}: you sent Authorization: {self.headers.get('Authorization')}"
        body = json.dumps({"error": said, "headers": dict(self.headers)}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Message", said)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo() -> Iterator[tuple[str, type[_Echo]]]:
    """A real HTTP server on 127.0.0.1 that echoes the Authorization header in its error bodies."""
    handler = type("Echo", (_Echo,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


ENV = {"HF_TOKEN": HF_SECRET, "OPENAI_API_KEY": OPENAI_SECRET, "RVEC_ADMIN_TOKEN": ADMIN_SECRET}


def _rvec(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`rvec ARGS` as its own process."""
    return subprocess.run([sys.executable, "-m", "rvec_hub.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **ENV, **(env or {})})


def _rvec_here(args: list[str], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
               ) -> subprocess.CompletedProcess:
    """`rvec ARGS` through the same entry point, in this process (file descriptors captured): many runs, fast."""
    from rvec_hub.cli._errors import run_cli
    from rvec_hub.cli.main import cli

    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    capfd.readouterr()
    code = run_cli(cli, list(args))
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def _assert_clean(result: subprocess.CompletedProcess, what: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, (what, output[-2000:])
    assert not any(secret in output for secret in SECRETS), (what, output[-2000:])
    assert "Traceback" not in output and "error:" in result.stderr, (what, output[-2000:])


COMMANDS = {
    "push": lambda url, vec, fam, tmp: ["push", str(vec), "alice/x", "--version", "1.0.0", "--endpoint", url],
    "pull": lambda url, vec, fam, tmp: ["pull", "alice/x@1.0.0", "-o", str(tmp / "o"), "--endpoint", url],
    "versions": lambda url, vec, fam, tmp: ["versions", "alice/x", "--endpoint", url],
    "search": lambda url, vec, fam, tmp: ["search", "reasoning", "--endpoint", url],
    "info": lambda url, vec, fam, tmp: ["info", "alice/x@1.0.0", "--endpoint", url],
    "check": lambda url, vec, fam, tmp: ["check", str(vec), "--base", "alice/base", "--endpoint", url],
    "apply": lambda url, vec, fam, tmp: ["apply", "alice/x@1.0.0", "--base", str(fam["instruct"]), "-o",
                                         str(tmp / "o"), "--endpoint", url],
    "compress": lambda url, vec, fam, tmp: ["compress", "alice/x@1.0.0", "-o", str(tmp / "o"), "--endpoint", url],
    "export peft": lambda url, vec, fam, tmp: ["export", "peft", "alice/x@1.0.0", "-o", str(tmp / "o"),
                                               "--endpoint", url],
    "extract": lambda url, vec, fam, tmp: ["extract", "--reference", "alice/sft", "--tuned", "alice/grpo", "-o",
                                           str(tmp / "o"), "--endpoint", url],
    "serve --dry-run": lambda url, vec, fam, tmp: ["serve", "--base", str(fam["instruct"]), "--vector",
                                                   "alice/x@1.0.0", "--dry-run", "--endpoint", url],
    "swap": lambda url, vec, fam, tmp: ["swap", "--server", url, "--vector", str(vec)],
    "eval --endpoint": lambda url, vec, fam, tmp: ["eval", "--endpoint", url + "/v1", "--tasks", "arith", "--limit", "1"],
}


def test_no_command_prints_a_token_a_server_echoes_back(
    echo: tuple[str, type[_Echo]], vector_dir: Path, family: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
) -> None:
    url, handler = echo
    for command, args in COMMANDS.items():
        _assert_clean(_rvec_here(args(url, vector_dir, family, tmp_path), monkeypatch, capfd), command)
    for status in (401, 403, 404, 422):  # each has its own message; each repeats the server's words
        handler.status = status
        for command in ("push", "pull", "versions", "search"):
            args = COMMANDS[command](url, vector_dir, family, tmp_path)
            _assert_clean(_rvec_here(args, monkeypatch, capfd), f"{command} ({status})")


def test_push_as_a_process_keeps_the_token_out(echo: tuple[str, type[_Echo]], vector_dir: Path) -> None:
    url, _ = echo
    result = _rvec("push", str(vector_dir), "alice/x", "--version", "1.0.0", "--endpoint", url)
    assert "Bearer ***" in result.stderr  # the server's words are shown, the token is not
    _assert_clean(result, "push")


def test_a_stored_login_token_is_kept_out_too(echo: tuple[str, type[_Echo]], tmp_path: Path) -> None:
    url, _ = echo
    (Path(os.environ["HF_HOME"]) / "token").write_text(HF_SECRET)  # what `hf auth login` stores
    result = subprocess.run([sys.executable, "-m", "rvec_hub.cli", "versions", "alice/x", "--endpoint", url],
                            capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if k != "HF_TOKEN"})
    assert "Bearer ***" in result.stderr  # the token was sent, and masked when echoed
    _assert_clean(result, "versions with a stored login")


def test_hub_serve_never_prints_its_tokens(tmp_path: Path) -> None:
    tokens = {"alice": "alice-SECRET-token-0123456789"}
    with hub_process(tmp_path / "hub", tokens, env={"RVEC_HUB_TOKEN": "admin-SECRET-hub-token-987", "RVEC_HUB_USER": "root"}) as server:
        for token in ("alice-SECRET-token-0123456789", "admin-SECRET-hub-token-987", "wrong-SECRET-token-000000"):
            httpx2.get(f"{server.url}/api/whoami-v2", headers={"Authorization": f"Bearer {token}"})
        output_while_running = server.output()
    assert "rvec hub: serving" in output_while_running and "GET /api/whoami-v2" in output_while_running
    assert "SECRET" not in server.output()
