"""Load-time application without the engine: the weights iterator, the vector config, the launch plans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rvec_hub import Vector, apply_vectors, open_checkpoint
from rvec_hub.arith import Survival
from rvec_hub.cli.main import cli
from rvec_hub.errors import CompatibilityError, UsageError
from rvec_serving import VectorSpec, check_all, extra_config, merged_weights, open_specs, split_extra_config
from rvec_serving.launch import SERVER_MODULE, plan_merged
from rvec_serving.lora import plan_lora


def _base_weights(path: Path):
    ckpt = open_checkpoint(path)
    for name in ckpt.tensors:
        yield name, ckpt.read_rows(name)


def _opened(*pairs: tuple[Path, float]):
    return open_specs([VectorSpec(str(p), a) for p, a in pairs])


def test_merged_weights_equal_what_rvec_apply_writes(family, vector_dir, other_vector, tmp_path) -> None:
    pairs = [(vector_dir, 1.0), (other_vector, -0.5)]
    out = apply_vectors([(Vector.open(p), a) for p, a in pairs], open_checkpoint(family["instruct"]), tmp_path / "applied", quiet=True)
    applied = open_checkpoint(out.path)
    merged = dict(merged_weights(_base_weights(family["instruct"]), _opened(*pairs), torch.bfloat16))
    assert merged.keys() == applied.tensors.keys()
    for name, tensor in merged.items():
        assert torch.equal(tensor, applied.read_rows(name)), name


@pytest.mark.gpu
def test_merging_on_the_accelerator_equals_merging_on_cpu(family, vector_dir) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    on_cpu = dict(merged_weights(_base_weights(family["instruct"]), _opened((vector_dir, 1.0)), torch.bfloat16))
    on_gpu = merged_weights(_base_weights(family["instruct"]), _opened((vector_dir, 1.0)), torch.bfloat16, device=torch.device("cuda"))
    for name, tensor in on_gpu:
        assert torch.equal(tensor.cpu(), on_cpu[name]), name


def test_alpha_zero_yields_the_base_tensors_untouched(family, vector_dir) -> None:
    base = dict(_base_weights(family["instruct"]))
    merged = dict(merged_weights(_base_weights(family["instruct"]), _opened((vector_dir, 0.0)), torch.bfloat16))
    assert all(torch.equal(merged[n], base[n]) for n in base)


def test_merged_weights_are_cast_once_to_the_serving_dtype(family, vector_fp32) -> None:
    base = open_checkpoint(family["instruct"])
    name = "model.layers.0.mlp.up_proj.weight"
    merged = dict(merged_weights(_base_weights(family["instruct"]), _opened((vector_fp32, 1.0)), torch.float32))
    exact = base.read_rows(name).float() + Vector.open(vector_fp32).decode(name)
    assert merged[name].dtype == torch.float32 and torch.equal(merged[name], exact)


def test_survival_is_complete_in_float32_and_partial_in_bf16(family, vector_fp32) -> None:
    kept = {}
    for dtype in (torch.float32, torch.bfloat16):
        survival = [Survival()]
        for _ in merged_weights(_base_weights(family["instruct"]), _opened((vector_fp32, 1.0)), dtype, survival):
            pass
        kept[dtype] = survival[0].retained
    assert kept[torch.float32] == pytest.approx(1.0)
    assert kept[torch.bfloat16] < 0.999


def test_extra_config_round_trips_and_leaves_vllm_keys(vector_dir) -> None:
    specs = [VectorSpec(str(vector_dir), 0.5), VectorSpec("acme/vec@1.0.0")]
    raw = {**extra_config(specs, "http://127.0.0.1:9"), "enable_multithread_load": True}
    parsed, endpoint, rest = split_extra_config(json.loads(json.dumps(raw)))
    assert parsed == specs and endpoint == "http://127.0.0.1:9" and rest == {"enable_multithread_load": True}
    assert split_extra_config({"vectors": [f"{vector_dir}:2"]})[0] == [VectorSpec(str(vector_dir), 2.0)]


@pytest.mark.parametrize("bad", [{}, {"vectors": []}, {"vectors": [{"path": "x"}]}])
def test_missing_or_malformed_vectors_config_says_how_to_write_it(bad) -> None:
    with pytest.raises(UsageError):
        split_extra_config(bad)


def test_check_all_lists_every_problem_of_every_vector(family, vector_dir, wide_vector) -> None:
    vectors = _opened((vector_dir, 1.0), (wide_vector, 1.0))
    with pytest.raises(CompatibilityError, match="refusing to serve") as info:
        check_all(vectors, open_checkpoint(family["instruct"]))
    assert all(p.startswith(str(wide_vector)) for p in info.value.problems)
    assert any("hidden_size" in p for p in info.value.problems) and len(info.value.problems) > 5


def test_plan_runs_vllm_module_with_rvec_load_format(family, vector_dir) -> None:
    plan = plan_merged(str(family["instruct"]), [VectorSpec(str(vector_dir), 0.5)], port=8123, vllm_args=["--dtype", "float32"])
    argv = plan.argv
    assert argv[:3] == [sys.executable, "-m", SERVER_MODULE]
    assert argv[argv.index("--load-format") + 1] == "rvec"
    config = json.loads(argv[argv.index("--model-loader-extra-config") + 1])
    assert config == {"vectors": [{"ref": str(vector_dir.resolve()), "alpha": 0.5}]}
    assert plan.url == "http://127.0.0.1:8123/v1" and plan.models == ["instruct+tiny-reasoning"]
    assert argv[argv.index("--served-model-name") + 1] == "instruct+tiny-reasoning"


def test_plan_refuses_incompatible_vector_before_starting(family, wide_vector) -> None:
    with pytest.raises(CompatibilityError):
        plan_merged(str(family["instruct"]), [VectorSpec(str(wide_vector))])


def test_plan_refuses_flags_rvec_sets_itself(family, vector_dir) -> None:
    with pytest.raises(UsageError, match="--load-format"):
        plan_merged(str(family["instruct"]), [VectorSpec(str(vector_dir))], vllm_args=["--load-format", "pt"])


def test_lora_plan_exports_adapters_and_reports_dropped_share(family, vector_dir, other_vector, tmp_path) -> None:
    specs = [VectorSpec(str(vector_dir)), VectorSpec(str(other_vector), 0.5)]
    plan, exports = plan_lora(str(family["instruct"]), specs, rank=8, cache=tmp_path)
    assert plan.models == ["instruct", "tiny-reasoning", "other@0.5"]
    assert "--enable-lora" in plan.argv and plan.argv[plan.argv.index("--max-lora-rank") + 1] == "8"
    assert plan.argv[plan.argv.index("--max-loras") + 1] == "2"
    assert all((e.path / "adapter_config.json").is_file() for e in exports)
    assert "LoRA drops" in plan.notes[0] and "embed_tokens.weight" in plan.notes[0] and "q_proj.bias" in plan.notes[0]


def test_serve_cli_dry_run_prints_url_model_and_command(family, vector_dir) -> None:
    result = CliRunner().invoke(cli, ["serve", "--base", str(family["instruct"]), "--vector", f"{vector_dir}:0.5", "--dry-run", "--", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    assert "http://127.0.0.1:8000/v1" in result.output and "instruct+tiny-reasoning" in result.output
    assert SERVER_MODULE in result.output and "--dtype float32" in result.output


def test_serve_cli_refuses_incompatible_vector_with_exit_1(family, wide_vector, capsys) -> None:
    from rvec_hub.cli._errors import run_cli

    assert run_cli(cli, ["serve", "--base", str(family["instruct"]), "--vector", str(wide_vector), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "refusing to serve" in err and "hidden_size" in err


def test_plugin_registers_rvec_load_format() -> None:
    pytest.importorskip("vllm")
    from vllm.model_executor.model_loader import _LOAD_FORMAT_TO_MODEL_LOADER

    from rvec_serving.loader import RvecModelLoader
    from rvec_serving.plugin import register

    register()
    register()
    assert _LOAD_FORMAT_TO_MODEL_LOADER["rvec"] is RvecModelLoader


def test_loader_hands_vllm_a_plain_safetensors_config(vector_dir) -> None:
    pytest.importorskip("vllm")
    from vllm.config.load import LoadConfig

    from rvec_serving.loader import RvecModelLoader

    loader = RvecModelLoader(LoadConfig(load_format="rvec", model_loader_extra_config={"vectors": [str(vector_dir)], "num_threads": 2}))
    assert loader.load_config.load_format == "safetensors"
    assert loader.load_config.model_loader_extra_config == {"num_threads": 2}
    assert loader.specs == [VectorSpec(str(vector_dir))]


def test_sigterm_to_the_launcher_stops_the_server_it_started(tmp_path) -> None:
    pid_file = tmp_path / "server.pid"
    server = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    launcher = (
        "import sys; from rvec_serving.launch import ServePlan, run; "
        f"sys.exit(run(ServePlan([sys.executable, '-c', {server!r}], {{}}, 'http://127.0.0.1:1/v1', ['m'])))"
    )
    proc = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        child = int(pid_file.read_text())
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "the server outlived the launcher"
    finally:
        proc.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A reaped child no longer exists; an unreaped zombie whose parent died is reaped by init shortly after.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"
