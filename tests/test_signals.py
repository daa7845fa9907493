"""SIGINT and SIGTERM sent to a real `rvec` process mid-run: no output, no hidden leftovers, inputs intact, exit 130/143."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rvec_hub import extract
from rvec_hub.synthetic import TINY, shapes_with, tensor_shapes, write_config, write_tokenizer

# About 75 MB of bf16 weights per model: long enough that a run is caught between its temporary directory
# appearing and its rename, short enough to build in a second or two.
MEDIUM = shapes_with(TINY, hidden_size=1024, num_hidden_layers=2, num_attention_heads=16, num_key_value_heads=4,
                     intermediate_size=2816, vocab_size=16384)
SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]
pytestmark = pytest.mark.slow  # ten real `rvec` processes


def _member(directory: Path, seed: int, base: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Random weights (or `base` plus a small update) written as a model directory; cheaper than the synthetic family."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in tensor_shapes(MEDIUM).items():
        noise = torch.randn(shape, generator=gen)
        tensors[name] = (base[name].float() + noise * 1e-3 if base else noise * 0.02).to(torch.bfloat16)
    directory.mkdir(parents=True)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    write_config(directory, MEDIUM)
    write_tokenizer(directory, MEDIUM.vocab_size)
    return tensors


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("medium")
    sft = _member(root / "sft", 0)
    _member(root / "grpo", 1, sft)
    _member(root / "instruct", 2, sft)
    del sft
    extract(root / "sft", root / "grpo", root / "vec", quiet=True)
    return {"sft": root / "sft", "grpo": root / "grpo", "instruct": root / "instruct", "vec": root / "vec", "root": root}


def _state(paths: list[Path]) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under the inputs."""
    out = {}
    for path in paths:
        for f in sorted(path.rglob("*")):
            if f.is_file():
                st = f.stat()
                out[str(f)] = (st.st_size, st.st_mtime_ns)
    return out


def _interrupt(argv: list[str], marker: Path, pattern: str, signum: int, env: dict | None = None) -> subprocess.CompletedProcess:
    """Start `rvec`, wait for `pattern` to appear in `marker` (the run is then mid-way), send `signum`."""
    # A shell starts background jobs with SIGINT ignored, and children inherit that; an interactive rvec
    # (the case under test) starts with the default, which Python turns into KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-m", "rvec_hub.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (marker.is_dir() and any(marker.glob(pattern))):
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before {pattern} appeared: {err[-2000:]}")
        time.sleep(0.002)
    os.kill(proc.pid, signum)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _clean_exit(result: subprocess.CompletedProcess, code: int) -> None:
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no partial output" in errors[0], result.stderr


def _no_leftovers(directory: Path, name: str) -> None:
    assert not (directory / name).exists()
    assert not [p.name for p in directory.iterdir() if p.name.startswith(f".{name}.rvec-")]


@pytest.mark.parametrize("signum,code", SIGNALS)
def test_signal_during_apply_leaves_nothing(medium, tmp_path, signum, code):
    before = _state([medium["instruct"], medium["vec"]])
    argv = ["apply", str(medium["vec"]), "--base", str(medium["instruct"]), "-o", str(tmp_path / "out"), "-q"]
    _clean_exit(_interrupt(argv, tmp_path, ".out.rvec-tmp-*", signum), code)
    _no_leftovers(tmp_path, "out")
    assert _state([medium["instruct"], medium["vec"]]) == before


@pytest.mark.parametrize("signum,code", SIGNALS)
def test_signal_during_extract_leaves_nothing(medium, tmp_path, signum, code):
    before = _state([medium["sft"], medium["grpo"]])
    argv = ["extract", "--reference", str(medium["sft"]), "--tuned", str(medium["grpo"]), "-o", str(tmp_path / "vec"), "-q"]
    _clean_exit(_interrupt(argv, tmp_path, ".vec.rvec-tmp-*", signum), code)
    _no_leftovers(tmp_path, "vec")
    assert _state([medium["sft"], medium["grpo"]]) == before


@pytest.mark.parametrize("signum,code", SIGNALS)
def test_signal_during_compress_leaves_nothing(medium, tmp_path, signum, code):
    before = _state([medium["vec"]])
    argv = ["compress", str(medium["vec"]), "-o", str(tmp_path / "small"), "-q", "--device", "cpu"]
    _clean_exit(_interrupt(argv, tmp_path, ".small.rvec-tmp-*", signum), code)
    _no_leftovers(tmp_path, "small")
    assert _state([medium["vec"]]) == before


@pytest.mark.parametrize("signum,code", SIGNALS)
def test_signal_during_a_forced_apply_keeps_the_previous_output(medium, tmp_path, signum, code):
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("still here")
    argv = ["apply", str(medium["vec"]), "--base", str(medium["instruct"]), "-o", str(out), "-q", "--force"]
    _clean_exit(_interrupt(argv, tmp_path, ".out.rvec-tmp-*", signum), code)
    assert (out / "previous.txt").read_text() == "still here"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("signum,code", SIGNALS)
def test_signal_during_pull_leaves_nothing(medium, url, tmp_path, signum, code):
    from hubtest_common import ALICE

    from rvec_hub.hub.cache import hub_cache
    from rvec_hub.hub.client import push

    push(medium["vec"], "alice/medium", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    out = tmp_path / "pulled"
    env = {**os.environ, "HF_ENDPOINT": url}
    blobs = hub_cache() / "models--alice--medium" / "blobs"
    result = _interrupt(["pull", "alice/medium@1.0.0", "-o", str(out), "-q"], blobs, "*.incomplete", signum, env)
    _clean_exit(result, code)
    _no_leftovers(tmp_path, "pulled")


@pytest.fixture
def interactive_sigint():
    """SIGINT as an interactive shell's foreground job has it (Python's default handler), also where the suite
    itself runs as a background job, whose SIGINT the shell ignores and the CLI then leaves ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_python_drops_still_keeps_the_output_out_of_place(family, vector_dir, tmp_path, monkeypatch, capsys, interactive_sigint):
    """Python drops an exception a signal handler raises inside a callback it ignores errors of (here a weak
    reference's; in the wild the import system's module-lock clean-up): the run goes on, but its output is
    not put in place, and it exits as interrupted."""
    import weakref
    from contextlib import contextmanager

    from rvec_hub import apply as apply_module
    from rvec_hub.cli._errors import run_cli
    from rvec_hub.cli.main import cli

    threads = apply_module.streaming_threads
    dropped, went_on = [], []

    @contextmanager
    def interrupted_in_a_callback():
        class Held:
            pass

        def callback(_):
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs inside this callback, at the sleep
            time.sleep(0.05)
            dropped.append(True)  # not reached: the interrupt ends the callback

        held = Held()
        ref = weakref.ref(held, callback)
        del held
        went_on.append(True)  # reached: the interrupt did not leave the callback
        with threads():
            yield
        del ref

    monkeypatch.setattr(apply_module, "streaming_threads", interrupted_in_a_callback)
    out = tmp_path / "out"
    assert run_cli(cli, ["apply", str(vector_dir), "--base", str(family["instruct"]), "-o", str(out), "-q"]) == 130
    assert not out.exists() and not list(tmp_path.glob(".out.rvec-tmp-*"))
    assert dropped == [] and went_on == [True]  # Python dropped the KeyboardInterrupt, and the run went on
    assert "error: interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the CLI's handler is gone again
