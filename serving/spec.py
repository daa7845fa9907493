"""Which vectors a served model carries: parsed from `model_loader_extra_config`, opened and checked."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rvec_hub.alpha import check_alpha
from rvec_hub.check import compatibility
from rvec_hub.errors import CompatibilityError, UsageError
from rvec_hub.io.checkpoint import Checkpoint, open_checkpoint_headers
from rvec_hub.refs import open_vector
from rvec_hub.vector import Vector

from .wire import VectorSpec

# Keys of `model_loader_extra_config` that belong to rvec; everything else goes to vLLM's loader.
EXTRA_KEYS = ("vectors", "endpoint")


@dataclass(frozen=True)
class OpenedVector:
    """A vector opened for serving, with the scale it is applied at."""

    ref: str
    vector: Vector
    alpha: float


def split_extra_config(extra: dict) -> tuple[list[VectorSpec], str | None, dict]:
    """Separate rvec's keys from the rest of a `model_loader_extra_config`.

    Returns:
        (vector specs, Hub endpoint, the remaining config for vLLM's own loader).

    Raises:
        UsageError: when `vectors` is missing or malformed.
    """
    if isinstance(extra, str):
        extra = json.loads(extra)
    rest = {k: v for k, v in extra.items() if k not in EXTRA_KEYS}
    raw = extra.get("vectors")
    if not isinstance(raw, list) or not raw:
        raise UsageError(
            'load format rvec needs --model-loader-extra-config \'{"vectors": [{"ref": "DIR_OR_REPO@VERSION", "alpha": 1.0}]}\''
        )
    specs = []
    for item in raw:
        if isinstance(item, str):
            specs.append(VectorSpec.parse(item))
        elif isinstance(item, dict) and isinstance(item.get("ref"), str) and set(item) <= {"ref", "alpha"}:
            alpha = item.get("alpha")
            specs.append(VectorSpec(item["ref"], None if alpha is None else check_alpha(alpha, f"alpha of {item['ref']}")))
        else:
            raise UsageError(f'vector entry {item!r} is not {{"ref": REF, "alpha": ALPHA}} or "REF[:ALPHA]"')
    return specs, extra.get("endpoint"), rest


def extra_config(specs: list[VectorSpec], endpoint: str | None = None) -> dict:
    """The `model_loader_extra_config` that serves `specs`."""
    out: dict = {"vectors": [s.to_json() for s in specs]}
    if endpoint:
        out["endpoint"] = endpoint
    return out


def open_specs(specs: list[VectorSpec], *, endpoint: str | None = None, verify: bool | str = True) -> list[OpenedVector]:
    """Open (and for Hub references pull) every vector, resolving default alphas.

    `verify` is `open_vector`'s: with "background", local vectors are hashed on a thread and the caller
    must `wait_verified()` each before it serves anything made from them.
    """
    opened = []
    for spec in specs:
        vec = open_vector(spec.ref, endpoint=endpoint, verify=verify)
        alpha = vec.manifest.default_alpha if spec.alpha is None else check_alpha(spec.alpha, f"alpha of {spec.ref}")
        opened.append(OpenedVector(spec.ref, vec, alpha))
    return opened


def check_all(vectors: list[OpenedVector], base: Checkpoint) -> None:
    """Check every vector against the base (config, names, shapes, fingerprint), reading no weights.

    Raises:
        CompatibilityError: listing the problems of every vector that does not fit.
    """
    problems, heads = [], []
    for item in vectors:
        report = compatibility(item.vector, base, vector_ref=item.ref)
        if not report.ok:
            heads.append(report.details.get("headline") or report.problems[0])
            problems.extend(f"{item.ref}: {p}" for p in report.problems)
    if problems:
        raise CompatibilityError(
            f"{heads[0]} ({len(problems)} problem{'s' if len(problems) > 1 else ''}); refusing to serve; "
            f"run `rvec check VECTOR --base {base.source}` for the full report",
            problems=problems,
        )


def open_base(base: str, *, endpoint: str | None = None) -> Checkpoint:
    """Open the base for the pre-start check: a Hub model's safetensors headers only, never its weights.

    The server downloads (or finds in the Hub cache) the weights itself, at the commit checked here.
    """
    return open_checkpoint_headers(base, endpoint=endpoint)


def base_model_args(base: Checkpoint) -> list[str]:
    """vLLM's `--model`: a local directory as is; a Hub model by id, pinned to the commit that was checked."""
    if base.repo_id and base.revision:
        return ["--model", base.repo_id, "--revision", base.revision]
    return ["--model", str(base.path.resolve())]


def base_env(base: Checkpoint, endpoint: str | None) -> dict[str, str]:
    """Environment that points the server's own download of a Hub base at the same Hub."""
    return {"HF_ENDPOINT": endpoint} if base.repo_id and endpoint else {}


def describe(vectors: list[OpenedVector]) -> str:
    """`name@alpha + ...`, for logs."""
    return " + ".join(f"{Path(v.ref).name or v.ref}×{v.alpha:g}" for v in vectors)
