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


def _own_modules() -> dict[str, Path]:
    """Every module of rvec_hub and rvec_serving (installed from serving/) by its dotted name."""
    modules = {}
    for package, folder in (("rvec_hub", ROOT / "rvec_hub"), ("rvec_serving", ROOT / "serving")):
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The rvec modules one module imports, at any depth of its code (lazy imports inside functions too)."""
    import ast

    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            # A package's __init__ only re-exports names lazily; importing it is not a dependency cycle.
            if name and name != module and modules[name].name != "__init__.py":
                found.add(name)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_sees_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_rvec_modules_import_one_way() -> None:
    """Commands → operations → format: no module reaches itself again through its imports, lazy ones included."""
    modules = _own_modules()
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    assert graph["rvec_hub.eval_card"] >= {"rvec_hub.evaluate", "rvec_hub.card"}, "the graph sees imports"
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])
