"""BIG-bench task data, read from the `bigbench` 1.0.0 source distribution on PyPI, and asked as questions.

The package itself cannot be installed here (it requires TensorFlow), but its sdist carries every task's
data as `bigbench/benchmark_tasks/<task>[/<subtask>]/task.json`. The first use downloads the sdist once
from the package index into the cache (358 MB, checked against the sha256 below), then streams it with
`tarfile`: the names of all tasks go to `index.json`, and only the task files asked for (plus the BIG-Bench
Hard sources, 36 MB) are written out. The archive stays in the cache, so a later task needs no network.

Cache: `$HF_HOME/rvec/bigbench-1.0.0/` (`HF_HOME` defaults to `$XDG_CACHE_HOME/huggingface`, that is
`~/.cache/huggingface`). Every file appears there whole or not at all (written beside, then renamed).

Why not `pip download`: it builds the package's metadata (about 45 s), and recent pip (26.3 here) then
refuses `bigbench` 1.0.0 because its metadata declares a `file://` dependency, deleting the download. rvec asks the
same index (PEP 691 JSON, `PIP_INDEX_URL` if set) for the same file and pins its sha256.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import random
import re
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .defaults import hf_rvec_dir
from .errors import DataError, UsageError
from .tasks import Task, TaskSet

VERSION = "1.0.0"
SDIST = f"bigbench-{VERSION}.tar.gz"
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
SDIST_SIZE = 358_249_635
DEFAULT_INDEX = "https://pypi.org/simple"
_TASKS_DIR = f"bigbench-{VERSION}/bigbench/benchmark_tasks/"
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """`$HF_HOME/rvec/bigbench-1.0.0`, read from the environment when called."""
    return hf_rvec_dir(f"bigbench-{VERSION}")


def _check_name(name: str) -> str:
    """A task name as a relative path of safe parts (`logical_deduction/three_objects`)."""
    parts = name.strip().strip("/").split("/")
    if not name.strip() or not all(_PART.match(p) for p in parts):
        raise UsageError(f"{name!r} is not a BIG-bench task name; names look like date_understanding or logical_deduction/three_objects")
    return "/".join(parts)


@contextmanager
def _atomic(path: Path, mode: str = "wb"):
    """A file object whose contents appear at `path` only when the block ends without an error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is meant to be shared like the Hub cache
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sdist_url(index: str) -> str:
    """The download URL of the sdist, as the package index lists it (PEP 691 JSON)."""
    page = f"{index.rstrip('/')}/bigbench/"
    request = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        listing = json.load(response)
    for entry in listing.get("files", []):
        if entry.get("filename") == SDIST:
            return urllib.parse.urljoin(page, entry["url"])
    raise DataError(f"the package index {index} does not list {SDIST}")


def download(dest: Path, *, index: str | None = None, quiet: bool = False) -> Path:
    """Download the `bigbench` sdist to `dest`, checking its sha256; nothing is left at `dest` on failure.

    Args:
        dest: where the archive goes.
        index: package index (default: `PIP_INDEX_URL`, else PyPI).
        quiet: no progress bar.

    Raises:
        DataError: the index cannot be reached, or the bytes are not the published ones.
    """
    from .progress import progress

    index = index or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX
    if not index.startswith(("http://", "https://")):
        index = DEFAULT_INDEX
    try:
        url = _sdist_url(index)
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=60) as response, _atomic(dest) as out:
            with progress(SDIST_SIZE, f"BIG-bench {VERSION} (once)", quiet=quiet) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            if digest.hexdigest() != SDIST_SHA256:
                raise DataError(f"{url} did not deliver the published {SDIST} (sha256 {digest.hexdigest()[:12]}…, expected {SDIST_SHA256[:12]}…); try again")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"cannot download {SDIST} from {index} ({reason}); BIG-bench tasks need it once, then read it from {dest.parent}") from None
    return dest


def _member_task(member: tarfile.TarInfo) -> str | None:
    """`task/subtask` for an archive member that is a task file, else None; odd paths are ignored."""
    if not member.isfile() or not member.name.startswith(_TASKS_DIR) or not member.name.endswith("/task.json"):
        return None
    parts = member.name[len(_TASKS_DIR):].split("/")[:-1]
    return "/".join(parts) if parts and all(_PART.match(p) for p in parts) else None


class Archive:
    """The cached sdist and the task files taken out of it.

    Args:
        root: the cache directory (default: `cache_dir()`).
        sdist: an sdist already on disk to read instead of the cached download (e.g. copied from another machine).
        index: the package index to download from (default: `PIP_INDEX_URL`, else PyPI).
        quiet: no progress messages.
    """

    def __init__(self, root: str | Path | None = None, *, sdist: str | Path | None = None, index: str | None = None, quiet: bool = False) -> None:
        self.root = Path(root) if root is not None else cache_dir()
        self.sdist = Path(sdist) if sdist is not None else None
        self.index = index
        self.quiet = quiet

    @property
    def archive(self) -> Path:
        """The sdist read: the one given, else the cached download."""
        return self.sdist or self.root / SDIST

    def _echo(self, line: str) -> None:
        if not self.quiet:
            import click

            click.echo(line, err=True)

    def names(self) -> list[str]:
        """Every task and subtask in the archive (from the index; fetched on first use)."""
        index = self.root / "index.json"
        if not index.is_file():
            self._extract(set())
        return sorted(json.loads(index.read_text())["tasks"])

    def task_file(self, name: str) -> Path:
        """The cached `task.json` of one task, taken out of the archive the first time.

        Raises:
            UsageError: no task of that name, with the closest names.
            DataError: the archive cannot be had or read.
        """
        return self.task_files([name])[_check_name(name)]

    def task_files(self, names: Iterable[str]) -> dict[str, Path]:
        """The cached `task.json` of several tasks, taken out in one pass over the archive."""
        wanted = [_check_name(n) for n in names]
        paths = {n: self.root / "tasks" / n / "task.json" for n in wanted}
        missing = {n for n, p in paths.items() if not p.is_file()}
        if (self.root / "index.json").is_file():
            known = set(self.names())
            unknown = [n for n in wanted if n not in known]
            if unknown:
                raise UsageError(_unknown(unknown[0], known))
        if missing:
            self._extract(missing)
            known = set(self.names())
            unknown = [n for n in wanted if n not in known]
            if unknown:
                raise UsageError(_unknown(unknown[0], known))
        return paths

    def _ensure_archive(self) -> None:
        if self.sdist is not None:
            if not self.sdist.is_file():
                raise DataError(f"{self.sdist} does not exist; pass the bigbench {VERSION} sdist, or none to download it")
            return
        if self.archive.is_file() and self.archive.stat().st_size == SDIST_SIZE:
            return
        self._echo(f"fetching BIG-bench {VERSION} task data from the package index into {self.root} (358 MB, once)")
        download(self.archive, index=self.index, quiet=self.quiet)

    def _extract(self, wanted: set[str]) -> None:
        """One streaming pass: write the wanted task files (and BBH's sources) and the name index."""
        from filelock import FileLock

        from .bbh import SOURCES

        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / ".lock")):
            index = self.root / "index.json"
            known = set(json.loads(index.read_text())["tasks"]) if index.is_file() else set(SOURCES)
            take = {n for n in wanted | (set(SOURCES) & known) if not (self.root / "tasks" / n / "task.json").is_file()}
            if not take and index.is_file():
                return  # another run took them out while this one waited
            self._ensure_archive()
            self._echo(f"reading {', '.join(sorted(wanted)) or 'the task list'} out of {self.archive.name} (one pass, about 30 s)")
            sizes: dict[str, int] = {}
            try:
                with tarfile.open(self.archive, "r|gz") as tar:
                    for member in tar:
                        name = _member_task(member)
                        if name is None:
                            continue
                        sizes[name] = member.size
                        if name in take:
                            self._write(tar, member, self.root / "tasks" / name / "task.json")
            except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
                raise DataError(f"{self.archive} cannot be read ({exc}); delete it and run again to fetch it anew") from None
            if not sizes:
                raise DataError(f"{self.archive} holds no BIG-bench task files; delete it and run again to fetch it anew")
            with _atomic(self.root / "index.json", "w") as out:
                json.dump({"version": VERSION, "tasks": sizes}, out, indent=0, sort_keys=True)


    @staticmethod
    def _write(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> None:
        """Copy one member to `path`; a failed write is the cache's problem, not the archive's."""
        source = tar.extractfile(member)
        try:
            with _atomic(path) as out:
                while chunk := source.read(_CHUNK):
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise DataError(f"cannot write {path} ({exc.strerror or exc}); free space or set HF_HOME elsewhere") from None
        finally:
            source.close()


def _unknown(name: str, known: set[str]) -> str:
    """The message for a task name that is not in the archive: its subtasks, or the closest names."""
    subtasks = sorted(n for n in known if n.startswith(name + "/"))
    if subtasks:
        return f"BIG-bench task {name} is split into subtasks; ask for one of {', '.join(subtasks)}"
    close = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else f"{len(known)} tasks are listed in the index"
    return f"no BIG-bench task named {name!r} ({hint})"


def read_task(path: str | Path) -> dict[str, Any]:
    """A BIG-bench `task.json`, with its schema checked: `examples` of `input` with `target_scores` or `target`.

    Raises:
        DataError: one line naming the file and the first thing that does not fit.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable JSON file ({exc})") from None
    problem = _schema_problem(data)
    if problem:
        raise DataError(f"{path} is not a BIG-bench task file: {problem}")
    return data


def _schema_problem(data: Any) -> str | None:
    if not isinstance(data, dict):
        return "the top level is not an object"
    examples = data.get("examples")
    if not isinstance(examples, list) or not examples:
        return "it has no 'examples' list"
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str):
            return f"example {i} has no 'input' text"
        scores, target = ex.get("target_scores"), ex.get("target")
        if scores is not None:
            if not isinstance(scores, dict) or not scores or not all(isinstance(v, (int, float)) for v in scores.values()):
                return f"example {i}: 'target_scores' is not a map of choice to number"
        elif isinstance(target, list):
            if not target or not all(isinstance(t, str) for t in target):
                return f"example {i}: 'target' is not text or a list of texts"
        elif not isinstance(target, str):
            return f"example {i} has neither 'target_scores' nor 'target'"
    for key in ("task_prefix", "example_input_prefix"):
        if key in data and not isinstance(data[key], str):
            return f"{key!r} is not text"
    return None


def best_choices(scores: dict[str, float]) -> list[str]:
    """The choices with the top score (one, or several that tie)."""
    top = max(scores.values())
    return [choice for choice, score in scores.items() if score == top]


def letter_options(text: str, choices: list[str], correct: list[str]) -> tuple[str, list[str]]:
    """`text\\nOptions:\\n(A) …` and the letters of the correct choices."""
    if len(choices) > 26:
        raise DataError(f"a question has {len(choices)} choices, and options are lettered (A) to (Z)")
    letters = [f"({chr(ord('A') + i)})" for i in range(len(choices))]
    lines = "\n".join(f"{letter} {choice}" for letter, choice in zip(letters, choices))
    return f"{text}\nOptions:\n{lines}", [letters[choices.index(c)] for c in correct]


def _generic_question(task: dict, ex: dict, key: str, lettered: bool) -> tuple[str, list[str]]:
    """Any BIG-bench example as one question and its accepted answers, in BBH's style."""
    intro = task.get("task_prefix", "").strip()
    body = f"{task.get('example_input_prefix', '').strip()} {ex['input'].strip()}".strip()
    text = f"{intro}\n{body}" if intro else body
    scores = ex.get("target_scores")
    if scores:
        choices = list(scores)
        # Some tasks list the right answer first; asked by letter, the order must not give it away.
        random.Random(key).shuffle(choices)
        if lettered:
            return letter_options(text, choices, best_choices(scores))
        return text + "\nOptions:\n" + "\n".join(f"- {c}" for c in choices), best_choices(scores)
    target = ex["target"]
    return text, [target] if isinstance(target, str) else list(target)


def bigbench_taskset(name: str, task: dict, source: str) -> TaskSet:
    """A BIG-bench task file (read and checked) as a task set scored like BBH.

    Multiple-choice examples (`target_scores`) are asked with lettered options and scored with the harness's
    multiple-choice filter (a task with more than 26 choices to a question: options as a list, answered
    with the choice's text); generative ones (`target`) with its number filter when every target is an
    integer, else with its "the answer is …" filter.
    """
    examples = task["examples"]
    lettered = max((len(ex.get("target_scores") or ()) for ex in examples), default=0) <= 26
    tasks = [Task(q, a[0], accepted=tuple(a[1:])) for q, a in
             (_generic_question(task, ex, f"{name}/{i}", lettered) for i, ex in enumerate(examples))]
    if lettered and any(ex.get("target_scores") for ex in examples):
        extractor = "multiple_choice"
    elif all(re.fullmatch(r"-?\d+", t.answer) for t in tasks):
        extractor = "number"
    else:
        extractor = "answer_is"
    return TaskSet(f"bigbench:{name}", tuple(tasks), source, answer_format=extractor)


def load_bigbench(name: str, *, archive: Archive | None = None) -> TaskSet:
    """A BIG-bench task or subtask (`date_understanding`, `logical_deduction/three_objects`) as a task set.

    The first call downloads the `bigbench` sdist into the cache (see the module docstring).

    Raises:
        UsageError: no such task (with the closest names), or a task split into subtasks (with their names).
        DataError: the archive cannot be had, or the task file has another schema.

    Example:
        >>> load_bigbench("logical_deduction/three_objects").tasks[0].answer
        '(A)'
    """
    archive = archive or Archive()
    name = _check_name(name)
    indexed = (archive.root / "index.json").is_file()
    path = archive.task_file(name) if not indexed else None
    subtasks = [n for n in archive.names() if n.startswith(name + "/")]
    if subtasks:  # a parent task holds no examples of its own
        raise UsageError(_unknown(name, set(subtasks)))
    return bigbench_taskset(name, read_task(path or archive.task_file(name)), f"bigbench:{name}")
