"""Reasoning accuracy of a base model with and without vectors: `rvec eval`.

Each configuration (the base, then base + α·v for every vector and α asked for) answers every task of every
task set through an OpenAI-compatible endpoint (`rvec serve` started for it, or a server already running),
or, for small models, through transformers in this process with the vectors added in float32.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .answers import Accuracy, accuracy, is_correct
from .errors import RvecError, UsageError
from .tasks import Task, TaskSet

COT_SUFFIX = "Let's think step by step."
STOP = ["\nQuestion:", "\n\n"]
BBH_STOP = ["</s>", "Q:", "<|im_end|>"]
ENGINES = ("vllm", "transformers")


@dataclass(frozen=True)
class Setting:
    """One model configuration: the base plus Σ α·v (no vectors: the base itself)."""

    vectors: tuple[tuple[str, float | None], ...] = ()
    name: str | None = None

    @property
    def label(self) -> str:
        """`base`, or `base + 0.5·REF` as tables show it (a served model: its name)."""
        if self.name:
            return self.name
        terms = [f"{'-' if (a or 1) < 0 else '+'} {f'{abs(a):g}' if a is not None else 'default'}·{Path(r).name}" for r, a in self.vectors]
        return " ".join(["base", *terms])



@dataclass(frozen=True)
class EvalOptions:
    """How questions are asked.

    Attributes:
        cot: append "Let's think step by step." to every question.
        chat: use the chat API (chat template) instead of plain completions.
        max_tokens: longest answer generated.
        ci: interval method, `wilson` or `normal`.
        batch_size: questions sent at once.
    """

    cot: bool = False
    chat: bool = False
    max_tokens: int = 256
    ci: str = "wilson"
    batch_size: int = 32


def prompt_for(question: str, options: EvalOptions, tasks: TaskSet | None = None) -> str:
    """The prompt for one question.

    GSM8K style (`Question: …\nAnswer:`) for `gsm8k` task sets; for BIG-bench and BBH sets the harness's
    `bbh_cot_zeroshot` prompt, `DESCRIPTION\n\nQ: …\nA: Let's think step by step.` (`bbh_zeroshot`'s
    `Q: …\nA:` without `cot`), as a user message with `chat`.
    """
    if tasks is not None and tasks.answer_format != "gsm8k":
        return f"{tasks.description}Q: {question}\nA:" + (f" {COT_SUFFIX}" if options.cot else "")
    if options.chat:
        return f"{question}\n{COT_SUFFIX}" if options.cot else question
    return f"Question: {question}\nAnswer:" + (f" {COT_SUFFIX}" if options.cot else "")


def stop_for(tasks: TaskSet | None) -> list[str]:
    """Stop sequences: GSM8K's, or the harness's for BBH (`</s>`, `Q:`, `<|im_end|>`)."""
    return BBH_STOP if tasks is not None and tasks.answer_format != "gsm8k" else STOP


def _cut(text: str, stop: list[str] = STOP) -> str:
    for s in stop:
        text = text.split(s, 1)[0]
    return text


def is_correct_for(completion: str, task: Task, tasks: TaskSet, options: EvalOptions) -> bool:
    """Whether a completion answers a task, by its set's convention (GSM8K, or the harness's BBH filters)."""
    if tasks.answer_format == "gsm8k":
        return any(is_correct(completion, a) for a in (task.answer, *task.accepted))
    from .bbh_answers import is_correct as bbh_correct

    return bbh_correct(completion, task.question, (task.answer, *task.accepted), tasks.answer_format, cot=options.cot)


class Engine(Protocol):
    """Something that answers prompts greedily."""

    def complete(self, prompts: list[str], options: EvalOptions, stop: list[str] = STOP) -> list[str]: ...


@dataclass(frozen=True)
class Score:
    """Accuracy of one setting on one task set."""

    tasks: str
    source: str
    setting: Setting
    result: Accuracy
    completions: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """JSON-ready form (without the completions)."""
        vectors = [{"ref": r, "alpha": a} for r, a in self.setting.vectors]
        return {"tasks": self.tasks, "source": self.source, "model": self.setting.label, "vectors": vectors, **self.result.to_dict()}


@dataclass(frozen=True)
class EvalReport:
    """Every score of one `rvec eval` run, base first."""

    base: str
    options: EvalOptions
    scores: list[Score] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        opts = {"cot": self.options.cot, "chat": self.options.chat, "max_tokens": self.options.max_tokens}
        return {"base": self.base, **opts, "results": [s.to_dict() for s in self.scores]}

    def table(self) -> str:
        """A plain-text table: accuracy, 95 % interval and the change from the base on the same tasks."""
        rows = [("tasks", "model", "accuracy", "95% CI", "vs base", "n")]
        base_acc: dict[str, float] = {}
        for s in self.scores:
            if not s.setting.vectors:
                base_acc.setdefault(s.tasks, s.result.value)
        for s in self.scores:
            r = s.result
            delta = "" if not s.setting.vectors or s.tasks not in base_acc else f"{100 * (r.value - base_acc[s.tasks]):+.1f}"
            rows.append((s.tasks, s.setting.label, f"{100 * r.value:.1f}%", f"[{100 * r.low:.1f}, {100 * r.high:.1f}]", delta, str(r.n)))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def score(engine: Engine, tasks: TaskSet, setting: Setting, options: EvalOptions) -> Score:
    """Ask every task of a set and count the correct final answers."""
    prompts = [prompt_for(t.question, options, tasks) for t in tasks.tasks]
    stop = stop_for(tasks)
    from .progress import progress

    completions: list[str] = []
    with progress(len(prompts), f"{tasks.name}: {setting.label}", unit="question") as bar:
        for start in range(0, len(prompts), options.batch_size):
            completions += [_cut(c, stop) for c in engine.complete(prompts[start:start + options.batch_size], options, stop)]
            bar.update(len(prompts[start:start + options.batch_size]))
    correct = sum(is_correct_for(c, t, tasks, options) for c, t in zip(completions, tasks.tasks))
    return Score(tasks.name, tasks.source, setting, accuracy(correct, len(prompts), options.ci), tuple(completions))


class OpenAIEngine:
    """Answers through an OpenAI-compatible server (vLLM, `rvec serve`, ...), temperature 0.

    Args:
        url: the base URL, e.g. http://127.0.0.1:8000/v1.
        model: the served model name (default: the first the server lists).
    """

    def __init__(self, url: str, model: str | None = None, *, api_key: str | None = None) -> None:
        import openai

        url = url.rstrip("/")
        self.client = openai.OpenAI(base_url=url if url.endswith("/v1") else url + "/v1", api_key=api_key or os.environ.get("OPENAI_API_KEY", "EMPTY"))
        try:
            served = [m.id for m in self.client.models.list().data]
        except openai.APIConnectionError:
            raise RvecError(f"no OpenAI-compatible server answers at {url}; start one with `rvec serve` or drop --endpoint") from None
        except openai.APIStatusError as exc:  # the message repeats the server's body: it is redacted where printed
            said = " ".join(str(exc.message).split())[:300]
            raise RvecError(f"{url} refused to list its models ({said}); check --endpoint and OPENAI_API_KEY") from None
        if model is not None and model not in served:
            raise UsageError(f"{url} does not serve {model!r}; it serves {', '.join(served) or 'nothing'}")
        self.model = model or served[0]

    def complete(self, prompts: list[str], options: EvalOptions, stop: list[str] = STOP) -> list[str]:
        """Greedy completions, in prompt order."""
        if not options.chat:
            out = self.client.completions.create(model=self.model, prompt=prompts, max_tokens=options.max_tokens, temperature=0, stop=stop)
            return [c.text for c in sorted(out.choices, key=lambda c: c.index)]
        from concurrent.futures import ThreadPoolExecutor

        def ask(prompt: str) -> str:
            out = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": prompt}], max_tokens=options.max_tokens, temperature=0,
            )
            return out.choices[0].message.content or ""

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(ask, prompts))


class TransformersEngine:
    """Answers with transformers in this process: the base loaded once in float32, vectors added in place.

    Meant for small models (tests, the replication, CPU machines without vLLM); the arithmetic stays in
    float32, so RL deltas below one bf16 step are kept.
    """

    def __init__(self, base: str, *, hub_endpoint: str | None = None, device: str | None = None) -> None:
        import torch

        from .arith import resolve_device
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from .io.checkpoint import open_checkpoint

        self.checkpoint = open_checkpoint(base, endpoint=hub_endpoint)
        self.hub_endpoint = hub_endpoint
        path = str(self.checkpoint.path)
        hf_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = resolve_device(device)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(self.device).eval()
        self.params = dict(self.model.named_parameters())
        self._saved: dict[str, torch.Tensor] = {}

    def use(self, setting: Setting) -> None:
        """Put the weights of a setting in place: restore the base, then add α·v for each vector."""
        import torch

        from .check import compatibility
        from .refs import open_vector

        with torch.no_grad():
            for name, weights in self._saved.items():
                self.params[name].copy_(weights)
            for ref, alpha in setting.vectors:
                vector = open_vector(ref, endpoint=self.hub_endpoint)
                compatibility(vector, self.checkpoint, vector_ref=ref).raise_if_incompatible()
                scale = vector.manifest.default_alpha if alpha is None else alpha
                for name, entry in vector.entries.items():
                    if entry.encoding == "zero" or name not in self.params:
                        continue
                    self._saved.setdefault(name, self.params[name].detach().clone())
                    self.params[name].add_(vector.decode(name).reshape(self.params[name].shape).to(self.device), alpha=scale)
                vector.close()

    def complete(self, prompts: list[str], options: EvalOptions, stop: list[str] = STOP) -> list[str]:
        """Greedy completions, in prompt order (cut at the stop sequences by the caller)."""
        import torch

        if options.chat:
            prompts = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in prompts]
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        with torch.no_grad():
            # Stopping at the stop sequences changes no answer (the caller cuts there) but saves the tokens after.
            out = self.model.generate(
                **batch, max_new_tokens=options.max_tokens, do_sample=False, stop_strings=stop, tokenizer=self.tokenizer,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            )
        return self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def _serve_argv(base: str, setting: Setting, port: int, serve_args: list[str], zero_ref: str | None) -> list[str]:
    vectors = setting.vectors
    if not vectors and zero_ref is not None:
        # The base through the same loader and dtype as the other settings: any vector at α = 0.
        vectors = ((zero_ref, 0.0),)
    if not vectors:
        from rvec_serving.launch import SERVER_MODULE

        return [sys.executable, "-m", SERVER_MODULE, "--model", base, "--port", str(port), *serve_args]
    argv = [sys.executable, "-m", "rvec_hub.cli", "serve", "--base", base, "--port", str(port)]
    for ref, alpha in vectors:
        argv += ["--vector", ref if alpha is None else f"{ref}:{alpha}"]
    return argv + (["--", *serve_args] if serve_args else [])


@contextmanager
def served(
    base: str, setting: Setting, *, serve_args: list[str] | None = None, zero_ref: str | None = None, timeout: float = 900.0,
) -> Iterator[str]:
    """Run `rvec serve` for one setting until the block ends; yields its OpenAI base URL.

    The base alone is served as `zero_ref` at α = 0 when given (the same loader as every other setting),
    else by vLLM directly.

    Raises:
        RvecError: when the server exits or does not answer within `timeout` seconds (its log is kept).
    """
    from .procs import background, free_port, wait_http

    port = free_port()
    argv = _serve_argv(base, setting, port, list(serve_args or []), zero_ref)
    log = Path(tempfile.mkstemp(prefix="rvec-eval-serve-", suffix=".log")[1])
    url = f"http://127.0.0.1:{port}/v1"
    with background(argv, log, {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}) as proc:
        wait_http(url + "/models", proc, timeout, f"`rvec serve` for {setting.label}", log)
        yield url
    log.unlink(missing_ok=True)


def settings_for(vectors: list[str], alphas: list[float] | None = None, *, include_base: bool = True) -> list[Setting]:
    """The settings to evaluate: the base, then each `REF[:ALPHA]` (a ref without α at every `alphas`)."""
    from .alpha import check_alpha, split_alpha

    out = [Setting()] if include_base else []
    for spec in vectors:
        ref, alpha = split_alpha(spec)
        for a in [alpha] if alpha is not None or not alphas else [check_alpha(a, "--alpha") for a in alphas]:
            if a == 0.0 and include_base:
                continue
            out.append(Setting(((ref, a),)))
    return out


def evaluate(
    base: str | None,
    tasks: list[TaskSet],
    settings: list[Setting],
    options: EvalOptions = EvalOptions(),
    *,
    endpoint: str | None = None,
    models: list[str] | None = None,
    engine: str = "vllm",
    device: str | None = None,
    serve_args: list[str] | None = None,
    hub_endpoint: str | None = None,
    echo=None,
) -> EvalReport:
    """Accuracy with a 95 % interval for every setting on every task set.

    Args:
        base: the base model (directory or Hub id); with `endpoint` only a label.
        tasks: the task sets.
        settings: the settings, e.g. from `settings_for`.
        options: how questions are asked.
        endpoint: an OpenAI-compatible server already running; its `models` are evaluated as they are.
        models: served model names to evaluate at `endpoint` (default: the first it lists).
        engine: without `endpoint`, `vllm` (one `rvec serve` per setting) or `transformers` (in process).
        device: for the transformers engine, `cpu` or `cuda` (default: cuda when available).
        serve_args: extra vLLM arguments for `rvec serve`, e.g. ["--dtype", "float32"].
        hub_endpoint: Hub endpoint for vector and base references.
        echo: called with a line of progress per score.

    Returns:
        The report, base first.

    Example:
        >>> evaluate("./instruct", [generate("arith", 100)], settings_for(["vec"], [0.5, 1.0]), engine="transformers")
    """
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    report = EvalReport(base or endpoint or "", options)

    def run(eng: Engine, setting: Setting) -> None:
        for taskset in tasks:
            result = score(eng, taskset, setting, options)
            report.scores.append(result)
            if echo:
                echo(f"{taskset.name}: {setting.label}: {result.result}")

    if endpoint is not None:
        if any(s.vectors for s in settings):
            raise UsageError("--endpoint evaluates what that server already serves; drop --vector, or drop --endpoint to let rvec serve each α")
        for model in models or [None]:
            eng = OpenAIEngine(endpoint, model)
            run(eng, Setting(name=model or eng.model))
        return report
    if base is None:
        raise UsageError("pass --base (the model to evaluate) or --endpoint (a server already running)")
    if engine == "transformers":
        local = TransformersEngine(base, hub_endpoint=hub_endpoint, device=device)
        for setting in settings:
            local.use(setting)
            run(local, setting)
        return report
    zero_ref = next((s.vectors[0][0] for s in settings if s.vectors), None)
    for setting in settings:
        with served(base, setting, serve_args=serve_args, zero_ref=zero_ref) as url:
            run(OpenAIEngine(url), setting)
    return report

