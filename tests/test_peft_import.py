"""`rvec import peft`: PEFT and mergekit-extract-lora adapters read as vectors, exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rvec_hub import Vector, apply_vectors
from rvec_hub.cli._errors import run_cli
from rvec_hub.cli.main import cli
from rvec_hub.errors import CheckpointError
from rvec_hub.io.checkpoint import open_checkpoint
from rvec_hub.peft_export import adapter_deltas, export_peft
from rvec_hub.peft_import import import_peft


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def _apply(vector: Path, base: Path, out: Path) -> dict[str, torch.Tensor]:
    apply_vectors([(Vector.open(vector), 1.0)], open_checkpoint(base), out, out_dtype=torch.float32, quiet=True)
    return _weights(out)


@pytest.fixture(scope="module")
def adapter(vector_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("peft") / "lora"
    export_peft(Vector.open(vector_fp32), out, rank=8)
    return out


def test_round_trip_export_import_apply_equals_the_low_rank_apply(adapter: Path, family: dict[str, Path], tmp_path: Path) -> None:
    result = import_peft(adapter, tmp_path / "vec", base=family["instruct"])
    assert result.lowrank == 15 and result.dense == 0 and result.tied_head  # 14 linears and the tied embedding
    vec = Vector.open(tmp_path / "vec")
    stored = load_file(str(adapter / "adapter_model.safetensors"))
    # Scale 1 (lora_alpha = r): the factors are the adapter's own tensors, bit for bit.
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(vec.read(f"{name}.A"), stored[f"base_model.model.{name.removesuffix('.weight')}.lora_A.weight"])
    assert torch.equal(vec.read(f"{name}.B"), stored[f"base_model.model.{name.removesuffix('.weight')}.lora_B.weight"])
    merged = _apply(tmp_path / "vec", family["instruct"], tmp_path / "merged")
    base = _weights(family["instruct"])
    deltas = adapter_deltas(adapter)
    for key, weight in merged.items():
        expected = base[key].float() + deltas.get(key, torch.zeros(()))
        # Equal within float32 rounding: the merge adds B[rows]·A row block by row block.
        assert torch.allclose(weight, expected, rtol=0, atol=1e-6), key
    assert "lm_head.weight" not in merged, "a tied head follows the embedding"


def test_imported_vector_applies_like_peft_with_alpha_and_rslora_scaling(adapter: Path, family: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    scaled = shutil.copytree(adapter, tmp_path / "scaled")
    config = json.loads((scaled / "adapter_config.json").read_text())
    config.update(lora_alpha=16, use_rslora=True, alpha_pattern={"k_proj": 4}, rank_pattern={})
    (scaled / "adapter_config.json").write_text(json.dumps(config))
    import_peft(scaled, tmp_path / "vec", base=family["instruct"])
    entry = Vector.open(tmp_path / "vec").entries
    assert entry["model.layers.0.self_attn.q_proj.weight"].encoding == "lowrank"
    _apply(tmp_path / "vec", family["instruct"], tmp_path / "merged")
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.no_grad():
        peft_logits = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(family["instruct"], dtype=torch.float32), scaled).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)(ids).logits
    assert 16 / math.sqrt(8) != 1.0
    assert torch.allclose(peft_logits, merged, atol=1e-4), (peft_logits - merged).abs().max()


def _mergekit_style(sft: Path, grpo: Path, out: Path, rank: int = 8) -> Path:
    """The files `mergekit-extract-lora --model GRPO --base-model SFT --max-rank 8` (mergekit 0.1.5) writes for
    a tied Qwen2 model, without needing mergekit: the same names, shapes, dtypes and config keys.

    Linear deltas tuned − base as lora_A (√S·Vh) / lora_B (U·√S), bias deltas as `lora_B.bias`, every module
    that is not a Linear (embedding, norms) saved whole from the tuned model under `modules_to_save`, and the
    tied head saved whole too, as a copy of the embedding.
    """
    out.mkdir()
    base, tuned = _weights(sft), _weights(grpo)
    tensors, ranks, to_save = {}, {}, set()
    for name, weight in tuned.items():
        module, _, kind = name.rpartition(".")
        short = module.rsplit(".", 1)[-1]
        if short.endswith("_proj"):
            if kind == "bias":
                tensors[f"base_model.model.{module}.lora_B.bias"] = (weight.float() - base[name].float()).to(weight.dtype)
                continue
            r = 4 if short == "q_proj" else rank
            u, s, vh = torch.linalg.svd(weight.float() - base[name].float(), full_matrices=False)
            root = torch.diag(torch.sqrt(s[:r]))
            tensors[f"base_model.model.{module}.lora_A.weight"] = (root @ vh[:r]).to(weight.dtype).contiguous()
            tensors[f"base_model.model.{module}.lora_B.weight"] = (u[:, :r] @ root).to(weight.dtype).contiguous()
            ranks[module] = r
        else:
            tensors[f"base_model.model.{name}"] = weight
            to_save.add(short)
    tensors["base_model.model.lm_head.weight"] = tuned["model.embed_tokens.weight"].clone()
    to_save.add("lm_head")
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    max_rank = max(ranks.values())
    different = {k: v for k, v in ranks.items() if v != max_rank}
    (out / "adapter_config.json").write_text(json.dumps({
        "base_model_name_or_path": str(sft), "peft_type": "LORA", "use_rslora": False,
        "target_modules": sorted({k.rsplit(".", 1)[-1] for k in ranks}), "modules_to_save": sorted(to_save),
        "task_type": "CAUSAL_LM", "r": max_rank, "lora_alpha": max_rank, "rank_pattern": different,
        "alpha_pattern": different, "lora_dropout": 0.0, "fan_in_fan_out": False, "inference_mode": True,
    }, indent=4))
    (out / "README.md").write_text("---\nbase_model: []\nlibrary_name: peft\ntags:\n- mergekit\n- peft\n---\n# extracted\n")
    return out


def test_mergekit_extract_lora_output_imports_with_saved_modules_as_dense_deltas(family: dict[str, Path], tmp_path: Path) -> None:
    lora = _mergekit_style(family["sft"], family["grpo"], tmp_path / "mk")
    result = import_peft(lora, tmp_path / "vec")  # the base comes from base_model_name_or_path
    vec = Vector.open(tmp_path / "vec")
    assert vec.entries["model.layers.0.self_attn.q_proj.weight"].params == {"rank": 4}
    assert vec.entries["model.layers.0.mlp.up_proj.weight"].params == {"rank": 8}
    assert vec.entries["model.embed_tokens.weight"].encoding == "dense" and vec.entries["model.norm.weight"].encoding == "dense"
    assert vec.entries["model.layers.0.self_attn.q_proj.bias"].encoding == "dense"
    assert result.base_model is None, "a local base path is never recorded as the base model"
    assert result.tied_head and "lm_head.weight" not in vec.entries
    merged = _apply(tmp_path / "vec", family["sft"], tmp_path / "merged")
    grpo = _weights(family["grpo"])
    for name in ("model.embed_tokens.weight", "model.norm.weight", "model.layers.1.self_attn.k_proj.bias"):
        assert torch.allclose(merged[name], grpo[name].float(), rtol=0, atol=1e-6), name
    stored = load_file(str(lora / "adapter_model.safetensors"))
    key = "model.layers.1.mlp.down_proj"
    low_rank = stored[f"base_model.model.{key}.lora_B.weight"].float() @ stored[f"base_model.model.{key}.lora_A.weight"].float()
    base = _weights(family["sft"])
    assert torch.allclose(merged[f"{key}.weight"], base[f"{key}.weight"].float() + low_rank, rtol=0, atol=1e-6)


def test_import_refuses_a_pickled_adapter(tmp_path: Path) -> None:
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 8}))
    (tmp_path / "lora" / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(CheckpointError, match="pickle"):
        import_peft(tmp_path / "lora", tmp_path / "vec", base=tmp_path)
    assert not (tmp_path / "vec").exists()


def test_import_lists_every_module_the_base_lacks(adapter: Path, tmp_path: Path) -> None:
    from rvec_hub.synthetic import TINY, shapes_with, write_member

    wide = write_member(tmp_path / "wide", shapes_with(TINY, hidden_size=256, num_attention_heads=4), 0, "instruct")
    with pytest.raises(CheckpointError, match=r"does not fit .* \(and \d+ more\)") as info:
        import_peft(adapter, tmp_path / "vec", base=wide)
    assert len(info.value.problems) >= 14 and not (tmp_path / "vec").exists()


def test_import_cli_writes_a_vector_that_rvec_checks(adapter: Path, family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = run_cli(cli, ["import", "peft", str(adapter), "-o", str(tmp_path / "vec"), "--base", str(family["instruct"]), "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["lowrank"] == 15 and data["tied_head"] is True
    assert run_cli(cli, ["check", str(tmp_path / "vec"), "--base", str(family["instruct"]), "--no-precision"]) == 0


def test_an_adapter_peft_saved_imports_to_what_peft_computes(family: dict[str, Path], tmp_path: Path) -> None:
    """A LoRA saved by PEFT itself (nonzero B, alpha ≠ r, a module saved whole) applies as PEFT runs it."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(family["instruct"], dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "up_proj"], rank_pattern={"up_proj": 2},
                        modules_to_save=["model.norm"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        peft_model.base_model.model.model.norm.modules_to_save["default"].weight.mul_(1.5)
    peft_model.save_pretrained(tmp_path / "saved")
    result = import_peft(tmp_path / "saved", tmp_path / "vec", base=family["instruct"])
    assert result.lowrank == 4 and result.dense == 1
    assert Vector.open(tmp_path / "vec").entries["model.layers.0.mlp.up_proj.weight"].params == {"rank": 2}
    _apply(tmp_path / "vec", family["instruct"], tmp_path / "merged")
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.no_grad():
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(family["instruct"], dtype=torch.float32), tmp_path / "saved")
        expected = loaded.eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)(ids).logits
    assert torch.allclose(merged, expected, atol=1e-4), (merged - expected).abs().max()


def test_import_refuses_an_existing_output_before_reading_anything(adapter: Path, tmp_path: Path) -> None:
    from rvec_hub.errors import OutputExistsError

    (tmp_path / "vec").mkdir()
    (tmp_path / "vec" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--force"):
        import_peft(adapter, tmp_path / "vec", base=tmp_path / "no-such-base")
    assert (tmp_path / "vec" / "keep.txt").read_text() == "mine"


def test_import_refuses_an_output_inside_the_adapter_even_with_force(adapter: Path, family) -> None:
    from rvec_hub.errors import UsageError

    before = sorted(p.name for p in adapter.iterdir())
    with pytest.raises(UsageError):
        import_peft(adapter, adapter / "vec", base=family["instruct"], force=True)
    with pytest.raises(UsageError):
        import_peft(adapter, adapter.parent, base=family["instruct"], force=True)
    assert sorted(p.name for p in adapter.iterdir()) == before


def test_fan_in_fan_out_and_embedding_loras_add_the_transposed_product(tmp_path: Path) -> None:
    from rvec_hub.peft_import import read_adapter

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 6, generator=g), torch.randn(5, 2, generator=g)
    (tmp_path / "c").mkdir()
    save_file({"base_model.model.h.0.attn.c_attn.lora_A.weight": a, "base_model.model.h.0.attn.c_attn.lora_B.weight": b,
               "base_model.model.wte.lora_embedding_A": a.clone(), "base_model.model.wte.lora_embedding_B": b.clone()},
              str(tmp_path / "c" / "adapter_model.safetensors"))
    (tmp_path / "c" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "fan_in_fan_out": True}))
    deltas = {m.module: m.delta() for m in read_adapter(tmp_path / "c").modules}
    # PEFT: Conv1D stores its weight in × out, so its delta is transpose(B·A); an embedding's is (B_e·A_e)ᵀ.
    assert torch.allclose(deltas["h.0.attn.c_attn"], 2.0 * (b @ a).T, atol=1e-6)
    assert torch.allclose(deltas["wte"], 2.0 * (b @ a).T, atol=1e-6)
