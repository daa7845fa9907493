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
    assert {"rvec_cards/vector.md.j2", "rvec_cards/merged.md.j2", "rvec_cards/adapter.md.j2"} <= names
    assert "rvec_hub/__main__.py" in names
    if sys.platform == "linux":  # the compiled kernels (setup.py), built with the wheel
        assert any(n.startswith("rvec_hub/_ckernels.") and n.endswith(".so") for n in names), sorted(n for n in names if "_ckernels" in n)
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


def test_swap_client_runs_without_loading_torch_or_vllm():
    # `rvec swap` runs beside a busy server, where every second of imports stretches to a minute.
    code = (
        "import sys; from rvec_serving.swap import admin_token, swap; from rvec_serving.wire import VectorSpec; "
        "VectorSpec.parse('vec:0.5'); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'vllm', 'safetensors', 'transformers'}))"
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


# Imports inside functions that close known cycles among the task sources: `tasks.load_tasks` picks the
# reader for a name (bbh, bigbench, hf_tasks), which build on tasks' Task and TaskSet; bigbench extracts
# BBH's source tasks (bbh.SOURCES) along with the ones asked for, while bbh reads tasks through bigbench.
KNOWN_LAZY_CYCLES = {
    ("rvec_hub.tasks", "rvec_hub.bbh"),
    ("rvec_hub.tasks", "rvec_hub.bigbench"),
    ("rvec_hub.tasks", "rvec_hub.hf_tasks"),
    ("rvec_hub.bigbench", "rvec_hub.bbh"),
}


def test_rvec_modules_import_one_way() -> None:
    """Commands → operations → format: no module reaches itself again through its imports, lazy ones included."""
    modules = _own_modules()
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    for importer, imported in KNOWN_LAZY_CYCLES:
        graph[importer].discard(imported)
    assert graph["rvec_hub.eval_card"] >= {"rvec_hub.evaluate", "rvec_hub.card"}, "the graph sees imports"
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


# Modules that need an optional extra, by path prefix; everything else may import core dependencies only.
EXTRA_FOR = {
    "rvec_hub/hub/server/": {"server"},
    "serving/": {"cpu", "gpu"},
    "rvec_hub/plots.py": {"plot"},
    "rvec_hub/compress.py": {"plot"},
    "rvec_hub/hf_tasks.py": {"data"},
    "rvec_hub/demo_donors.py": {"data", "demo"},
}
# Declared for what they do at run time, not by an import of rvec's: transformers reads GGUF through gguf.
USED_WITHOUT_IMPORT = {"gguf"}


def _requirements() -> tuple[set[str], dict[str, set[str]]]:
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(specs: list[str]) -> set[str]:
        return {re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].lower().replace("_", "-") for spec in specs}

    return names(project["dependencies"]), {extra: names(specs) for extra, specs in project["optional-dependencies"].items()}


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level third-party module → the rvec files (relative to the root) that import it."""
    import ast

    own = {"rvec_hub", "rvec_serving", "rvec_cards", "__future__"}
    found: dict[str, set[str]] = {}
    for folder in ("rvec_hub", "serving"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    tops = [a.name.split(".")[0] for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    tops = [node.module.split(".")[0]]
                else:
                    continue
                for top in tops:
                    if top not in sys.stdlib_module_names and top not in own:
                        found.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    return found


def test_every_imported_distribution_is_declared_where_its_module_needs_it() -> None:
    from importlib.metadata import packages_distributions

    core, extras = _requirements()
    distributions = packages_distributions()
    problems = []
    for module, files in sorted(_third_party_imports().items()):
        dists = {d.lower().replace("_", "-") for d in distributions.get(module, [])}
        assert dists, f"{module} is imported but not installed"
        for file in sorted(files):
            allowed = set(core)
            for prefix, names in EXTRA_FOR.items():
                if file.startswith(prefix):
                    allowed |= set().union(*(extras[n] for n in names))
            if not dists & allowed:
                problems.append(f"{file} imports {module} ({'/'.join(sorted(dists))}), which is not declared for it")
    assert not problems, "\n".join(problems)


def test_every_core_dependency_is_imported() -> None:
    from importlib.metadata import packages_distributions

    core, _ = _requirements()
    distributions = packages_distributions()  # one scan of the installed metadata, not one per module
    imported = {d.lower().replace("_", "-") for m in _third_party_imports() for d in distributions.get(m, [])}
    assert core - imported - USED_WITHOUT_IMPORT == set(), "declared but never imported"


def test_python_dash_m_rvec_hub_runs_the_cli() -> None:
    run = subprocess.run([sys.executable, "-m", "rvec_hub", "--version"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.startswith("rvec, version")


def test_shell_completion_script_is_generated() -> None:
    import os

    env = {**os.environ, "_RVEC_COMPLETE": "bash_source"}
    run = subprocess.run([sys.executable, "-c", "from rvec_hub.cli.main import cli; cli(prog_name='rvec')"], capture_output=True, text=True, env=env)
    assert run.returncode == 0
    assert "_rvec_completion" in run.stdout and "complete -o nosort -F _rvec_completion rvec" in run.stdout


def test_hub_serve_without_the_server_extra_says_what_to_install(tmp_path) -> None:
    code = "import sys; sys.modules['fastapi'] = None; from rvec_hub.cli.main import main; main()"
    run = subprocess.run([sys.executable, "-c", code, "hub", "serve", "--root", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines() == ["error: `rvec hub serve` needs fastapi: pip install 'rvec[server]' (from a checkout: pip install '.[server]')"]


def test_only_public_huggingface_hub_api_is_used() -> None:
    """Names come from huggingface_hub's top level (its __all__), or from its documented errors / utils modules."""
    import ast
    import importlib

    import huggingface_hub

    public_modules = {"huggingface_hub.errors", "huggingface_hub.utils"}
    problems = []
    for folder in ("rvec_hub", "serving"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "huggingface_hub"):
                    continue
                for alias in node.names:
                    name = alias.name
                    if node.module == "huggingface_hub":
                        ok = name in huggingface_hub.__all__ or name == "constants"
                    elif node.module in public_modules:
                        exported = getattr(importlib.import_module(node.module), "__all__", None)
                        ok = not name.startswith("_") and (exported is None or name in exported)
                    else:
                        ok = name in huggingface_hub.__all__  # e.g. hf_api.RepoFile, also exported at the top
                    if not ok:
                        problems.append(f"{path.relative_to(ROOT)}: from {node.module} import {name}")
    assert not problems, "private huggingface_hub API:\n" + "\n".join(problems)
