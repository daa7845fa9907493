"""JSON shapes the Hub returns: model info, tree entries, commits; and Link-header pagination."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlencode

from rvec_hub.hub.server.api_errors import entry_not_found
from rvec_hub.hub.server.cards import card_data_or_none, tags_from_card
from rvec_hub.hub.server.models import CommitRecord, RepoRecord, TreeEntry
from rvec_hub.hub.server.objects import ObjectStore
from rvec_hub.hub.server.paths import lfs_pointer

_card_cache: dict[tuple[str, str, str], dict[str, Any] | None] = {}


def card_for(store: ObjectStore, repo_id: str, commit_id: str, record: CommitRecord) -> dict[str, Any] | None:
    """cardData of README.md at this commit (cached: a commit never changes)."""
    key = (str(store.repo_dir), repo_id, commit_id)
    if key not in _card_cache:
        entry = record.tree.get("README.md")
        card = None
        if entry is not None:
            with open(store.blob_path(entry.sha256), "rb") as f:
                card = card_data_or_none(f.read(1 << 20))
        if len(_card_cache) > 4096:
            _card_cache.clear()
        _card_cache[key] = card
    return _card_cache[key]


def sibling_json(path: str, entry: TreeEntry, blobs: bool) -> dict[str, Any]:
    """One item of `siblings`; sizes and hashes only when `blobs` was asked for."""
    item: dict[str, Any] = {"rfilename": path}
    if blobs:
        item.update(size=entry.size, blobId=entry.git_oid)
        if entry.lfs:
            pointer = lfs_pointer(entry.sha256, entry.size)
            item["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": len(pointer)}
    return item


def model_json(
    repo: RepoRecord,
    commit_id: str,
    record: CommitRecord,
    card: dict[str, Any] | None,
    *,
    siblings: bool,
    blobs: bool = False,
    with_card: bool = True,
) -> dict[str, Any]:
    """Model info as `/api/models/{repo}` and `/api/models` return it."""
    data: dict[str, Any] = {
        "_id": repo.repo_id,
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": repo.namespace,
        "sha": commit_id,
        "lastModified": record.date,
        "createdAt": repo.created_at,
        "private": repo.private,
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": tags_from_card(card),
    }
    if card and card.get("library_name"):
        data["library_name"] = card["library_name"]
    if card and card.get("pipeline_tag"):
        data["pipeline_tag"] = card["pipeline_tag"]
    if with_card and card is not None:
        data["cardData"] = card
    if siblings:
        data["siblings"] = [sibling_json(p, e, blobs) for p, e in sorted(record.tree.items())]
    return data


def folder_oid(tree: dict[str, TreeEntry], folder: str) -> str:
    """A stable id for a folder's content (sha1 of its sorted file list and oids)."""
    prefix = folder + "/"
    h = hashlib.sha1()
    for path in sorted(p for p in tree if p.startswith(prefix)):
        h.update(f"{path[len(prefix):]}\0{tree[path].git_oid}\n".encode())
    return h.hexdigest()


def tree_items(
    repo_id: str, commit_id: str, record: CommitRecord, path: str, recursive: bool
) -> list[dict[str, Any]]:
    """Entries under `path` (root when empty), folders included, sorted by path; 404 when not a folder."""
    tree = record.tree
    prefix = path + "/" if path else ""
    under = [p for p in tree if p.startswith(prefix)]
    if path and not under:
        raise entry_not_found(repo_id, path, commit_id)
    items: dict[str, dict[str, Any]] = {}
    for file_path in under:
        rest = file_path[len(prefix):].split("/")
        depth = len(rest) if recursive else 1
        for i in range(1, min(depth, len(rest) - 1) + 1):
            folder = prefix + "/".join(rest[:i])
            if folder not in items:
                items[folder] = {"type": "directory", "oid": folder_oid(tree, folder), "size": 0, "path": folder}
        if recursive or len(rest) == 1:
            items[file_path] = file_json(file_path, tree[file_path])
    return [items[k] for k in sorted(items)]


def file_json(path: str, entry: TreeEntry) -> dict[str, Any]:
    """A file as `/tree` and `/paths-info` describe it."""
    item: dict[str, Any] = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
    if entry.lfs:
        pointer = lfs_pointer(entry.sha256, entry.size)
        item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": len(pointer)}
    return item


def add_last_commits(store: ObjectStore, head: str, items: list[dict[str, Any]]) -> None:
    """Fill `lastCommit` for each item: the newest commit that changed it (walks history once)."""
    pending = {item["path"]: item for item in items}
    history = store.history(head)
    for index, (commit_id, record) in enumerate(history):
        parent_tree = history[index + 1][1].tree if index + 1 < len(history) else {}
        info = {"id": commit_id, "title": record.title, "date": record.date}
        for path in list(pending):
            if _changed(path, record.tree, parent_tree):
                pending.pop(path)["lastCommit"] = info
        if not pending:
            return


def _changed(path: str, tree: dict[str, TreeEntry], parent: dict[str, TreeEntry]) -> bool:
    if path in tree or path in parent:
        return tree.get(path) != parent.get(path)
    prefix = path + "/"
    mine = {p: e for p, e in tree.items() if p.startswith(prefix)}
    theirs = {p: e for p, e in parent.items() if p.startswith(prefix)}
    return mine != theirs


def commit_json(commit_id: str, record: CommitRecord) -> dict[str, Any]:
    """One item of `/api/models/{repo}/commits/{rev}`."""
    return {
        "id": commit_id,
        "title": record.title,
        "message": record.message,
        "authors": [{"user": record.author}],
        "date": record.date,
    }


def page_link(base_url: str, params: dict[str, Any], cursor: int, total: int, size: int) -> dict[str, str]:
    """`Link: <...>; rel="next"` header when items remain after `cursor + size`."""
    if cursor + size >= total:
        return {}
    query = urlencode({**{k: v for k, v in params.items() if v is not None}, "cursor": cursor + size}, doseq=True)
    return {"Link": f'<{base_url}?{query}>; rel="next"'}


def parse_cursor(value: str | None) -> int:
    """The offset a `cursor` query parameter carries (0 when absent or malformed)."""
    if not value or not value.isascii() or not value.isdigit() or len(value) > 18:
        return 0
    return int(value)
