"""The `vllm.general_plugins` entry point: vLLM calls `register` in every process it starts."""

from __future__ import annotations


def register() -> None:
    """Register the `rvec` load format with vLLM."""
    # Imported here so that reading rvec_serving never imports vLLM by itself.
    from .loader import register as register_loader

    register_loader()
