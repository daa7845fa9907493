"""rvec: share, compress and serve reasoning vectors.

Example:
    >>> import rvec_hub as rvec
    >>> rvec.extract("org/model-sft", "org/model-grpo", "reasoning-vec")
    >>> vec = rvec.open_vector("reasoning-vec")
    >>> rvec.apply_vectors([(vec, 1.0)], rvec.open_checkpoint("org/model-instruct"), "merged")
"""

from __future__ import annotations

from ._version import __version__
from .apply import ApplyResult, apply_vectors
from .check import CompatReport, check, compatibility
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
from .extract import ExtractResult, extract
from .info import vector_info
from .io.checkpoint import Checkpoint, open_checkpoint
from .manifest import Manifest, TensorEntry, load_manifest
from .refs import open_vector, split_alpha
from .vector import Vector

__all__ = [
    "ApplyResult",
    "Checkpoint",
    "CheckpointError",
    "CompatReport",
    "CompatibilityError",
    "ExtractResult",
    "FormatError",
    "HubError",
    "IntegrityError",
    "Manifest",
    "OutputExistsError",
    "RvecError",
    "TensorEntry",
    "UsageError",
    "Vector",
    "__version__",
    "apply_vectors",
    "check",
    "compatibility",
    "extract",
    "load_manifest",
    "open_checkpoint",
    "open_vector",
    "split_alpha",
    "vector_info",
]
