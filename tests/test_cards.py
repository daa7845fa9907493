"""Cards built with huggingface_hub: Hub license ids, base model and lineage, and no local path ever published."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from rvec_hub import Vector, apply_vectors, extract
from rvec_hub.card import card_warnings, license_id, render_card
from rvec_hub.cli._errors import run_cli
from rvec_hub.cli.main import cli
from rvec_hub.errors import UsageError
from rvec_hub.io.checkpoint import open_checkpoint
from rvec_hub.manifest import Donors, ModelRef, load_manifest


@pytest.mark.parametrize(("given", "expected"), [
    ("apache-2.0", "apache-2.0"), ("Apache 2.0", "apache-2.0"), ("apache", "apache-2.0"), ("Apache License 2.0", "apache-2.0"),
    ("MIT", "mit"), ("MIT License", "mit"), ("cc_by_4.0", "cc-by-4.0"), ("Llama 3.1", "llama3.1"), ("other", "other"),
])
def test_license_names_map_to_hub_ids(given: str, expected: str) -> None:
    assert license_id(given) == expected


def test_unknown_license_is_refused_with_the_closest_ids() -> None:
    with pytest.raises(UsageError, match="not a Hub license id; did you mean .*apache-2.0"):
        license_id("apache-2.1")
    with pytest.raises(UsageError, match="use `other`"):
        license_id("my own terms")


def _no_local_path(text: str, *paths: Path) -> None:
    for path in paths:
        assert str(path) not in text and str(path.resolve()) not in text, f"{path} published in a card"
    assert "/tmp" not in text and "pytest-" not in text


def test_vector_card_from_local_donors_publishes_no_path(family: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "vec"
    extract(family["sft"], family["grpo"], out, base_model="tiny/instruct", datasets=["openai/gsm8k"], license="Apache 2.0", quiet=True)
    text = (out / "README.md").read_text()
    card = ModelCard(text)
    assert card.data.base_model == "tiny/instruct" and card.data.base_model_relation == "adapter"
    assert card.data.license == "apache-2.0" and card.data.datasets == ["openai/gsm8k"] and card.data.library_name == "rvec"
    assert "rvec_donors" not in card.data.to_dict(), "local donors have no Hub id to record"
    assert "a local checkpoint" in text
    _no_local_path(text, family["sft"], family["grpo"], out, tmp_path)


def test_vector_card_records_hub_donors_for_lineage(vector_dir: Path) -> None:
    manifest = load_manifest(vector_dir)
    hub = manifest.model_copy(update={"donors": Donors(reference=ModelRef(id="acme/m-sft", revision="a" * 40),
                                                       tuned=ModelRef(id="acme/m-grpo", revision="b" * 40))})
    card = ModelCard(render_card(hub, repo_id="acme/reasoning", version="1.0.0"))
    assert card.data.rvec_donors == {"reference": {"id": "acme/m-sft", "revision": "a" * 40}, "tuned": {"id": "acme/m-grpo", "revision": "b" * 40}}
    assert "acme/reasoning@1.0.0" in card.text


def test_a_local_base_model_never_reaches_a_card(family: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a Hub id"):
        extract(family["sft"], family["grpo"], tmp_path / "vec", base_model=str(family["instruct"]), quiet=True)
    assert not (tmp_path / "vec").exists()


def test_extract_warns_when_the_card_has_no_base_model(family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = run_cli(cli, ["extract", "--reference", str(family["sft"]), "--tuned", str(family["grpo"]), "-o", str(tmp_path / "v"), "-q"])
    assert code == 0
    err = capsys.readouterr().err
    assert "warning: the vector names no base model" in err and "rvec search --base" in err
    assert card_warnings(load_manifest(tmp_path / "v"))


def test_extract_refuses_an_unknown_license_before_writing(family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = run_cli(cli, ["extract", "--reference", str(family["sft"]), "--tuned", str(family["grpo"]), "-o", str(tmp_path / "v"), "--license", "apache-3"])
    assert code == 1 and "not a Hub license id" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()


def test_apply_output_has_a_merge_card_and_the_base_license(family: dict[str, Path], vector_dir: Path, tmp_path: Path) -> None:
    import shutil

    base = shutil.copytree(family["instruct"], tmp_path / "models--acme--tiny-instruct" / "snapshots" / ("c" * 40))
    (base / "README.md").write_text("---\nlicense: mit\n---\n# Tiny instruct\n\nThe base's own words.\n")
    (base / "LICENSE").write_text("MIT License\n")
    apply_vectors([(Vector.open(vector_dir), 0.5)], open_checkpoint(base), tmp_path / "merged", vector_refs=[str(vector_dir)], quiet=True)
    text = (tmp_path / "merged" / "README.md").read_text()
    card = ModelCard(text)
    assert card.data.base_model == "acme/tiny-instruct" and card.data.base_model_relation == "merge"
    assert card.data.license == "mit" and "merge" in card.data.tags
    assert "| tiny-reasoning | local | 0.5 |" in text and "The base's own words." in text
    assert (tmp_path / "merged" / "LICENSE").read_text() == "MIT License\n"
    _no_local_path(text, vector_dir, base, tmp_path)


def test_apply_card_names_a_hub_vector_with_its_version(family: dict[str, Path], vector_dir: Path, tmp_path: Path) -> None:
    from rvec_hub.card import write_merged_card

    out = tmp_path / "out"
    out.mkdir()
    manifest = load_manifest(vector_dir)
    write_merged_card(out, family["instruct"], str(family["instruct"]), [(manifest, "acme/reasoning@1.2.0", 1.0), (manifest, "acme/other", -0.5)])
    text = (out / "README.md").read_text()
    assert "| acme/reasoning | 1.2.0 | 1 |" in text and "| acme/other | latest | -0.5 |" in text
    assert ModelCard(text).data.base_model is None, "a local base has no Hub id to name"
    _no_local_path(text, family["instruct"])



def test_eval_card_names_the_base_by_hub_id_or_refuses(family: dict[str, Path], vector_fp32: Path, tmp_path: Path) -> None:
    import shutil

    from rvec_hub.answers import accuracy
    from rvec_hub.eval_card import write_card
    from rvec_hub.evaluate import EvalOptions, EvalReport, Score, Setting

    vec = shutil.copytree(vector_fp32, tmp_path / "vec")  # extracted without --base-model
    scores = [Score("arith", "builtin:arith@1", Setting(), accuracy(1, 2)),
              Score("arith", "builtin:arith@1", Setting(((str(vec), 1.0),)), accuracy(2, 2))]
    report = EvalReport(str(family["instruct"]), EvalOptions(), scores)
    with pytest.raises(UsageError, match="--base-id"):
        write_card(vec, report)
    write_card(vec, report, base_id="acme/tiny-instruct")
    text = (vec / "README.md").read_text()
    (entry,) = ModelCard(text).data.to_dict()["model-index"]
    assert [m["name"].split(";")[0] for m in entry["results"][0]["metrics"]] == [
        "accuracy (base acme/tiny-instruct", "accuracy (base acme/tiny-instruct +1·vector"]
    _no_local_path(text, family["instruct"], vec, tmp_path)


_CARD_TEXTS = [
    "---\nlicense: mit\nbase_model: Qwen/Qwen2.5-0.5B-Instruct\ntags:\n- a\n---\n\n# Body\n",
    "---\r\nlicense: apache-2.0\r\n---\r\nbody with\r\nCRLF\r\n",
    "  \n---\nlicense: mit\n---   \ntext after trailing spaces\n",
    "---\n---\nempty front matter\n",
    "# no front matter at all\n---\nnot: yaml front matter\n---\n",
    "---\nmodel-index:\n- name: x\n  results: not-a-list\nlicense: mit\n---\nbad eval results are ignored\n",
    "---\nlicense: mit\nlicense: apache-2.0\n---\nlast key wins\n",
]


@pytest.mark.parametrize("text", _CARD_TEXTS)
def test_split_card_reads_a_card_as_model_card_does(text: str) -> None:
    from rvec_hub.card import split_card

    card = ModelCard(text, ignore_metadata_errors=True)
    assert split_card(text) == (card.data.to_dict(), card.text)


def test_split_card_uses_model_cards_pattern_and_refuses_what_it_refuses() -> None:
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    from rvec_hub.card import _FRONT_MATTER, split_card

    assert _FRONT_MATTER.pattern == REGEX_YAML_BLOCK.pattern
    with pytest.raises(ValueError, match="should be a dict"):
        ModelCard("---\n- a list\n---\n", ignore_metadata_errors=True)
    with pytest.raises(ValueError, match="should be a dict"):
        split_card("---\n- a list\n---\n")


def test_rendered_cards_are_what_model_card_writes_back(vector_dir: Path, family: dict[str, Path], tmp_path: Path) -> None:
    text = render_card(load_manifest(vector_dir), repo_id="acme/reasoning", version="1.0.0")
    assert str(ModelCard(text)) == text
    out = tmp_path / "merged"
    apply_vectors([(Vector.open(vector_dir), 1.0)], open_checkpoint(family["instruct"]), out, quiet=True)
    merged = (out / "README.md").read_text()
    assert str(ModelCard(merged)) == merged
