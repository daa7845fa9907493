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
