"""Live swap: an authenticated admin endpoint inside vLLM's API server that changes the served vectors.

`rvec serve --admin-token-file FILE` adds this ASGI middleware to vLLM's server (`--middleware`). It answers
`GET /rvec/vectors` (what is served) and `POST /rvec/vectors` (serve these vectors now); every other path goes
to vLLM untouched. A swap:

1. opens the new vectors, verifies every payload file's sha256, their structure and that every value is finite
   (`rvec check VEC`), and checks them against the base, while the old weights keep serving; a vector that
   fails any of this is refused (409). All of it happens before the reload, because vLLM's in-place reload
   cannot be rolled back once it has started to replace parameters;
2. pauses the scheduler, waiting for requests in flight to finish on the old weights (new ones queue);
3. points the workers' load config at the new vectors and reloads the weights through vLLM's in-place reload
   (`update_config` + `reload_weights`), which runs the same rvec loader as start-up: base + Σ αᵢ·vᵢ;
4. resumes, so queued requests run on the new weights. The prefix cache is cleared with the pause.

If the reload fails all the same (an I/O error), the previous vectors are reloaded where vLLM allows it;
otherwise the error says to restart. Swaps are serialized.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .launch import ADMIN_TOKEN_FILE_ENV as TOKEN_FILE_ENV
from .wire import ADMIN_PATH as PATH
from .wire import ADMIN_TOKEN_ENV as TOKEN_ENV

MAX_BODY = 64 * 1024


def read_token() -> str | None:
    """The admin token from `RVEC_ADMIN_TOKEN`, else from the file `RVEC_ADMIN_TOKEN_FILE` names."""
    token = os.environ.get(TOKEN_ENV)
    if not token and os.environ.get(TOKEN_FILE_ENV):
        token = Path(os.environ[TOKEN_FILE_ENV]).read_text().strip()
    return token or None


class _Refused(Exception):
    """A request the admin endpoint answers with an error status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AdminMiddleware:
    """Pure ASGI middleware serving `/rvec/vectors`; vLLM adds it with `--middleware`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.token = read_token()
        self.lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") != PATH:
            await self.app(scope, receive, send)
            return
        try:
            self._authenticate(Headers(scope=scope))
            if scope["method"] == "GET":
                response = JSONResponse(_served(scope["app"].state.engine_client))
            elif scope["method"] == "POST":
                body = await _read_body(receive)
                response = JSONResponse(await self._swap(scope["app"].state.engine_client, body))
            else:
                raise _Refused(405, "use GET to read the served vectors or POST to swap them")
        except _Refused as exc:
            response = JSONResponse({"error": str(exc)}, status_code=exc.status)
        await response(scope, receive, send)

    def _authenticate(self, headers: Headers) -> None:
        if self.token is None:
            raise _Refused(403, f"the admin endpoint is off; start rvec serve with --admin-token-file or {TOKEN_ENV}")
        scheme, _, given = (headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise _Refused(401, "missing or wrong admin token (Authorization: Bearer TOKEN)")

    async def _swap(self, engine: Any, body: bytes) -> dict:
        from .spec import split_extra_config

        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _Refused(400, 'the body must be JSON: {"vectors": [{"ref": REF, "alpha": ALPHA}]}') from None
        if not isinstance(request, dict) or set(request) - {"vectors"}:
            raise _Refused(400, 'the body must be {"vectors": [{"ref": REF, "alpha": ALPHA}, ...]}')
        load_config = engine.vllm_config.load_config
        old = dict(load_config.model_loader_extra_config or {})
        try:
            specs, _, _ = split_extra_config({"vectors": request.get("vectors")})
        except Exception as exc:  # UsageError, or a bad alpha type
            raise _Refused(400, str(exc)) from None
        async with self.lock:
            started = time.perf_counter()
            try:
                resolved = await asyncio.to_thread(_prepare, engine.vllm_config.model_config.model, specs, old.get("endpoint"))
            except Exception as exc:
                raise _Refused(409, f"swap refused, still serving the previous vectors: {_one_line(exc)}") from None
            checked = time.perf_counter()
            new = {**old, "vectors": resolved}
            await engine.pause_generation(mode="wait", clear_cache=True)
            paused = time.perf_counter()
            try:
                await _reload(engine, new)
            except Exception as exc:
                try:
                    await _reload(engine, old)
                except Exception as again:
                    raise _Refused(500, f"swap failed ({_one_line(exc)}) and so did restoring the previous vectors "
                                        f"({_one_line(again)}); restart the server") from None
                raise _Refused(409, f"swap refused, the previous vectors were restored: {_one_line(exc)}") from None
            finally:
                await engine.resume_generation()
            done = time.perf_counter()
            # The API process's copy of the config is what GET reports.
            load_config.model_loader_extra_config = new
        return {
            "vectors": resolved,
            "seconds": {"check": round(checked - started, 3), "drain": round(paused - checked, 3),
                        "reload": round(done - paused, 3), "total": round(done - started, 3)},
        }


def _served(engine: Any) -> dict:
    extra = engine.vllm_config.load_config.model_loader_extra_config or {}
    return {"model": engine.vllm_config.model_config.model, "vectors": extra.get("vectors", [])}


async def _read_body(receive: Receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Refused(400, "the client went away before the body arrived")
        size += len(message.get("body", b""))
        if size > MAX_BODY:
            raise _Refused(413, f"the body is over {MAX_BODY} bytes")
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _prepare(base: str, specs: list, endpoint: str | None) -> list[dict]:
    """Open, fully verify and check the new vectors against the base; return their resolved config entries."""
    from rvec_hub.check import verify_vector
    from rvec_hub.errors import FormatError
    from rvec_hub.io.checkpoint import open_checkpoint

    from .spec import VectorSpec, check_all, open_specs

    vectors = open_specs(specs, endpoint=endpoint, verify=False)  # verify_vector below hashes every file once
    checkpoint = open_checkpoint(base)
    try:
        check_all(vectors, checkpoint)
    finally:
        checkpoint.close()
    for item in vectors:
        report = verify_vector(item.vector.path, vector_ref=item.ref)
        if report.problems:
            raise FormatError(f"{item.ref}: {report.problems[0]}", problems=report.problems)
    return [VectorSpec(str(v.vector.path.resolve()), v.alpha).to_json() for v in vectors]


async def _reload(engine: Any, extra: dict) -> None:
    await engine.collective_rpc("update_config", args=({"load_config": {"model_loader_extra_config": extra}},))
    await engine.collective_rpc("reload_weights")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
