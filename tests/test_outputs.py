"""Outputs never touch inputs: an -o overlapping an input is refused even with --force; --force replaces only the output."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import pytest

from rvec_hub.cli._errors import run_cli
from rvec_hub.cli.main import cli
from rvec_hub.errors import UsageError
from rvec_hub.io.atomic import atomic_directory, refuse_overlap, replace_directory


def _run(*args: str) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = run_cli(cli, list(args))
    return code, buf.getvalue()


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for directories)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def workspace(family, vector_dir, tmp_path) -> dict[str, Path]:
    """A base, a donor pair and a vector side by side in one directory, with an unrelated file beside them."""
    root = tmp_path / "work"
    root.mkdir()
    for role in ("sft", "grpo", "instruct"):
        shutil.copytree(family[role], root / role)
    shutil.copytree(vector_dir, root / "vec")
    (root / "notes.txt").write_text("unrelated")
    return {"root": root, "base": root / "instruct", "vec": root / "vec", "sft": root / "sft", "grpo": root / "grpo"}


def _refused(ws: dict[str, Path], *args: str) -> str:
    before = _snapshot(ws["root"])
    code, out = _run(*args, "--force", "-q")
    assert code != 0 and "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "outside every input" in lines[0], out
    assert _snapshot(ws["root"]) == before  # nothing deleted, nothing added, no hidden leftovers
    return lines[0]


@pytest.mark.parametrize("where", ["parent", "base", "inside-base", "vector", "inside-vector"])
def test_apply_refuses_an_output_overlapping_an_input_even_with_force(workspace, where):
    out = {
        "parent": workspace["root"], "base": workspace["base"], "inside-base": workspace["base"] / "merged",
        "vector": workspace["vec"], "inside-vector": workspace["vec"] / "assets",
    }[where]
    line = _refused(workspace, "apply", str(workspace["vec"]), "--base", str(workspace["base"]), "-o", str(out))
    assert str(out) in line


def test_an_output_reached_through_a_symlink_is_refused(workspace, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(workspace["root"])
    line = _refused(workspace, "apply", str(workspace["vec"]), "--base", str(workspace["base"]), "-o", str(link))
    assert "contains the input" in line


@pytest.mark.parametrize("where", ["parent", "sft", "inside-grpo"])
def test_extract_refuses_an_output_overlapping_a_donor(workspace, where):
    out = {"parent": workspace["root"], "sft": workspace["sft"], "inside-grpo": workspace["grpo"] / "vec"}[where]
    _refused(workspace, "extract", "--reference", str(workspace["sft"]), "--tuned", str(workspace["grpo"]), "-o", str(out))


@pytest.mark.parametrize("where", ["parent", "vector"])
def test_compress_and_export_refuse_an_output_overlapping_the_vector(workspace, where):
    out = workspace["root"] if where == "parent" else workspace["vec"]
    _refused(workspace, "compress", str(workspace["vec"]), "-o", str(out), "--device", "cpu")
    before = _snapshot(workspace["root"])
    code, text = _run("export", "peft", str(workspace["vec"]), "-o", str(out), "--rank", "2", "--force")
    assert code != 0 and "outside every input" in text and "Traceback" not in text
    assert _snapshot(workspace["root"]) == before


def test_pull_refuses_an_output_overlapping_the_hub_cache(tmp_path):
    from rvec_hub.hub.cache import hub_cache
    from rvec_hub.hub.client import pull

    (hub_cache() / "models--a--b").mkdir(parents=True)
    for out in (hub_cache(), hub_cache() / "models--a--b", hub_cache().parent):
        # Refused before the Hub is asked: nothing listens on this port.
        with pytest.raises(UsageError, match="outside every input"):
            pull("a/b@1.0.0", output=out, force=True, endpoint="http://127.0.0.1:9")
    assert (hub_cache() / "models--a--b").is_dir()


def test_force_replaces_only_the_output_it_names(workspace):
    out = workspace["root"] / "merged"
    out.mkdir()
    (out / "old.txt").write_text("old")
    code, text = _run("apply", str(workspace["vec"]), "--base", str(workspace["base"]), "-o", str(out), "-q", "--force")
    assert code == 0, text
    assert not (out / "old.txt").exists() and (out / "model.safetensors").is_file()
    assert (workspace["root"] / "notes.txt").read_text() == "unrelated"
    assert sorted(p.name for p in workspace["root"].iterdir()) == ["grpo", "instruct", "merged", "notes.txt", "sft", "vec"]


def test_a_failed_swap_puts_the_old_output_back_and_leaves_nothing_hidden(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileNotFoundError):
        replace_directory(tmp_path / "never-written", target)  # the rename of the new copy fails
    assert (target / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_forcing_over_a_symlink_replaces_the_link_not_what_it_points_to(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(real)
    with atomic_directory(link, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert (real / "keep.txt").read_text() == "mine"
    assert not link.is_symlink() and (link / "new.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_refuse_overlap_accepts_siblings_and_names_sharing_a_prefix(tmp_path):
    (tmp_path / "vec").mkdir()
    refuse_overlap(tmp_path / "vec-out", [tmp_path / "vec"])
    refuse_overlap(tmp_path / "out", [tmp_path / "vec", None])
    with pytest.raises(UsageError, match="lies inside"):
        refuse_overlap(tmp_path / "vec" / "x", [tmp_path / "vec"])
    os.symlink(tmp_path / "vec", tmp_path / "alias")
    with pytest.raises(UsageError, match=r"is the input"):
        refuse_overlap(tmp_path / "alias", [tmp_path / "vec"])
