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
    assert config["peft_version"], "written by peft's own LoraConfig.save_pretrained"
    assert config["modules_to_save"] is None
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert keys["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"].shape == (128, 8)
    assert all(".lora_" in k for k in keys), "only LoRA factors, never full weights"
    # 14 linear layers, the embedding, and the output head tied to it.
    assert len(result.ranks) == 16 and result.tied_head
    assert keys["base_model.model.model.embed_tokens.lora_embedding_A"].shape == (8, 512)
    assert keys["base_model.model.model.embed_tokens.lora_embedding_B"].shape == (128, 8)


def test_export_reports_what_lora_cannot_carry(vector_dir: Path, tmp_path: Path) -> None:
    result = export_peft(Vector.open(vector_dir), tmp_path / "lora", rank=8)
    assert "model.embed_tokens.weight" not in result.dropped
    assert all(name.endswith((".bias", "norm.weight")) for name in result.dropped)
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
    assert "not expressible as LoRA" in result.output and "_proj.bias" in result.output


def test_export_cli_refuses_existing_output(vector_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "lora").mkdir()
    from rvec_hub.cli._errors import run_cli

    assert run_cli(cli, ["export", "peft", str(vector_dir), "-o", str(tmp_path / "lora")]) == 1


def test_export_refuses_rank_zero(vector_dir: Path, tmp_path: Path) -> None:
    from rvec_hub.errors import UsageError

    with pytest.raises(UsageError, match="--rank"):
        export_peft(Vector.open(vector_dir), tmp_path / "lora", rank=0)


def test_export_files_have_normal_permissions_and_a_peft_card(vector_dir: Path, tmp_path: Path) -> None:
    import os
    import stat

    from huggingface_hub import ModelCard

    out = tmp_path / "lora"
    export_peft(Vector.open(vector_dir), out, rank=4, vector_ref=str(vector_dir))
    umask = os.umask(0)
    os.umask(umask)
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == "tiny/instruct"
    assert "lora" in card.data.tags and str(vector_dir) not in str(card)


def test_export_without_embeddings_leaves_them_out(vector_dir: Path, tmp_path: Path) -> None:
    result = export_peft(Vector.open(vector_dir), tmp_path / "lora", rank=4, embeddings=False)
    assert "model.embed_tokens.weight" in result.dropped and not result.tied_head
    assert not any("embed" in k or "lm_head" in k for k in load_file(str(tmp_path / "lora" / "adapter_model.safetensors")))


def _tied_pair(family: dict[str, Path], root: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tuned copy of the tied instruct model whose delta lies only where LoRA reaches: embedding and two linears."""
    import shutil

    tuned = shutil.copytree(family["instruct"], root / "tuned")
    (shard,) = tuned.glob("*.safetensors")
    weights = load_file(str(shard))
    g = torch.Generator().manual_seed(7)
    deltas = {}
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        new = (weights[name].float() + 0.05 * torch.randn(weights[name].shape, generator=g)).to(weights[name].dtype)
        deltas[name] = new.float() - weights[name].float()
        weights[name] = new
    save_file(weights, str(shard), metadata={"format": "pt"})
    return tuned, deltas


def test_peft_model_of_a_tied_model_matches_transformers_base_plus_alpha_v(family: dict[str, Path], tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rvec_hub import extract

    tuned, deltas = _tied_pair(family, tmp_path)
    vec = extract(family["instruct"], tuned, tmp_path / "vec", dtype=torch.float32, quiet=True).path
    result = export_peft(Vector.open(vec), tmp_path / "lora", rank=512, alpha=0.5)
    assert result.tied_head and result.dropped_share == 0.0 and result.truncation_share < 1e-5
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["ensure_weight_tying"] is True
    ids = torch.tensor([[1, 5, 9, 42, 7, 300, 12, 511]])
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(family["instruct"], dtype=torch.float32)
        assert reference.lm_head.weight is reference.model.embed_tokens.weight, "the test model ties its head"
        params = dict(reference.named_parameters())
        for name, delta in deltas.items():
            params[name].add_(0.5 * delta)  # the tied head changes with the embedding, as in transformers
        expected = reference(ids).logits
        base = AutoModelForCausalLM.from_pretrained(family["instruct"], dtype=torch.float32)
        plain = base(ids).logits
        peft_logits = PeftModel.from_pretrained(base, tmp_path / "lora").eval()(ids).logits
    assert not torch.allclose(plain, expected, atol=1e-3), "the vector must change the model"
    assert torch.allclose(peft_logits, expected, atol=1e-4), (peft_logits - expected).abs().max()


def _terminal_stderr(monkeypatch: pytest.MonkeyPatch):
    """Point sys.stderr at a real pseudo-terminal (100 columns); return the fd its output is read from."""
    import fcntl
    import os
    import pty
    import struct
    import sys
    import termios

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    os.set_blocking(main, False)
    monkeypatch.setattr(sys, "stderr", os.fdopen(child, "w", buffering=1))
    return main


def _drain(fd: int) -> str:
    import os

    out = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            return out.decode(errors="replace")
        if not data:
            return out.decode(errors="replace")
        out += data


def test_export_shows_progress_on_a_terminal_only(vector_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    terminal = _terminal_stderr(monkeypatch)
    export_peft(Vector.open(vector_dir), tmp_path / "a", rank=2, quiet=False)
    sys.stderr.flush()
    assert "export peft" in _drain(terminal)
    export_peft(Vector.open(vector_dir), tmp_path / "b", rank=2, quiet=True)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    export_peft(Vector.open(vector_dir), tmp_path / "c", rank=2, quiet=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    export_peft(Vector.open(vector_dir), tmp_path / "d", rank=2, quiet=False)
    sys.stderr.flush()
    assert "export peft" not in _drain(terminal), "quiet and both environment switches silence the bar"


def test_export_draws_no_bar_into_a_pipe(vector_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    export_peft(Vector.open(vector_dir), tmp_path / "a", rank=2, quiet=False)
    assert "export peft" not in capfd.readouterr().err
