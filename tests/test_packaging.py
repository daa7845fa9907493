"""The wheel ships every package, the card templates and the probe prompts, and registers the plugin."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_packages_cards_data_and_the_vllm_plugin(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    wheel = next(tmp_path.glob("rvec-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    source_packages = {p.parent for p in ROOT.glob("rvec_hub/**/__init__.py")}
    for package in source_packages:
        assert f"{package.relative_to(ROOT).as_posix()}/__init__.py" in names, package
    assert "rvec_serving/__init__.py" in names and "rvec_serving/loader.py" in names
    assert "rvec_cards/vector.md.j2" in names
    assert any(n.startswith("rvec_hub/data/") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[vllm.general_plugins]" in text and "rvec_serving.plugin:register" in text
    assert "rvec = rvec_hub.cli.main:main" in text


def test_cli_starts_without_loading_torch_or_the_hub_client():
    code = (
        "import sys; from rvec_hub.cli.main import cli; import rvec_hub; rvec_hub.UsageError; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'huggingface_hub', 'safetensors', 'transformers'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_package_names_resolve_to_functions_even_after_their_modules_load():
    code = (
        "import rvec_hub, rvec_hub.check, rvec_hub.compress, rvec_hub.extract; from rvec_hub.probe import probe; "
        "import inspect; print(all(inspect.isfunction(getattr(rvec_hub, n)) for n in ('check', 'compress', 'extract', 'probe', 'evaluate'))); "
        "print([n for n in rvec_hub.__all__ if getattr(rvec_hub, n, None) is None])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["True", "[]"]
