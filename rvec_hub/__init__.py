"""rvec: share, compress and serve reasoning vectors.

Example:
    >>> import rvec_hub as rvec
    >>> rvec.extract("org/model-sft", "org/model-grpo", "reasoning-vec")
    >>> vec = rvec.open_vector("reasoning-vec")
    >>> rvec.apply_vectors([(vec, 1.0)], rvec.open_checkpoint("org/model-instruct"), "merged")
"""

from __future__ import annotations

from ._version import __version__
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
from .io.checkpoint import Checkpoint, open_checkpoint
from .manifest import Manifest, TensorEntry, load_manifest
from .peft_export import PeftExport, export_peft
from .probe import ProbeResult, probe
from .refs import open_vector, split_alpha
from .tasks import Task, TaskSet, load_jsonl, load_tasks
from .vector import Vector

__all__ = [
    "Accuracy",
    "ApplyResult",
    "Checkpoint",
    "CheckpointError",
    "CompatReport",
    "CompatibilityError",
    "CompressResult",
    "EvalOptions",
    "EvalReport",
    "ExtractResult",
    "FormatError",
    "HubError",
    "IntegrityError",
    "Manifest",
    "OutputExistsError",
    "PeftExport",
    "ProbeResult",
    "RvecError",
    "Task",
    "TaskSet",
    "TensorEntry",
    "UsageError",
    "Vector",
    "__version__",
    "apply_vectors",
    "check",
    "compatibility",
    "compress",
    "evaluate",
    "export_peft",
    "extract",
    "extract_answer",
    "load_jsonl",
    "load_manifest",
    "load_tasks",
    "open_checkpoint",
    "open_vector",
    "probe",
    "settings_for",
    "split_alpha",
    "vector_info",
    "write_card",
]
