"""Wall time and peak resident memory of one command, each run in a fresh child process.

`os.wait4` hands back the child's own rusage, so `ru_maxrss` is that command's peak RSS (on Linux the
largest of the process and the descendants it waited for), with no polling and no sampling gap. Linux
carries a process's RSS high-water mark across fork and exec, so the command is started by a small
interpreter without site packages (about 10 MB) rather than by the benchmark, which holds torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Measurement:
    """One run of one command."""

    label: str
    wall_s: float
    peak_rss_bytes: int
    user_s: float
    sys_s: float
    returncode: int

    @property
    def peak_rss_gb(self) -> float:
        return self.peak_rss_bytes / 1e9

    def to_dict(self) -> dict:
        return {**asdict(self), "peak_rss_gb": round(self.peak_rss_gb, 3)}


class CommandFailed(RuntimeError):
    """A measured command exited non-zero; its log says why."""


def measure(label: str, argv: list[str], *, log: Path, env: dict[str, str] | None = None) -> Measurement:
    """Run `argv` to completion and return its wall time and peak RSS.

    Args:
        label: name of the measurement in reports.
        argv: the command; stdout and stderr go to `log`.
        log: file that receives the command's output.
        env: extra environment variables.

    Raises:
        CommandFailed: when the command exits non-zero.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out, tempfile.NamedTemporaryFile("r", suffix=".json") as report:
        launcher = [sys.executable, "-S", "-c", _LAUNCHER, report.name, *argv]
        subprocess.run(launcher, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, check=False)
        data = json.loads(report.read() or "{}")
    if not data:
        raise CommandFailed(f"{label}: the launcher reported nothing; see {log}")
    result = Measurement(label, data["wall_s"], data["maxrss_kb"] * 1024, data["user_s"], data["sys_s"], data["returncode"])
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise CommandFailed(f"{label} exited {result.returncode}: {' '.join(argv)}\n{tail}")
    return result


_LAUNCHER = """
import json, os, sys, time
report, argv = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(report, "w") as f:
    json.dump({"wall_s": wall, "maxrss_kb": usage.ru_maxrss, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
               "returncode": os.waitstatus_to_exitcode(status)}, f)
"""


def warm_cache(*paths: Path) -> None:
    """Read files once so every measured command starts from the same (warm) page cache."""
    for root in paths:
        for path in sorted(Path(root).rglob("*.safetensors")):
            with open(path, "rb") as f:
                while f.read(64 * 1024 * 1024):
                    pass


def evict_cache(*paths: Path) -> None:
    """Drop the files' pages from the page cache (posix_fadvise DONTNEED), so the next read comes from the
    disk, as at a server's first start after a reboot or once other work pushed them out."""
    for root in paths:
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)  # dirty pages are not dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo): this project's machines are of more than one make."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def log_line(text: str) -> None:
    """A progress line on stderr, flushed at once."""
    print(text, file=sys.stderr, flush=True)


def size_error_axes(figsize: tuple[float, float]):
    """A figure for a size-versus-error curve: (figure, axes), matplotlib without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize, dpi=120)


def save_size_error_plot(fig, ax, path: Path, dense_bytes: int, title: str) -> None:
    """Finish a size-versus-error curve as every one in bench/ is drawn (log payload in MB, relative
    Frobenius error, dense bf16 marked) and write it to `path`."""
    import matplotlib.pyplot as plt

    ax.axvline(dense_bytes / 1e6, color="grey", ls=":", lw=1)
    ax.text(dense_bytes / 1e6, 0.02, " dense bf16", fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("payload (MB, log scale)")
    ax.set_ylabel("relative Frobenius error ‖Δ−Δ̂‖/‖Δ‖")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def donor_family(work: Path, shapes, roles: tuple[str, ...] = ("sft", "grpo", "instruct")) -> dict[str, Path]:
    """The synthetic donors `roles` of `shapes` (`rvec_hub.synthetic`) under `work/family`, built once
    and reused while complete."""
    import shutil

    from rvec_hub.synthetic import write_family

    root = work / "family"
    done = root / ".complete"
    paths = {role: root / role for role in roles}
    if not (done.exists() and all(any(p.glob("*.safetensors")) for p in paths.values())):
        log_line(f"building donors in {root} (once)")
        shutil.rmtree(root, ignore_errors=True)
        write_family(root, shapes, roles=roles)
        done.write_text("complete\n")
    return paths
