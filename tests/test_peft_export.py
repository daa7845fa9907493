"""`rvec export peft`: adapters PEFT loads, deltas only, what LoRA cannot carry reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from rvec_hub import Vector
from rvec_hub.cli.main import cli
from rvec_hub.peft_export import adapter_deltas, export_peft, low_rank


def _merged_with(base: Path, deltas: dict[str, torch.Tensor], out: Path) -> Path:
    """The base checkpoint with `deltas` added in float32, saved whole in float32 (small models only)."""
    import shutil

    out.mkdir()
    weights = {}
    for shard in base.glob("*.safetensors"):
        weights.update(load_file(str(shard)))
    merged = {k: (v.float() + deltas[k] if k in deltas else v.float()) for k, v in weights.items()}
    save_file(merged, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in base.iterdir():
        if name.suffix != ".safetensors" and name.is_file():
            shutil.copyfile(name, out / name.name)
    return out


def test_low_rank_is_exact_at_full_rank() -> None:
    delta = torch.randn(48, 32, generator=torch.Generator().manual_seed(0))
    a, b = low_rank(delta, 32)
    assert a.shape == (32, 32) and b.shape == (48, 32)
    assert torch.allclose(b @ a, delta, atol=1e-4)


def test_export_writes_peft_keys_and_scale_one(vector_dir: Path, tmp_path: Path) -> None:
    result = export_peft(Vector.open(vector_dir), tmp_path / "lora", rank=8)
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    keys = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    assert config["r"] == 8 and config["lora_alpha"] == 8 and config["peft_type"] == "LORA"
    assert config["modules_to_save"] is None
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert keys["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"].shape == (128, 8)
    assert all(".lora_A." in k or ".lora_B." in k for k in keys), "only LoRA factors, never full weights"
    assert len(result.ranks) == 14


def test_export_reports_what_lora_cannot_carry(vector_dir: Path, tmp_path: Path) -> None:
    result = export_peft(Vector.open(vector_dir), tmp_path / "lora", rank=8)
    assert "model.embed_tokens.weight" in result.dropped
    assert any(name.endswith(".bias") for name in result.dropped)
    assert 0.0 < result.dropped_share < 1.0
    assert 0.0 < result.carried_share < 1.0 - result.dropped_share + 1e-9


def test_export_writes_rank_pattern_where_ranks_differ(vector_dir: Path, tmp_path: Path) -> None:
    result = export_peft(Vector.open(vector_dir), tmp_path / "lora", rank=100)
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    # q/o/gate/up/down reach rank 100; k and v are 64 rows tall, so they stop at 64.
    assert config["r"] == 100
    assert config["rank_pattern"]["model.layers.0.self_attn.k_proj"] == 64
    assert config["alpha_pattern"]["model.layers.0.self_attn.k_proj"] == 64
    assert result.ranks["model.layers.1.self_attn.v_proj"] == 64


def test_full_rank_export_carries_every_linear_delta(vector_dir: Path, tmp_path: Path) -> None:
    vec = Vector.open(vector_dir)
    result = export_peft(vec, tmp_path / "lora", rank=256)
    assert result.truncation_share < 1e-4
    deltas = adapter_deltas(tmp_path / "lora")
    name = "model.layers.1.mlp.up_proj.weight"
    assert torch.allclose(deltas[name], vec.decode(name), atol=1e-5)


def test_peft_model_matches_base_plus_low_rank_part(family: dict[str, Path], vector_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    export_peft(Vector.open(vector_dir), tmp_path / "lora", rank=8, alpha=4.0)
    merged = _merged_with(family["instruct"], adapter_deltas(tmp_path / "lora"), tmp_path / "lowrank")
    ids = torch.tensor([[1, 5, 9, 42, 7, 300, 12]])
    base = AutoModelForCausalLM.from_pretrained(family["instruct"], dtype=torch.float32)
    with torch.no_grad():
        plain = base(ids).logits
        peft_logits = PeftModel.from_pretrained(base, tmp_path / "lora").eval()(ids).logits
        expected = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)(ids).logits
    assert not torch.allclose(plain, expected, atol=1e-4), "the adapter must change the model"
    assert torch.allclose(peft_logits, expected, atol=1e-4)


def test_export_cli_prints_dropped_share(vector_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["export", "peft", str(vector_dir), "-o", str(tmp_path / "lora"), "--rank", "4"])
    assert result.exit_code == 0, result.output
    assert "not expressible as LoRA" in result.output and "model.embed_tokens.weight" in result.output


def test_export_cli_refuses_existing_output(vector_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "lora").mkdir()
    from rvec_hub.cli._errors import run_cli

    assert run_cli(cli, ["export", "peft", str(vector_dir), "-o", str(tmp_path / "lora")]) == 1


def test_export_refuses_rank_zero(vector_dir: Path, tmp_path: Path) -> None:
    from rvec_hub.errors import UsageError

    with pytest.raises(UsageError, match="--rank"):
        export_peft(Vector.open(vector_dir), tmp_path / "lora", rank=0)
