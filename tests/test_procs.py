"""Child servers: a start-up failure is reported with the log's end, and stopping one stops its whole group."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from rvec_hub.errors import RvecError
from rvec_hub.procs import background, free_port, wait_http


def test_a_server_that_exits_during_start_up_is_reported_with_its_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    argv = [sys.executable, "-c", "import sys; print('address already in use'); sys.exit(3)"]
    with background(argv, log) as proc, pytest.raises(RvecError, match=r"the server exited during start-up \(code 3\): address already in use"):
        wait_http(f"http://127.0.0.1:{free_port()}/", proc, 30, "the server", log)


def test_a_server_that_never_answers_times_out_naming_its_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with background([sys.executable, "-c", "import time; time.sleep(60)"], log) as proc:
        with pytest.raises(RvecError, match=f"did not answer .* within 1 s; its log is {log}"):
            wait_http(f"http://127.0.0.1:{free_port()}/", proc, 1, "the server", log)
        assert proc.poll() is None
    assert proc.poll() is not None


def test_leaving_the_block_stops_the_children_the_server_started(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    child = f"import os, subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); open({str(pids)!r}, 'w').write(str(p.pid)); time.sleep(120)"
    with background([sys.executable, "-c", child], tmp_path / "log") as proc:
        deadline = time.monotonic() + 30
        while not (pids.exists() and pids.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        grandchild = int(pids.read_text())
    assert proc.poll() is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)  # killed, but not yet reaped by its parent's end
    pytest.fail("the server's child outlived it")
