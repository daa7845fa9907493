"""Model cards: front matter written by `huggingface_hub.ModelCardData`, bodies from the templates in `rvec_cards`.

Three kinds of repository get a card: a vector (`rvec extract`, `compress`, `push`), a merged model
(`rvec apply`) and a PEFT adapter (`rvec export peft`). Whatever a card publishes names models by Hub id:
a local path never appears in one, since cards are written to be pushed.
"""

from __future__ import annotations

import re
import shutil
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from .errors import UsageError
from .manifest import Manifest

if TYPE_CHECKING:
    from huggingface_hub import ModelCardData

VECTOR_TEMPLATE = "vector.md.j2"
MERGED_TEMPLATE = "merged.md.j2"
ADAPTER_TEMPLATE = "adapter.md.j2"
CARD_NAME = "README.md"
# The evaluation section `rvec eval --write-card` keeps between these markers.
CARD_BEGIN = "<!-- rvec-eval -->"
CARD_END = "<!-- /rvec-eval -->"
# Files of a base model that travel with what is derived from it: its license terms and notices.
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "NOTICE", "NOTICE.txt", "USE_POLICY.md")

# License identifiers the Hub accepts (https://huggingface.co/docs/hub/repositories-licenses).
HUB_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0
cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 agpl-3.0 gfdl gpl
gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc lppl-1.3c ms-pl mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql
ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license llama2 llama3 llama3.1 llama3.2 llama3.3 gemma
unknown other
""".split())
# Common spellings (lower-cased, spaces and underscores as dashes) → Hub id.
_LICENSE_ALIASES = {
    "apache": "apache-2.0", "apache2": "apache-2.0", "apache-2": "apache-2.0", "apache-license-2.0": "apache-2.0",
    "apache-license-version-2.0": "apache-2.0", "apache-v2": "apache-2.0", "apache-v2.0": "apache-2.0",
    "apache-software-license": "apache-2.0", "mit-license": "mit", "the-mit-license": "mit", "expat": "mit",
    "bsd-3": "bsd-3-clause", "bsd-2": "bsd-2-clause", "new-bsd": "bsd-3-clause", "simplified-bsd": "bsd-2-clause",
    "gplv2": "gpl-2.0", "gplv3": "gpl-3.0", "gpl-v3": "gpl-3.0", "gpl-3": "gpl-3.0", "gpl-2": "gpl-2.0",
    "agplv3": "agpl-3.0", "lgplv3": "lgpl-3.0", "lgplv2.1": "lgpl-2.1", "mpl-2": "mpl-2.0", "mozilla-2.0": "mpl-2.0",
    "cc0": "cc0-1.0", "cc-by": "cc-by-4.0", "cc-by-sa": "cc-by-sa-4.0", "cc-by-nc": "cc-by-nc-4.0",
    "public-domain": "unlicense", "llama-2": "llama2", "llama-3": "llama3", "llama-3.1": "llama3.1",
    "llama-3.2": "llama3.2", "llama-3.3": "llama3.3",
}
# A card's YAML front matter, as `huggingface_hub.repocard.REGEX_YAML_BLOCK` finds it.
_FRONT_MATTER = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")
# owner/name as the Hub spells repository ids (bare legacy names like `gpt2` also exist on the Hub).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


def license_id(value: str) -> str:
    """The Hub license id for a license as users write it ("Apache 2.0", "MIT License", "apache" → apache-2.0).

    Raises:
        UsageError: for a license the Hub does not know, naming the closest ids.
    """
    key = re.sub(r"[\s_]+", "-", value.strip().lower())
    if key in HUB_LICENSES:
        return key
    for candidate in (key, key.removesuffix("-license"), key.removeprefix("the-"), key.replace("-version-", "-")):
        if candidate in HUB_LICENSES:
            return candidate
        if candidate in _LICENSE_ALIASES:
            return _LICENSE_ALIASES[candidate]
    import difflib

    close = difflib.get_close_matches(key, sorted(HUB_LICENSES), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UsageError(f"license {value!r} is not a Hub license id; {hint}use `other` for a custom license "
                     "(list: https://huggingface.co/docs/hub/repositories-licenses)")


def is_hub_id(value: str | None) -> bool:
    """True for a Hub repository id (`owner/name`), False for local paths and anything else."""
    if not value or value.startswith((".", "/", "~")) or "\\" in value or ".." in value:
        return False
    return bool(_HUB_ID.match(value)) and not Path(value).exists()


def hub_id_or_none(value: str | None) -> str | None:
    """`value` when it is a Hub id, else None: what a card may publish of a model reference."""
    return value if is_hub_id(value) else None


def require_hub_id(value: str | None, option: str = "--base-model") -> str | None:
    """Check a model reference the user gave for a card: a Hub id, never a local path.

    Raises:
        UsageError: for a local path, which would not mean anything once the card is published.
    """
    if value is None or is_hub_id(value):
        return value
    raise UsageError(f"{option} {value!r} is not a Hub id: a card names models as owner/name, "
                     "so pass the base's Hub id (e.g. Qwen/Qwen2.5-1.5B-Instruct), not a local path")


def card_warnings(manifest: Manifest) -> list[str]:
    """What a vector's card lacks that users of the Hub rely on, one line each."""
    if hub_id_or_none(manifest.base.model_id) is None:
        return ["the vector names no base model (--base-model ID): without it neither `rvec search --base` "
                "nor the Hub's model tree finds it"]
    return []


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["bytes"] = _human_bytes
    return env


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"


def _card(data: ModelCardData, template: str, **values: Any) -> str:
    """A card's text: `data` as its YAML front matter, the template rendered as its body (what
    `ModelCard(text)` gives back unchanged)."""
    body = _environment().from_string(resources.files("rvec_cards").joinpath(template).read_text()).render(**values)
    return f"---\n{data.to_yaml()}\n---\n\n{body.lstrip()}"


def _donor(ref: Any) -> dict[str, str] | None:
    # A donor opened from a directory has no revision; its name then is a folder's, not a Hub id.
    if ref.revision and is_hub_id(ref.id):
        return {"id": ref.id, "revision": ref.revision}
    return None


def vector_card(manifest: Manifest, *, repo_id: str | None = None, version: str | None = None) -> str:
    """The card of a vector: base model, donors for lineage, training data, license, and how to use it.

    Args:
        manifest: the vector's manifest.
        repo_id: where it is published, for the usage snippet.
        version: the version being published.
    """
    from huggingface_hub import ModelCardData

    base = hub_id_or_none(manifest.base.model_id)
    donors = {role: _donor(getattr(manifest.donors, role)) for role in ("reference", "tuned")}
    datasets = [d for d in manifest.extract.get("datasets", []) if is_hub_id(d)]
    data = ModelCardData(
        library_name="rvec",
        license=manifest.license if manifest.license in HUB_LICENSES else "other",
        base_model=base,
        base_model_relation="adapter" if base else None,
        datasets=datasets or None,
        tags=["rvec", "reasoning-vector", "task-vector"],
        # Lineage beyond `base_model`: the two checkpoints the delta was taken between.
        rvec_donors={k: v for k, v in donors.items() if v} or None,
    )
    encodings: dict[str, int] = {}
    for t in manifest.tensors:
        encodings[t.encoding] = encodings.get(t.encoding, 0) + 1
    return _card(
        data, VECTOR_TEMPLATE,
        m=manifest, base=base, donors=donors, datasets=datasets,
        repo_id=repo_id or manifest.name, version=version,
        payload_bytes=sum(f.size for f in manifest.files if f.path.endswith(".safetensors")),
        encodings=encodings,
        changed=sum(t.encoding != "zero" for t in manifest.tensors),
        plots=[f.path for f in manifest.files if f.path.endswith(".png")],
    )


def render_card(manifest: Manifest, *, repo_id: str | None = None, version: str | None = None) -> str:
    """The README.md (Hub front matter and body) of a vector; see `vector_card`."""
    return vector_card(manifest, repo_id=repo_id, version=version)


def split_card(text: str) -> tuple[dict[str, Any], str]:
    """A card's front matter as a dict and its body, as `ModelCard(text, ignore_metadata_errors=True)` reads them.

    Read here with ModelCard's own pattern and steps rather than through ModelCard, whose module imports the
    whole Hub client (0.13–0.21 s, a twentieth of `rvec apply` on a 0.5B model).

    Raises:
        ValueError: when the front matter is not a mapping, as ModelCard raises.
    """
    import yaml
    from huggingface_hub import ModelCardData

    match = _FRONT_MATTER.search(text)
    if match is None:
        return {}, text
    meta = yaml.safe_load(match.group(2)) or {}
    if not isinstance(meta, dict):
        raise ValueError("repo card metadata block should be a dict")
    return ModelCardData(**meta, ignore_metadata_errors=True).to_dict(), text[match.end():]


def join_card(meta: dict[str, Any], body: str) -> str:
    """Front matter and body as one card, the front matter written by ModelCardData."""
    from huggingface_hub import ModelCardData

    return f"---\n{ModelCardData(**meta).to_yaml()}\n---\n{body}"


def carry_evaluation(card: str, local_card: str | Path) -> str:
    """A freshly rendered card with the `model-index` and evaluation section of a local card, if it has them.

    `rvec push` renders the card from the manifest; this keeps what `rvec eval --write-card` recorded.
    """
    local = Path(local_card)
    if not local.is_file():
        return card
    old_meta, old_body = split_card(local.read_text())
    if "model-index" not in old_meta:
        return card
    meta, body = split_card(card)
    meta["model-index"] = old_meta["model-index"]
    if CARD_BEGIN in old_body and CARD_END in old_body and CARD_BEGIN not in body:
        section = CARD_BEGIN + old_body.split(CARD_BEGIN, 1)[1].split(CARD_END, 1)[0] + CARD_END + "\n"
        body = body.rstrip("\n") + "\n\n" + section
    return join_card(meta, body)


def write_merged_card(target: Path, base_path: Path, base_ref: str, vectors: list[tuple[Manifest, str, float]]) -> None:
    """Give a merged model its card, and bring the base's license files and card along.

    Args:
        target: the (temporary) output directory.
        base_path: the base's local directory (its README.md and LICENSE files are read from there).
        base_ref: the base as the user named it; published only when it is a Hub id.
        vectors: (manifest, reference as typed, alpha) of each vector added.
    """
    base_path = Path(base_path)
    base_meta, base_body = split_card((base_path / CARD_NAME).read_text()) if (base_path / CARD_NAME).is_file() else ({}, "")
    base_id = hub_id_or_none(base_ref.partition("@")[0]) or _cached_repo_id(base_path)
    from huggingface_hub import ModelCardData

    license_fields = {k: base_meta[k] for k in ("license", "license_name", "license_link") if base_meta.get(k)}
    data = ModelCardData(
        base_model=base_id,
        base_model_relation="merge" if base_id else None,
        tags=["rvec", "reasoning-vector", "merge"],
        **license_fields,
    )
    merged = [{"name": m.name, "repo": hub_id_or_none(ref.partition("@")[0]), "alpha": alpha, "version": _version_of(ref)}
              for m, ref, alpha in vectors]
    card = _card(data, MERGED_TEMPLATE, base=base_id, vectors=merged, base_body=base_body.strip())
    (Path(target) / CARD_NAME).write_text(str(card))
    for name in LICENSE_FILES:
        if (base_path / name).is_file():
            shutil.copyfile(base_path / name, Path(target) / name)


def _cached_repo_id(path: Path) -> str | None:
    """The Hub id of a snapshot in the Hugging Face cache (`models--org--name/snapshots/<sha>`), else None."""
    parts = Path(path).resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return hub_id_or_none(parts[-3].removeprefix("models--").replace("--", "/"))
    return None


def _version_of(ref: str) -> str | None:
    return ref.partition("@")[2] or None if is_hub_id(ref.partition("@")[0]) else None


def _published_ref(ref: str, manifest: Manifest) -> str:
    """A vector as a card may name it: its Hub reference, else its name (never the directory it was read from)."""
    return ref if is_hub_id(ref.partition("@")[0]) else manifest.name


def adapter_card(
    manifest: Manifest, *, vector_ref: str, alpha: float, base_model: str | None, ranks: list[int], dropped_share: float
) -> str:
    """The card of a PEFT adapter exported from a vector (`library_name: peft`)."""
    from huggingface_hub import ModelCardData

    base = hub_id_or_none(base_model)
    data = ModelCardData(
        library_name="peft",
        license=manifest.license if manifest.license in HUB_LICENSES else "other",
        base_model=base,
        base_model_relation="adapter" if base else None,
        tags=["rvec", "reasoning-vector", "lora", "peft"],
        pipeline_tag="text-generation",
    )
    return str(_card(data, ADAPTER_TEMPLATE, base=base, m=manifest, ref=_published_ref(vector_ref, manifest),
                     version=_version_of(vector_ref), alpha=alpha, ranks=ranks, dropped_share=dropped_share))
