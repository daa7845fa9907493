"""Real models rvec can build from files published on the package registry (see `rvec model build`)."""

from __future__ import annotations

from .builder import MODELS, BuildResult, build_model, default_path

__all__ = ["MODELS", "BuildResult", "build_model", "default_path"]
