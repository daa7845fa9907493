"""The Hub client: publish, fetch, list and find vectors on a Hugging Face Hub (or `rvec hub serve`).

Everything goes through `huggingface_hub` with `endpoint=`, so the same calls work against huggingface.co,
a private Hub deployment, or the embedded server. Tokens come from the argument, HF_TOKEN or the stored
login, and never appear in messages.

Example:
    >>> from rvec_hub.hub.client import push, pull, versions, search
    >>> push("vec", "acme/qwen2.5-reasoning", "1.0.0")
    >>> pull("acme/qwen2.5-reasoning@latest", output="vec-copy").commit
"""

from __future__ import annotations

from .listing import VectorListing, search, versions
from .pull import PullResult, cache_root, pull
from .push import PushResult, push
from .versions import Version, VersionInfo

__all__ = ["PullResult", "PushResult", "VectorListing", "Version", "VersionInfo", "cache_root", "pull", "push", "search", "versions"]
