"""rvec: share, compress and serve reasoning vectors.

Example:
    >>> import rvec_hub as rvec
    >>> rvec.extract("org/model-sft", "org/model-grpo", "reasoning-vec")
    >>> vec = rvec.open_vector("reasoning-vec")
    >>> rvec.apply_vectors([(vec, 1.0)], rvec.open_checkpoint("org/model-instruct"), "merged")
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

from ._version import __version__

# Names resolve on first use, so that `import rvec_hub` (and `rvec --help`) does not load torch.
_WHERE = {
    "Accuracy": ".answers",
    "extract_answer": ".answers",
    "demo_tasks": ".bbh",
    "load_bbh": ".bbh",
    "load_bigbench": ".bigbench",
    "ApplyResult": ".apply",
    "apply_vectors": ".apply",
    "CompatReport": ".check",
    "check": ".check",
    "compatibility": ".check",
    "CompressResult": ".compress",
    "compress": ".compress",
    "CheckpointError": ".errors",
    "CompatibilityError": ".errors",
    "DataError": ".errors",
    "FormatError": ".errors",
    "HubError": ".errors",
    "IntegrityError": ".errors",
    "OutputExistsError": ".errors",
    "RvecError": ".errors",
    "UsageError": ".errors",
    "write_card": ".eval_card",
    "EvalOptions": ".evaluate",
    "EvalReport": ".evaluate",
    "evaluate": ".evaluate",
    "settings_for": ".evaluate",
    "ExtractResult": ".extract",
    "extract": ".extract",
    "vector_info": ".info",
    "Checkpoint": ".io.checkpoint",
    "open_checkpoint": ".io.checkpoint",
    "open_checkpoint_headers": ".io.checkpoint",
    "Manifest": ".manifest",
    "TensorEntry": ".manifest",
    "load_manifest": ".manifest",
    "PeftExport": ".peft_export",
    "export_peft": ".peft_export",
    "ProbeResult": ".probe",
    "probe": ".probe",
    "open_vector": ".refs",
    "split_alpha": ".alpha",
    "Task": ".tasks",
    "TaskSet": ".tasks",
    "load_jsonl": ".tasks",
    "load_tasks": ".tasks",
    "Vector": ".vector",
}
__all__ = sorted([*_WHERE, "__version__"])


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'rvec_hub' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


class _Package(types.ModuleType):
    """`check`, `compress`, `evaluate`, `extract` and `probe` name both a function and its module: importing
    the module must not replace the function on the package."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _WHERE and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:
    from .alpha import split_alpha
    from .answers import Accuracy, extract_answer
    from .apply import ApplyResult, apply_vectors
    from .check import CompatReport, check, compatibility
    from .compress import CompressResult, compress
    from .errors import (
        CheckpointError,
        CompatibilityError,
        FormatError,
        HubError,
        IntegrityError,
        OutputExistsError,
        RvecError,
        UsageError,
    )
    from .eval_card import write_card
    from .evaluate import EvalOptions, EvalReport, evaluate, settings_for
    from .extract import ExtractResult, extract
    from .info import vector_info
    from .io.checkpoint import Checkpoint, open_checkpoint, open_checkpoint_headers
    from .manifest import Manifest, TensorEntry, load_manifest
    from .peft_export import PeftExport, export_peft
    from .probe import ProbeResult, probe
    from .refs import open_vector
    from .tasks import Task, TaskSet, load_jsonl, load_tasks
    from .vector import Vector
