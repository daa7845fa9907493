"""rvec's vLLM runtime: the `rvec` load format, `rvec serve`, and LoRA mode.

Importing this package does not import vLLM; `rvec_serving.loader` does.
"""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use, so that light modules (`rvec_serving.swap`) do not pull in torch.
_EXPORTS = {
    "OpenedVector": ".spec", "VectorSpec": ".wire", "check_all": ".spec", "extra_config": ".spec",
    "merge_tensor": ".merge", "merged_weights": ".merge", "open_specs": ".spec", "split_extra_config": ".spec",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
