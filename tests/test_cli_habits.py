"""What users of the Hugging Face tools expect from a command line: messages that say the next step."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_push_to_a_read_only_hub_says_how_to_give_it_a_token(vector_dir: Path, tmp_path: Path) -> None:
    from rvec_hub.errors import HubError
    from rvec_hub.hub.client import push
    from rvec_hub.hub.server import running_server

    with running_server(tmp_path / "hub", None) as url:
        with pytest.raises(HubError, match=r"read-only: restart it with --token-file FILE .* or RVEC_HUB_TOKEN"):
            push(vector_dir, "alice/tiny", "1.0.0", endpoint=url, quiet=True)


class _Constant:
    """An engine (the `Engine` protocol users implement) that answers every question with 0."""

    def complete(self, prompts: list[str], options, stop=None) -> list[str]:
        return ["#### 0"] * len(prompts)


def test_eval_shows_progress_per_setting_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl
    import os
    import pty
    import struct
    import sys
    import termios

    from rvec_hub.evaluate import EvalOptions, Setting, score
    from rvec_hub.tasks import generate

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    os.set_blocking(main, False)
    monkeypatch.setattr(sys, "stderr", os.fdopen(child, "w", buffering=1))
    result = score(_Constant(), generate("arith", 4), Setting(), EvalOptions(batch_size=2))
    sys.stderr.flush()
    assert result.result.n == 4
    assert "arith: base" in os.read(main, 65536).decode(errors="replace")


def test_push_warns_when_the_card_names_no_base_model(
    vector_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rvec_hub.cli._errors import run_cli
    from rvec_hub.cli.main import cli
    from rvec_hub.hub.server import running_server

    monkeypatch.setenv("HF_TOKEN", "a" * 32)
    with running_server(tmp_path / "hub", {"alice": "a" * 32}) as url:
        code = run_cli(cli, ["push", str(vector_fp32), "alice/tiny", "--version", "1.0.0", "--endpoint", url, "-q"])
    assert code == 0
    assert "warning: the vector names no base model (--base-model ID)" in capsys.readouterr().err


def test_quiet_also_silences_huggingface_hub_bars(vector_dir: Path, tmp_path: Path) -> None:
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars

    from rvec_hub.cli._errors import run_cli
    from rvec_hub.cli.main import cli

    enable_progress_bars()
    try:
        assert run_cli(cli, ["export", "peft", str(vector_dir), "-o", str(tmp_path / "a"), "--rank", "2"]) == 0
        assert not are_progress_bars_disabled()
        assert run_cli(cli, ["export", "peft", str(vector_dir), "-o", str(tmp_path / "b"), "--rank", "2", "-q"]) == 0
        assert are_progress_bars_disabled()
    finally:
        enable_progress_bars()


_GC_PROBE = """
import gc, json, sys
import rvec_hub.apply, rvec_hub.demo
seen = {}
def probe(label):
    def run(*args, **kwargs):
        seen[label] = {"collecting": gc.isenabled(), "frozen": gc.get_freeze_count()}
    return run
rvec_hub.apply.apply_vectors = probe("apply")
rvec_hub.demo.run_demo = probe("demo")
from rvec_hub.cli.main import main
sys.argv = ["rvec", *json.loads(sys.argv[1])]
try:
    main()
finally:
    print(json.dumps(seen))
"""


@pytest.mark.parametrize("command", ["apply", "demo"])
def test_the_collector_is_held_off_for_a_batch_command_and_back_on_for_a_long_one(command, family, vector_dir, tmp_path) -> None:
    import json
    import subprocess
    import sys

    args = {"apply": ["apply", str(vector_dir), "--base", str(family["instruct"]), "-o", str(tmp_path / "out")],
            "demo": ["demo", "--workdir", str(tmp_path / "demo")]}[command]
    proc = subprocess.run([sys.executable, "-c", _GC_PROBE, json.dumps(args)], capture_output=True, text=True, timeout=300)
    state = json.loads(proc.stdout.strip().splitlines()[-1])[command]
    if command == "apply":  # modules and buffers come and go by reference counting alone
        assert state == {"collecting": False, "frozen": 0}
    else:  # what was loaded before is frozen out of the collector's passes
        assert state["collecting"] and state["frozen"] > 10_000


def test_a_pause_of_the_collector_ends_as_it_began() -> None:
    import gc

    from rvec_hub.collector import paused

    assert gc.isenabled()
    with pytest.raises(RuntimeError), paused():
        assert not gc.isenabled()
        raise RuntimeError
    assert gc.isenabled()
    gc.disable()
    try:
        with paused():
            pass
        assert not gc.isenabled(), "a collector that was off stays off"
    finally:
        gc.enable()


def test_a_command_that_loads_triton_exits_without_nanobind_leak_reports(vector_dir) -> None:
    import subprocess
    import sys

    pytest.importorskip("triton")  # vLLM and peft import it
    script = ("import sys, triton\nfrom rvec_hub.cli.main import main\n"
              f"sys.argv = ['rvec', 'info', {str(vector_dir)!r}]\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "leaked" not in proc.stderr, proc.stderr[-2000:]
