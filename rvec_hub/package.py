"""Finishing a vector directory: checksums of every payload file, the manifest, the model card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .card import render_card
from .manifest import MANIFEST_NAME, FileEntry, Manifest
from .vector import sha256_file

PAYLOAD_METADATA = {"format": "pt", "rvec_format": "1"}
EXTRA_FILES_DIR = "assets"


def finalize_vector(directory: Path, fields: dict[str, Any], payload: list[Path]) -> Manifest:
    """Write `rvec.json` and `README.md` for a directory whose payload files are already in place.

    Args:
        directory: the (temporary) vector directory.
        fields: every manifest field but `files`.
        payload: the safetensors shards written; a shard index beside them is picked up too.

    Returns:
        The manifest as written.
    """
    directory = Path(directory)
    paths = sorted({p.name for p in payload} | {p.name for p in directory.glob("*.safetensors.index.json")})
    assets = directory / EXTRA_FILES_DIR
    if assets.is_dir():
        paths += sorted(f"{EXTRA_FILES_DIR}/{p.name}" for p in assets.iterdir() if p.is_file())
    files = [FileEntry(path=p, sha256=sha256_file(directory / p), size=(directory / p).stat().st_size) for p in paths]
    manifest = Manifest.model_validate({**fields, "files": files})
    (directory / MANIFEST_NAME).write_text(manifest.to_json())
    (directory / "README.md").write_text(render_card(manifest))
    return manifest
