"""`rvec versions` and `rvec search`: what a Hub holds, read through `HfApi`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from huggingface_hub import HfApi

from ._errors import endpoint_of, hub_errors
from .versions import VersionInfo, latest, list_versions, split_ref, version_tags

RVEC_TAG = "rvec"


@dataclass(frozen=True)
class VectorListing:
    """A vector repository found on the Hub."""

    repo_id: str
    base_model: str | None
    latest_version: str | None
    last_modified: datetime | None
    private: bool

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"repo_id": self.repo_id, "base_model": self.base_model, "latest_version": self.latest_version,
                "last_modified": self.last_modified.isoformat() if self.last_modified else None, "private": self.private}


def versions(repo_id: str, *, endpoint: str | None = None, token: str | None = None) -> list[VersionInfo]:
    """The published versions of a vector repository, newest first.

    Args:
        repo_id: `owner/name`.
        endpoint: Hub endpoint (default: HF_ENDPOINT or huggingface.co).
        token: Hub token for private repositories.

    Returns:
        One entry per `vX.Y.Z` tag: version, tag, commit and commit date.

    Example:
        >>> [str(v.version) for v in versions("acme/qwen2.5-reasoning")]
        ['1.1.0', '1.0.0']
    """
    repo_id, _ = split_ref(repo_id)
    endpoint = endpoint_of(endpoint)
    with hub_errors(repo_id, endpoint, token=token):
        return list_versions(HfApi(endpoint=endpoint, token=token), repo_id)


def _base_models(card: object, tags: list[str]) -> list[str]:
    # The card's `base_model` may be a string or a list; the Hub also mirrors it as `base_model:ID` tags.
    declared = getattr(card, "base_model", None) if card is not None else None
    found = [declared] if isinstance(declared, str) else list(declared or [])
    found += [t.removeprefix("base_model:") for t in tags if t.startswith("base_model:") and t.count(":") == 1]
    return list(dict.fromkeys(found))


def search(
    query: str | None = None,
    base: str | None = None,
    *,
    author: str | None = None,
    limit: int | None = None,
    endpoint: str | None = None,
    token: str | None = None,
) -> list[VectorListing]:
    """Vector repositories on the Hub: those tagged `rvec`, optionally for one base model.

    Args:
        query: text the repository id must contain.
        base: only vectors whose card names this base model (exact Hub id).
        author: only repositories under this namespace.
        limit: at most this many results.
        endpoint: Hub endpoint (default: HF_ENDPOINT or huggingface.co).
        token: Hub token; private repositories are listed only for their owner.

    Returns:
        Each repository with its base model and latest version, most recently changed first.

    Example:
        >>> [v.repo_id for v in search(base="Qwen/Qwen2.5-1.5B-Instruct")]
        ['acme/qwen2.5-reasoning']
    """
    endpoint = endpoint_of(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    filters = [RVEC_TAG] + ([f"base_model:{base}"] if base else [])
    out: list[VectorListing] = []
    with hub_errors(None, endpoint, token=token):
        models = api.list_models(filter=filters, search=query, author=author, cardData=True, sort="last_modified", limit=limit)
        for info in models:
            tags = list(info.tags or [])
            if RVEC_TAG not in tags:
                continue
            bases = _base_models(info.card_data, tags)
            # The Hub's base_model tags also match quantizations and finetunes of `base`; keep exact matches.
            if base and base not in bases:
                continue
            newest = latest(version_tags(api, info.id))
            out.append(VectorListing(info.id, bases[0] if bases else None, str(newest) if newest else None,
                                     info.last_modified, bool(info.private)))
    return out
