"""rvec's vLLM runtime: the `rvec` load format, `rvec serve`, and LoRA mode.

Importing this package does not import vLLM; `rvec_serving.loader` does.
"""

from __future__ import annotations

from .merge import merge_tensor, merged_weights
from .spec import OpenedVector, VectorSpec, check_all, extra_config, open_specs, split_extra_config

__all__ = [
    "OpenedVector",
    "VectorSpec",
    "check_all",
    "extra_config",
    "merge_tensor",
    "merged_weights",
    "open_specs",
    "split_extra_config",
]
