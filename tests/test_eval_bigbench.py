"""BIG-bench and BBH task sets: the archive in the cache, BBH's wording, the harness's scoring, and `hf:` datasets.

Most tests read a small sdist built here with the real archive's layout and real examples
(`tests/data/bbh_examples.json`); one reads the real `bigbench` 1.0.0 sdist from PyPI, kept between runs.
"""

from __future__ import annotations

import http.server
import io
import json
import socket
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from rvec_hub.bbh import AVAILABLE, MISSING, TASKS, bbh_taskset, demo_tasks, load_bbh, load_bbh_group
from rvec_hub.bigbench import SDIST, Archive, _atomic, cache_dir, load_bigbench, read_task
from rvec_hub.cli._errors import run_cli
from rvec_hub.cli.main import cli
from rvec_hub.errors import DataError, UsageError
from rvec_hub.evaluate import BBH_STOP, EvalOptions, Setting, evaluate, prompt_for, score, settings_for
from rvec_hub.tasks import load_tasks

EXAMPLES = json.loads((Path(__file__).parent / "data" / "bbh_examples.json").read_text())["tasks"]
ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks/"


def _task_json(entry: dict, copies: int = 1) -> dict:
    """A BIG-bench task file holding one real example (repeated with a numbered input, `copies` times)."""
    prefixes = {k: entry[k] for k in ("task_prefix", "example_input_prefix") if k in entry}
    examples = [entry["example"]] + [{**entry["example"], "input": f"{entry['example']['input']} ({i})"} for i in range(1, copies)]
    return {"name": entry["source"], **prefixes, "examples": examples}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_sdist(path: Path, extra: dict[str, object] | None = None) -> Path:
    """A tar.gz laid out like the bigbench sdist: real examples, a parent task, a broken one, some other files."""
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "bigbench-1.0.0/setup.py", b"# not read\n")
        _add(tar, ROOT + "logical_deduction/task.json", json.dumps({"name": "logical_deduction", "description": "parent"}).encode())
        for name, entry in EXAMPLES.items():
            _add(tar, ROOT + entry["source"] + "/task.json", json.dumps(_task_json(entry, copies=30)).encode())
            _add(tar, ROOT + entry["source"] + "/README.md", b"# readme\n")
        _add(tar, ROOT + "object_counting/task.json", json.dumps({"examples": [
            {"input": "I have a flute, a piano, and a trombone. How many musical instruments do I have?", "target": ["three", "3"]}]}).encode())
        _add(tar, ROOT + "broken/task.json", json.dumps({"examples": [{"input": "x", "answer": "y"}]}).encode())
        _add(tar, ROOT + "many_choices/task.json", json.dumps({"examples": [
            {"input": "Which shelf holds the atlas?", "target_scores": {f"shelf {i}": int(i == 8) for i in range(30)}}]}).encode())
        _add(tar, ROOT + "../escape/task.json", b"{}")
        for name, value in (extra or {}).items():
            _add(tar, ROOT + name + "/task.json", json.dumps(value).encode())
    return path


@pytest.fixture(scope="session")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sdist(tmp_path_factory.mktemp("sdist") / SDIST)


@pytest.fixture
def archive(sdist: Path, tmp_path: Path) -> Archive:
    return Archive(tmp_path / "cache", sdist=sdist, quiet=True)


# --- the archive and the cache -------------------------------------------------------------------------

def test_first_use_takes_out_only_the_asked_and_bbh_tasks_and_indexes_every_name(archive: Archive) -> None:
    path = archive.task_file("logical_deduction/three_objects")
    assert read_task(path)["examples"][0] == EXAMPLES["logical_deduction_three_objects"]["example"]
    names = archive.names()
    assert {"broken", "logical_deduction", "object_counting", "navigate"} <= set(names)
    assert not any(".." in n or n.startswith("escape") for n in names)
    taken = {str(p.parent.relative_to(archive.root / "tasks")) for p in (archive.root / "tasks").rglob("task.json")}
    assert "broken" not in taken and "navigate" in taken  # BBH's sources come along, other tasks stay packed
    assert not list(archive.root.rglob("*.partial"))


def test_cache_lives_under_hf_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert cache_dir() == tmp_path / "hf" / "rvec" / "bigbench-1.0.0"
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "huggingface" / "rvec" / "bigbench-1.0.0"


def test_unknown_task_name_is_one_line_with_the_closest_names(archive: Archive) -> None:
    with pytest.raises(UsageError, match=r"no BIG-bench task named 'navigat' \(closest: navigate") as info:
        load_bigbench("navigat", archive=archive)
    assert "\n" not in str(info.value)


def test_a_task_split_into_subtasks_names_them(archive: Archive) -> None:
    with pytest.raises(UsageError, match="split into subtasks; ask for one of logical_deduction/three_objects"):
        load_bigbench("logical_deduction", archive=archive)


def test_task_names_cannot_leave_the_cache(archive: Archive) -> None:
    with pytest.raises(UsageError, match="not a BIG-bench task name"):
        load_bigbench("../escape", archive=archive)


def test_task_file_of_another_schema_is_refused_naming_the_file(archive: Archive) -> None:
    with pytest.raises(DataError, match=r"broken/task.json is not a BIG-bench task file: example 0 has neither"):
        load_bigbench("broken", archive=archive)


def test_corrupt_archive_is_one_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / SDIST
    bad.write_bytes(b"\x1f\x8b" + b"not really gzip" * 100)
    archive = Archive(tmp_path / "cache", sdist=bad, quiet=True)
    with pytest.raises(DataError, match=r"cannot be read .*delete it and run again"):
        archive.task_file("navigate")
    assert not (archive.root / "index.json").exists()
    assert not list(archive.root.rglob("task.json")) and not list(archive.root.rglob("*.partial"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_network_is_one_clear_error_and_leaves_no_partial_download(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "cache", index=f"http://127.0.0.1:{_closed_port()}/simple", quiet=True)
    with pytest.raises(DataError, match=r"cannot download bigbench-1.0.0.tar.gz from http://127.0.0.1:\d+/simple"):
        archive.task_file("navigate")
    assert [p.name for p in archive.root.iterdir()] == [".lock"]


def test_download_refuses_bytes_other_than_the_published_sdist(tmp_path: Path) -> None:
    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path == "/simple/bigbench/":
                body = json.dumps({"files": [{"filename": SDIST, "url": f"/files/{SDIST}"}]}).encode()
            else:
                body = b"these are not the published bytes" * 1000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        archive = Archive(tmp_path / "cache", index=f"http://127.0.0.1:{server.server_port}/simple", quiet=True)
        with pytest.raises(DataError, match="did not deliver the published bigbench-1.0.0.tar.gz"):
            archive.task_file("navigate")
    finally:
        server.shutdown()
    assert not (archive.root / SDIST).exists() and not list(archive.root.glob("*.partial"))


def test_atomic_writes_leave_nothing_when_interrupted(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with _atomic(tmp_path / "task.json") as out:
            out.write(b"{half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


# --- BIG-bench examples as questions -------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_bbh_questions_read_exactly_as_bbh_wrote_them(name: str) -> None:
    entry = EXAMPLES[name]
    tasks = bbh_taskset(name, _task_json(entry), f"bigbench:{entry['source']}")
    assert (tasks.tasks[0].question, tasks.tasks[0].answer) == (entry["bbh"]["input"], entry["bbh"]["target"])
    assert tasks.answer_format == TASKS[name].extractor


def test_bbh_is_the_24_tasks_the_archive_holds_and_names_the_3_it_does_not() -> None:
    assert len(TASKS) == 27 and len(AVAILABLE) == 24
    assert set(MISSING) == {"boolean_expressions", "multistep_arithmetic_two", "web_of_lies"}
    with pytest.raises(UsageError, match="generated by code in BIG-bench.*24 of BBH's 27"):
        load_bbh("web_of_lies")
    with pytest.raises(UsageError, match="closest: date_understanding"):
        load_bbh("date_understandin")


def test_generic_multiple_choice_letters_the_choices_in_a_fixed_shuffled_order(archive: Archive) -> None:
    tasks = load_bigbench("logical_deduction/three_objects", archive=archive)
    assert tasks.answer_format == "multiple_choice" and len(tasks.tasks) == 30
    first = tasks.tasks[0]
    assert first.question.startswith("The following paragraphs each describe")
    assert "\nOptions:\n(A) " in first.question and "(C) " in first.question
    right = first.question.split(first.answer + " ", 1)[1].split("\n", 1)[0]
    assert right == "The black book is the leftmost."
    assert {t.answer for t in tasks.tasks} != {"(A)"}  # BIG-bench's order is not kept, so (A) is not always right
    assert load_bigbench("logical_deduction/three_objects", archive=archive) == tasks


def test_more_choices_than_letters_are_listed_and_answered_by_their_text(archive: Archive) -> None:
    tasks = load_bigbench("many_choices", archive=archive)
    (task,) = tasks.tasks
    assert tasks.answer_format == "answer_is" and task.answer == "shelf 8"
    assert task.question.startswith("Which shelf holds the atlas?\nOptions:\n- ") and task.question.count("\n- ") == 30


def test_generative_targets_are_answers_and_integer_targets_use_the_number_filter(archive: Archive) -> None:
    counting = load_bigbench("object_counting", archive=archive)
    assert (counting.tasks[0].answer, counting.tasks[0].accepted, counting.answer_format) == ("three", ("3",), "answer_is")
    assert load_bbh("object_counting", archive=archive).tasks[0].answer == "3"
    assert load_bigbench("word_sorting", archive=archive).answer_format == "answer_is"


def test_demo_tasks_are_the_same_few_real_questions_for_the_same_seed(archive: Archive) -> None:
    a = demo_tasks("tracking_shuffled_objects_three_objects", n=5, seed=0, archive=archive)
    assert a == demo_tasks("tracking_shuffled_objects_three_objects", n=5, seed=0, archive=archive)
    assert len(a.tasks) == 5 and a.name == "bbh:tracking_shuffled_objects_three_objects"
    assert [t.question for t in a.tasks] != [t.question for t in demo_tasks(n=5, seed=1, archive=archive).tasks]


# --- asking and scoring --------------------------------------------------------------------------------

def test_prompt_is_the_harness_bbh_prompt_with_its_description(archive: Archive) -> None:
    tasks = load_bbh("navigate", archive=archive)
    prompt = prompt_for(tasks.tasks[0].question, EvalOptions(cot=True), tasks)
    assert prompt.startswith("Given a series of navigation instructions, determine whether one would end up back at the starting point.\n\nQ: If you follow")
    assert prompt.endswith("\nOptions:\n- Yes\n- No\nA: Let's think step by step.")
    assert prompt_for(tasks.tasks[0].question, EvalOptions(), tasks).endswith("- No\nA:")


class Scripted:
    """An engine that answers from a script, and records the stop sequences it was given."""

    def __init__(self, answers: list[str]) -> None:
        self.answers, self.stops = answers, []

    def complete(self, prompts: list[str], options: EvalOptions, stop: list[str]) -> list[str]:
        self.stops.append(stop)
        return [self.answers[i % len(self.answers)] for i in range(len(prompts))]


def test_score_cuts_at_the_harness_stops_and_counts_extracted_exact_matches(archive: Archive) -> None:
    tasks = load_bbh("logical_deduction_three_objects", archive=archive).limit(3)  # every answer is (A)
    engine = Scripted([
        "The black book is left of the orange one. So the answer is (A).\n\nQ: and so on (B)",
        "So the answer is (B).",
        "The answer: the black book is the leftmost.",  # no letter: the option's text counts
    ])
    result = score(engine, tasks, Setting(), EvalOptions(cot=True))
    assert engine.stops == [BBH_STOP]
    assert result.completions[0].endswith("So the answer is (A).\n\n")
    assert (result.result.correct, result.result.n) == (2, 3)


def test_evaluate_asks_a_real_model_bbh_questions(family: dict[str, Path], archive: Archive) -> None:
    tasks = [load_bbh("sports_understanding", archive=archive).limit(2), load_bigbench("object_counting", archive=archive)]
    report = evaluate(str(family["instruct"]), tasks, settings_for([]), EvalOptions(cot=True, max_tokens=4), engine="transformers")
    assert [(s.tasks, s.result.n) for s in report.scores] == [("bbh:sports_understanding", 2), ("bigbench:object_counting", 1)]
    assert all(len(s.completions) == s.result.n for s in report.scores)


def _fill_cache(sdist: Path) -> None:
    """Take the small archive's tasks out into the default cache, as a first run would."""
    Archive(cache_dir(), sdist=sdist, quiet=True).task_files(["logical_deduction/three_objects", "object_counting"])


def test_cli_evaluates_a_bigbench_task_as_json(family: dict[str, Path], sdist: Path, capsys: pytest.CaptureFixture) -> None:
    _fill_cache(sdist)
    code = run_cli(cli, ["eval", "--base", str(family["instruct"]), "--tasks", "bigbench:logical_deduction/three_objects",
                         "--tasks", "bbh:logical_deduction_three_objects", "--limit", "2", "--cot", "--max-tokens", "3",
                         "--engine", "transformers", "--json"])
    assert code == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [(r["tasks"], r["n"]) for r in results] == [
        ("bigbench:logical_deduction/three_objects", 2), ("bbh:logical_deduction_three_objects", 2)]
    assert results[0]["source"] == "bigbench:logical_deduction/three_objects#shuffled@1234"


def test_cli_unknown_task_is_one_line_and_exit_1(sdist: Path, capsys: pytest.CaptureFixture) -> None:
    _fill_cache(sdist)
    assert run_cli(cli, ["eval", "--base", "unused", "--tasks", "bigbench:logical_deducton"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no BIG-bench task named 'logical_deducton' (closest: logical_deduction")
    assert len(err.splitlines()) == 1


# --- Hugging Face datasets -----------------------------------------------------------------------------

def test_hf_tasks_need_the_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if it were not installed
    with pytest.raises(UsageError, match=r"needs the `datasets` package; install it with `pip install 'rvec\[data\]'`"):
        load_tasks("hf:openai/gsm8k@main:test")


def test_hf_tasks_read_a_local_dataset_split(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    data = tmp_path / "gsm"
    data.mkdir()
    rows = [{"question": "Natalia sold 48 clips in April and half as many in May. How many in all?", "answer": "48 / 2 = 24. 48 + 24 = 72.\n#### 72"},
            {"question": "What is 2 + 3?", "answer": "#### 5"}]
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = load_tasks(f"hf:{data}:test")
    assert [t.answer for t in tasks.tasks] == ["72", "5"] and tasks.answer_format == "gsm8k"
    assert tasks.name == "hf:gsm:test"
    bbh = tmp_path / "bbh"
    bbh.mkdir()
    (bbh / "test.jsonl").write_text(json.dumps(EXAMPLES["snarks"]["bbh"]) + "\n")
    assert load_tasks(f"hf:{bbh}").answer_format == "multiple_choice"
    with pytest.raises(UsageError, match="hf:.*validation"):
        load_tasks(f"hf:{data}:validation")


def test_hf_dataset_without_question_and_answer_columns_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    with pytest.raises(UsageError, match="has columns text; rvec needs one of question"):
        load_tasks(f"hf:{tmp_path}:test")


# --- the real archive ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def real_archive(request: pytest.FixtureRequest) -> Archive:
    """The real sdist from PyPI, downloaded once into the pytest cache and kept between runs."""
    return Archive(request.config.cache.mkdir("bigbench-1.0.0"), quiet=True)


@pytest.mark.slow
def test_real_archive_holds_bbh_as_bbh_words_it(real_archive: Archive) -> None:
    sets = {t.name: t for t in load_bbh_group(archive=real_archive)}
    assert len(sets) == 24
    sizes = {name: len(sets[f"bbh:{name}"].tasks) for name in ("logical_deduction_three_objects", "navigate", "snarks", "word_sorting")}
    assert sizes == {"logical_deduction_three_objects": 300, "navigate": 1000, "snarks": 181, "word_sorting": 1900}
    for name, entry in EXAMPLES.items():
        task = sets[f"bbh:{name}"].tasks[entry["example_index"]]
        assert (task.question, task.answer) == (entry["bbh"]["input"], entry["bbh"]["target"])
    assert len(real_archive.names()) > 1000
    demo = demo_tasks(n=20, archive=real_archive)
    assert len(demo.tasks) == 20 and demo == demo_tasks(n=20, archive=real_archive)
