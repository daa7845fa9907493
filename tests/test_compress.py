"""`compress`: lossless packed, low-rank by rank, energy and byte budget, apply equivalence, the probe, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rvec_hub import UsageError, Vector, apply_vectors, compress, open_checkpoint, vector_info
from rvec_hub.cli._errors import run_cli
from rvec_hub.cli.main import cli
from rvec_hub.io.safetensors_io import ShardWriter
from rvec_hub.manifest import load_manifest
from rvec_hub.package import PAYLOAD_METADATA, finalize_vector


def _payload(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def _decoded(path: Path) -> dict[str, torch.Tensor]:
    vec = Vector.open(path)
    return {name: vec.decode(name) for name in vec.entries}


def test_lossless_compress_is_bit_exact_and_smaller(vector_dir: Path, tmp_path: Path) -> None:
    result = compress(Vector.open(vector_dir), tmp_path / "lossless", device="cpu", quiet=True)
    original, compressed = _decoded(vector_dir), _decoded(result.path)
    assert all(torch.equal(original[n], compressed[n]) for n in original)
    assert result.payload_bytes < 0.5 * _payload(vector_dir)
    assert result.manifest.compression["lossless"] is True
    encodings = {t.encoding for t in result.manifest.tensors}
    assert "packed" in encodings and "lowrank" not in encodings


def test_lossless_compress_writes_the_same_bytes_on_one_thread_and_on_several(vector_fp32: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads = torch.get_num_threads()
    written = {}
    for cores in (4, 1):
        monkeypatch.setattr("os.cpu_count", lambda: cores)
        result = compress(Vector.open(vector_fp32), tmp_path / f"on-{cores}", device="cpu", quiet=True)
        written[cores] = [p.read_bytes() for p in sorted(result.path.glob("*.safetensors"))]
        assert torch.get_num_threads() == threads
    assert written[4] == written[1]


def test_every_entry_records_keys_params_and_stats(vector_dir: Path, tmp_path: Path) -> None:
    result = compress(Vector.open(vector_dir), tmp_path / "r8", method="lowrank", rank=8, device="cpu", quiet=True)
    for t in result.manifest.tensors:
        if t.encoding == "lowrank":
            assert set(t.keys) == {"A", "B"} and t.params["rank"] == 8
            assert 0 < t.stats["rel_error"] < 1 and 0 < t.stats["energy"] <= 1 and t.stats["norm"] > 0
        elif t.encoding == "packed":
            assert set(t.keys) == {"index", "table", "data"} and 0 < t.params["density"] <= 1
    summary = result.manifest.compression
    assert summary["payload_bytes"] < summary["dense_bytes"] and 0 < summary["ratio_to_dense"] < 1
    assert summary["encodings"]["lowrank"] > 0 and summary["mean_rank"] == 8


def test_compress_writes_the_plot_into_assets_and_the_card(vector_dir: Path, tmp_path: Path) -> None:
    result = compress(Vector.open(vector_dir), tmp_path / "c", rank=8, device="cpu", quiet=True)
    assert "assets/compression.png" in {f.path for f in result.manifest.files}
    assert (result.path / "assets" / "compression.png").read_bytes().startswith(b"\x89PNG")
    card = (result.path / "README.md").read_text()
    assert "## Compression" in card and "![assets/compression.png](assets/compression.png)" in card


def test_info_shows_the_compression_summary(vector_dir: Path, tmp_path: Path) -> None:
    compress(Vector.open(vector_dir), tmp_path / "c", rank=8, device="cpu", quiet=True)
    info = vector_info(Vector.open(tmp_path / "c"))
    assert info["compression"]["rank"] == 8 and info["encodings"]["lowrank"] > 0
    run = CliRunner().invoke(cli, ["info", str(tmp_path / "c")])
    assert run.exit_code == 0 and "compression:" in run.output and "ratio_to_dense" in run.output


def _apply(vector: Path, base: Path, out: Path) -> dict[str, torch.Tensor]:
    ckpt = open_checkpoint(base)
    apply_vectors([(Vector.open(vector), 1.0)], ckpt, out, out_dtype=torch.float32, quiet=True, device="cpu")
    merged = open_checkpoint(out)
    return {n: merged.read_rows(n) for n in merged.tensors}


@pytest.mark.parametrize("options", [{"method": "sparse"}, {"method": "lowrank", "rank": 8}, {"budget": "120KB"}, {"energy": 0.6}])
def test_apply_from_each_encoding_equals_apply_from_its_decoded_dense_tensors(
    options: dict, vector_fp32: Path, family: dict[str, Path], tmp_path: Path
) -> None:
    compressed = compress(Vector.open(vector_fp32), tmp_path / "c", device="cpu", quiet=True, **options).path
    # The same deltas, decoded and stored dense in float32 (dense is exact for a float32 vector).
    dense = compress(Vector.open(compressed), tmp_path / "d", method="dense", quiet=True, device="cpu").path
    assert {t.encoding for t in load_manifest(dense).tensors} <= {"dense", "zero"}
    from_compressed = _apply(compressed, family["instruct"], tmp_path / "m1")
    from_dense = _apply(dense, family["instruct"], tmp_path / "m2")
    assert all(torch.equal(from_compressed[n], from_dense[n]) for n in from_dense)


def test_compress_reads_a_vector_of_any_encoding(vector_fp32: Path, tmp_path: Path) -> None:
    low = compress(Vector.open(vector_fp32), tmp_path / "low", method="lowrank", rank=4, device="cpu", quiet=True).path
    again = compress(Vector.open(low), tmp_path / "sparse", method="sparse", device="cpu", quiet=True).path
    a, b = _decoded(low), _decoded(again)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_energy_target_keeps_at_least_that_share_per_matrix(vector_fp32: Path, tmp_path: Path) -> None:
    result = compress(Vector.open(vector_fp32), tmp_path / "e", method="lowrank", energy=0.7, factor_dtype="fp32", device="cpu", quiet=True)
    lowrank = [t for t in result.manifest.tensors if t.encoding == "lowrank"]
    # The rank comes from the exact spectrum; the randomized SVD captures within 1 % of it.
    assert lowrank and all(t.stats["energy"] >= 0.7 * 0.99 for t in lowrank)
    assert any(t.params["rank"] > 1 for t in lowrank)


def _vector_with_layer_ranks(template: Path, out: Path, ranks: dict[int, int]) -> Path:
    """A float32 vector shaped like `template` whose matrices in layer i have rank ranks[i]."""
    manifest = load_manifest(template)
    g = torch.Generator().manual_seed(0)
    deltas = {}
    for t in manifest.tensors:
        layer = next((i for i in ranks if f".layers.{i}." in t.name), None)
        if len(t.shape) == 2 and layer is not None:
            r = ranks[layer]
            deltas[t.name] = (torch.randn(t.shape[0], r, generator=g) @ torch.randn(r, t.shape[1], generator=g)) * 1e-3
        elif t.encoding != "zero":
            deltas[t.name] = torch.randn(t.shape, generator=g) * 1e-4
    out.mkdir()
    writer = ShardWriter(out, "vector", 2**30, PAYLOAD_METADATA, [(n, tuple(d.shape), torch.float32) for n, d in deltas.items()])
    for name, delta in deltas.items():
        writer.add(name, delta)
    shards = writer.finish()
    tensors = [
        t.model_copy(update={"encoding": "dense", "keys": {"delta": t.name}, "dtype": "float32"}) if t.name in deltas else t
        for t in manifest.tensors
    ]
    fields = manifest.model_dump(exclude={"files", "tensors"})
    finalize_vector(out, {**fields, "tensors": tensors}, [p for p, _ in shards])
    return out


def test_budget_is_never_exceeded(vector_dir: Path, tmp_path: Path) -> None:
    for budget in (60_000, 100_000, 180_000):
        out = compress(Vector.open(vector_dir), tmp_path / f"b{budget}", budget=budget, device="cpu", quiet=True)
        assert _payload(out.path) <= budget


def test_budget_beats_uniform_rank_at_equal_bytes_when_layers_differ_in_rank(vector_fp32: Path, tmp_path: Path) -> None:
    vec = _vector_with_layer_ranks(vector_fp32, tmp_path / "mixed", {0: 2, 1: 40})
    uniform = compress(Vector.open(vec), tmp_path / "u", method="lowrank", rank=12, factor_dtype="fp32", device="cpu", quiet=True)
    budget = compress(Vector.open(vec), tmp_path / "b", method="lowrank", budget=_payload(uniform.path), factor_dtype="fp32", device="cpu", quiet=True)
    assert _payload(budget.path) <= _payload(uniform.path)
    assert budget.manifest.compression["rel_error"] < 0.7 * uniform.manifest.compression["rel_error"]
    ranks = {t.name: t.params.get("rank") for t in budget.manifest.tensors if t.encoding == "lowrank"}
    assert max(r for n, r in ranks.items() if ".layers.0." in n) < min(r for n, r in ranks.items() if ".layers.1." in n)


def test_probe_kl_is_zero_when_lossless_and_positive_when_truncated(vector_dir: Path, family: dict[str, Path], tmp_path: Path) -> None:
    lossless = compress(Vector.open(vector_dir), tmp_path / "l", probe_base=family["instruct"], device="cpu", quiet=True)
    truncated = compress(Vector.open(vector_dir), tmp_path / "t", method="lowrank", rank=2, probe_base=family["instruct"], device="cpu", quiet=True)
    assert lossless.manifest.probe["kl_mean"] == 0.0 and lossless.manifest.probe["kl_max"] == 0.0
    assert lossless.manifest.probe["top1_agreement"] == 1.0
    assert truncated.manifest.probe["kl_mean"] > 0.0 and truncated.manifest.probe["kl_max"] >= truncated.manifest.probe["kl_mean"]
    assert truncated.manifest.probe["tokens"] > 50
    assert "## Fidelity probe" in (truncated.path / "README.md").read_text()


def test_compress_refuses_a_rank_larger_than_every_matrix(vector_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"rank 4096 is larger than every matrix in the vector \(the largest allows 128\)"):
        compress(Vector.open(vector_dir), tmp_path / "x", method="lowrank", rank=4096, device="cpu", quiet=True)
    assert not (tmp_path / "x").exists()


def test_compress_refuses_a_budget_too_small_for_rank_one(vector_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"too small for even rank 1 on every matrix .* needs at least [\d,]+ bytes"):
        compress(Vector.open(vector_dir), tmp_path / "x", budget="2KB", device="cpu", quiet=True)


@pytest.mark.parametrize("energy", [0.0, -0.5, 1.5])
def test_compress_refuses_energy_outside_the_unit_interval(energy: float, vector_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"outside \(0, 1\]"):
        compress(Vector.open(vector_dir), tmp_path / "x", energy=energy, device="cpu", quiet=True)


def test_compress_refuses_two_rank_targets_at_once(vector_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="choose one way to set the rank"):
        compress(Vector.open(vector_dir), tmp_path / "x", rank=4, energy=0.5, device="cpu", quiet=True)


def test_cli_compress_reports_size_and_fidelity(vector_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = run_cli(cli, ["compress", str(vector_dir), "-o", str(tmp_path / "c"), "--rank", "8", "--device", "cpu", "-q"])
    out = capsys.readouterr().out
    assert code == 0 and "of dense" in out and "relative error" in out
    code = run_cli(cli, ["compress", str(vector_dir), "-o", str(tmp_path / "j"), "--device", "cpu", "-q", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["compression"]["lossless"] is True


def test_cli_compress_bad_budget_is_one_line_and_exit_1(vector_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = run_cli(cli, ["compress", str(vector_dir), "-o", str(tmp_path / "c"), "--budget", "lots", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: cannot read size 'lots'") and "Traceback" not in err


def test_cli_compress_refuses_an_unknown_device(vector_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = run_cli(cli, ["compress", str(vector_dir), "-o", str(tmp_path / "c"), "--device", "tpu"])
    assert code == 1 and "unknown device 'tpu'" in capsys.readouterr().err


def test_compressed_ratio_matches_the_files(vector_dir: Path, tmp_path: Path) -> None:
    result = compress(Vector.open(vector_dir), tmp_path / "c", device="cpu", quiet=True)
    assert math.isclose(result.ratio, result.payload_bytes / result.dense_bytes)
    assert result.payload_bytes == _payload(result.path)
