"""Model cards for vectors, rendered from the templates shipped in `rvec_cards`."""

from __future__ import annotations

from importlib import resources

import jinja2

from .manifest import Manifest

TEMPLATE = "vector.md.j2"


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"


def render_card(manifest: Manifest, *, repo_id: str | None = None, version: str | None = None, template: str = TEMPLATE) -> str:
    """The README.md (Hub front-matter and body) for a vector.

    Args:
        manifest: the vector's manifest.
        repo_id: where it is published, for the usage snippet.
        version: the version being published.
        template: a template name inside `rvec_cards`.

    Returns:
        The card text.
    """
    source = resources.files("rvec_cards").joinpath(template).read_text()
    env = jinja2.Environment(keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["bytes"] = _human_bytes
    encodings: dict[str, int] = {}
    for t in manifest.tensors:
        encodings[t.encoding] = encodings.get(t.encoding, 0) + 1
    return env.from_string(source).render(
        m=manifest,
        repo_id=repo_id or manifest.name,
        version=version,
        payload_bytes=sum(f.size for f in manifest.files if f.path.endswith(".safetensors")),
        encodings=encodings,
        changed=sum(t.encoding != "zero" for t in manifest.tensors),
        plots=[f.path for f in manifest.files if f.path.endswith(".png")],
    )
