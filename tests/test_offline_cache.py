"""Vectors and bases in the standard Hugging Face cache: offline use, cache tools, snapshots, header-only checks.

Everything runs against the real `rvec hub serve` on 127.0.0.1 with the real `huggingface_hub` client.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import HfApi, constants, scan_cache_dir, snapshot_download

from hubtest_common import ALICE, TOKENS
from rvec_hub import Vector, apply_vectors, open_checkpoint
from rvec_hub.errors import CheckpointError, FormatError, HubError, IntegrityError
from rvec_hub.hub.client import pull, push
from rvec_hub.io.checkpoint import open_checkpoint_headers

DEAD = "http://127.0.0.1:9"  # nothing listens there: any request would fail


def _rvec(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from rvec_hub.cli._errors import run_cli
    from rvec_hub.cli.main import cli

    code = run_cli(cli, list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _push_base(url: str, folder: Path, repo_id: str) -> str:
    api = HfApi(endpoint=url, token=ALICE)
    api.create_repo(repo_id)
    return api.upload_folder(repo_id=repo_id, folder_path=folder).oid


def _cache() -> Path:
    return Path(os.environ["HF_HUB_CACHE"])


def _go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1 as huggingface_hub sees it in this process (it reads the variable at import)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


class _CountingApp:
    """ASGI wrapper that counts the response bytes and requests the Hub server sends, per path."""

    def __init__(self, app) -> None:
        self.app, self.sent, self.requests = app, Counter(), Counter()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        self.requests[(scope["method"], path)] += 1

        async def counting_send(message):
            if message["type"] == "http.response.body":
                self.sent[path] += len(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, counting_send)


@pytest.fixture
def counted(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, _CountingApp]]:
    """A real Hub server whose every response byte is counted."""
    from rvec_hub.hub.server import runner

    apps: list[_CountingApp] = []
    real = runner.create_app

    def counting_create_app(*args, **kwargs):
        apps.append(_CountingApp(real(*args, **kwargs)))
        return apps[-1]

    monkeypatch.setattr(runner, "create_app", counting_create_app)
    with runner.running_server(root, TOKENS) as base_url:
        yield base_url, apps[0]


def _weights_bytes_served(app: _CountingApp, repo_id: str) -> int:
    return sum(n for path, n in app.sent.items() if path.startswith(f"/{repo_id}/resolve/") and path.endswith(".safetensors"))


def test_pull_lands_in_the_standard_cache_that_scan_cache_dir_and_hf_cache_see_cleanly(vector_dir: Path, url: str) -> None:
    pushed = push(vector_dir, "alice/listed", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    pulled = pull("alice/listed@1.0.0", endpoint=url)

    assert pulled.path == _cache() / "models--alice--listed" / "snapshots" / pushed.commit
    assert (pulled.path / "vector.safetensors").is_symlink()
    assert not (_cache() / "rvec").exists()
    info = scan_cache_dir(_cache())
    assert info.warnings == []
    (repo,) = [r for r in info.repos if r.repo_id == "alice/listed"]
    (revision,) = repo.revisions
    assert revision.commit_hash == pushed.commit and "v1.0.0" in revision.refs
    assert {f.file_name for f in revision.files} >= {"rvec.json", "README.md", "vector.safetensors"}

    hf = shutil.which("hf", path=str(Path(sys.executable).parent))
    listed = subprocess.run([hf, "cache", "ls"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "alice/listed" in listed.stdout, listed.stdout + listed.stderr
    verified = subprocess.run([hf, "cache", "verify", "alice/listed", "--revision", "v1.0.0"],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "HF_ENDPOINT": url})
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_offline_pull_resolves_version_latest_and_commit_from_the_cache(vector_dir: Path, vector_fp32: Path, url: str, monkeypatch) -> None:
    v1 = push(vector_dir, "alice/evolving", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    v2 = push(vector_fp32, "alice/evolving", "1.1.0", endpoint=url, token=ALICE, quiet=True)
    pull("alice/evolving@1.0.0", endpoint=url)
    pull("alice/evolving@latest", endpoint=url)
    _go_offline(monkeypatch)

    assert pull("alice/evolving@1.0.0", endpoint=DEAD).commit == v1.commit
    assert pull("alice/evolving@v1.0.0", endpoint=DEAD).version == "1.0.0"
    latest = pull("alice/evolving@latest", endpoint=DEAD)
    assert latest.commit == v2.commit and latest.version == "1.1.0"
    assert pull("alice/evolving", endpoint=DEAD).commit == v2.commit
    assert pull(f"alice/evolving@{v1.commit}", endpoint=DEAD).commit == v1.commit
    assert pull(f"alice/evolving@{v1.commit[:10]}", endpoint=DEAD).commit == v1.commit
    with pytest.raises(HubError, match=r"HF_HUB_OFFLINE is set and alice/evolving@2\.0\.0 is not in the Hub cache"):
        pull("alice/evolving@2.0.0", endpoint=DEAD)


def test_unreachable_hub_falls_back_to_the_cached_copy(vector_dir: Path, url: str) -> None:
    pushed = push(vector_dir, "alice/away", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    pull("alice/away@1.0.0", endpoint=url)
    assert pull("alice/away@1.0.0", endpoint=DEAD).commit == pushed.commit
    with pytest.raises(HubError, match=r"cannot reach the Hub at http://127\.0\.0\.1:9 .*not in the Hub cache"):
        pull("alice/away@9.9.9", endpoint=DEAD)


def test_offline_apply_runs_from_the_cache_with_hf_hub_offline_set(vector_dir: Path, family: dict[str, Path], url: str, tmp_path: Path) -> None:
    push(vector_dir, "alice/usable", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    _push_base(url, family["instruct"], "alice/tiny-instruct")
    pull("alice/usable@1.0.0", endpoint=url)
    open_checkpoint("alice/tiny-instruct", endpoint=url)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": DEAD}
    rvec = str(Path(sys.executable).parent / "rvec")

    done = subprocess.run([rvec, "apply", "alice/usable@1.0.0", "--base", "alice/tiny-instruct", "-o", str(tmp_path / "merged"), "-q"],
                          capture_output=True, text=True, timeout=300, env=env)
    missing = subprocess.run([rvec, "apply", "alice/never-pulled@1.0.0", "--base", "alice/tiny-instruct", "-o", str(tmp_path / "x"), "-q"],
                             capture_output=True, text=True, timeout=300, env=env)

    assert done.returncode == 0, done.stderr
    expected = apply_vectors([(Vector.open(vector_dir), 1.0)], open_checkpoint(family["instruct"]), tmp_path / "local", quiet=True)
    merged, local = open_checkpoint(tmp_path / "merged"), open_checkpoint(expected.path)
    assert all(merged.read_rows(n).equal(local.read_rows(n)) for n in local.tensors)
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert missing.stderr.startswith("error: HF_HUB_OFFLINE is set and alice/never-pulled@1.0.0 is not in the Hub cache")


def test_every_command_works_offline_when_vector_and_base_are_cached(
    vector_dir: Path, family: dict[str, Path], url: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    push(vector_dir, "alice/offline", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    _push_base(url, family["instruct"], "alice/tiny-instruct")
    pull("alice/offline@1.0.0", endpoint=url)
    open_checkpoint("alice/tiny-instruct", endpoint=url)
    _go_offline(monkeypatch)
    vec, base = "alice/offline@1.0.0", "alice/tiny-instruct"

    commands = {
        "info": ["info", vec, "--json"],
        "check": ["check", vec, "--base", base],
        "check --no-precision": ["check", vec, "--base", base, "--no-precision"],
        "compress": ["compress", vec, "-o", str(tmp_path / "small"), "--method", "lowrank", "--rank", "4", "-q"],
        "export peft": ["export", "peft", vec, "-o", str(tmp_path / "lora"), "--rank", "4"],
        "serve --dry-run": ["serve", "--base", base, "--vector", vec, "--dry-run"],
        "eval": ["eval", "--base", base, "--vector", vec, "--tasks", "arith", "--limit", "1", "--max-tokens", "2",
                 "--engine", "transformers", "--device", "cpu", "--json"],
    }
    failed = {}
    for name, args in commands.items():
        code, out, err = _rvec(capsys, *args)
        if code != 0:
            failed[name] = err
    assert failed == {}


def test_offline_errors_name_the_missing_vector_or_base_in_one_line(vector_dir: Path, capsys, monkeypatch) -> None:
    _go_offline(monkeypatch)
    code, _, err = _rvec(capsys, "info", "alice/nowhere@1.0.0")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "HF_HUB_OFFLINE is set and alice/nowhere@1.0.0 is not in the Hub cache" in err and "rvec pull alice/nowhere@1.0.0" in err

    code, _, err = _rvec(capsys, "check", str(vector_dir), "--base", "alice/no-base", "--no-precision")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "HF_HUB_OFFLINE is set and base alice/no-base is not in the Hub cache" in err and "hf download alice/no-base" in err


def test_base_cached_by_a_header_only_check_says_its_weights_are_missing_offline(vector_dir: Path, family: dict[str, Path], url: str, monkeypatch) -> None:
    _push_base(url, family["instruct"], "alice/headers-only")
    open_checkpoint_headers("alice/headers-only", endpoint=url)
    _go_offline(monkeypatch)
    with pytest.raises((CheckpointError, HubError), match="alice/headers-only.*(without its weights|not in the Hub cache|partly)"):
        open_checkpoint("alice/headers-only", endpoint=DEAD)


def test_a_pull_that_fails_verification_leaves_no_verified_looking_snapshot(vector_dir: Path, url: str, tmp_path: Path) -> None:
    # The repository's manifest promises other bytes than its payload holds (pushed around rvec's own checks).
    lying = tmp_path / "lying"
    shutil.copytree(vector_dir, lying)
    manifest = json.loads((lying / "rvec.json").read_text())
    entry = next(f for f in manifest["files"] if f["path"] == "vector.safetensors")
    entry["sha256"] = "0" * 64
    (lying / "rvec.json").write_text(json.dumps(manifest, indent=2))
    commit = _push_base(url, lying, "alice/lying")
    HfApi(endpoint=url, token=ALICE).create_tag("alice/lying", tag="v1.0.0")

    with pytest.raises(IntegrityError, match="vector.safetensors sha256 differs.*removed from the cache"):
        pull("alice/lying@1.0.0", endpoint=url)

    storage = _cache() / "models--alice--lying"
    assert not (storage / "snapshots" / commit / "vector.safetensors").exists()
    assert not [p for p in (storage / "blobs").iterdir() if p.stat().st_size == (vector_dir / "vector.safetensors").stat().st_size]
    assert scan_cache_dir(_cache()).warnings == []
    with pytest.raises(HubError, match="is not (complete )?in the Hub cache"):
        pull("alice/lying@1.0.0", endpoint=DEAD)


def test_a_cached_file_that_rotted_is_forgotten_and_fetched_again(vector_dir: Path, url: str) -> None:
    push(vector_dir, "alice/rotted", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    payload = pull("alice/rotted@1.0.0", endpoint=url).path / "vector.safetensors"
    payload.write_bytes(b"\x00" * payload.stat().st_size)  # through the link: the blob itself rots

    with pytest.raises(HubError, match="not complete in the Hub cache"):
        pull("alice/rotted@1.0.0", endpoint=DEAD)
    assert pull("alice/rotted@1.0.0", endpoint=url).path / "vector.safetensors" == payload
    assert payload.read_bytes() == (vector_dir / "vector.safetensors").read_bytes()


def test_hf_download_snapshot_folder_opens_as_a_vector_but_links_elsewhere_are_refused(vector_dir: Path, url: str, tmp_path: Path) -> None:
    push(vector_dir, "alice/snap", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    push(vector_dir, "alice/other", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    folder = Path(snapshot_download("alice/snap", revision="v1.0.0", endpoint=url))
    other = Path(snapshot_download("alice/other", revision="v1.0.0", endpoint=url))

    vec = Vector.open(folder)
    name = next(n for n, e in vec.entries.items() if e.encoding != "zero")
    assert vec.decode(name).equal(Vector.open(vector_dir).decode(name))

    outside = tmp_path / "payload.safetensors"
    shutil.copyfile(vector_dir / "vector.safetensors", outside)
    for target in (outside, other / "vector.safetensors"):  # a file elsewhere, another repository's blob
        link = folder / "vector.safetensors"
        link.unlink()
        link.symlink_to(target.resolve())
        with pytest.raises(FormatError, match="points outside the vector directory"):
            Vector.open(folder)


def test_check_no_precision_against_a_hub_base_reads_only_headers(
    vector_dir: Path, wide_vector: Path, family: dict[str, Path], counted, capsys
) -> None:
    url, app = counted
    _push_base(url, family["instruct"], "alice/tiny-instruct")
    size = (family["instruct"] / "model.safetensors").stat().st_size
    app.sent.clear()

    code, out, err = _rvec(capsys, "check", str(vector_dir), "--base", "alice/tiny-instruct", "--no-precision", "--endpoint", url)
    assert code == 0 and out.startswith("compatible"), err
    code, _, err = _rvec(capsys, "check", str(wide_vector), "--base", "alice/tiny-instruct", "--no-precision", "--endpoint", url)
    assert code == 1 and "incompatible" in err and "hidden" in err

    served = _weights_bytes_served(app, "alice/tiny-instruct")
    assert 0 < served <= 2 * 100_001 < size, f"{served} bytes of a {size}-byte weights file were served: {app.requests} {app.sent}"
    assert not any(p.stat().st_size == size for p in _cache().glob("models--alice--tiny-instruct/blobs/*")), "the weights were downloaded"


def test_serve_precheck_against_a_hub_base_reads_only_headers_and_pins_the_commit(
    vector_dir: Path, family: dict[str, Path], counted, capsys
) -> None:
    url, app = counted
    commit = _push_base(url, family["instruct"], "alice/tiny-instruct")
    app.sent.clear()

    code, out, err = _rvec(capsys, "serve", "--base", "alice/tiny-instruct", "--vector", str(vector_dir), "--dry-run", "--endpoint", url)

    assert code == 0, err
    assert f"--model alice/tiny-instruct --revision {commit}" in out
    assert _weights_bytes_served(app, "alice/tiny-instruct") <= 100_001
    assert not any(p.name.endswith(".safetensors") for p in _cache().glob("models--alice--tiny-instruct/snapshots/*/*"))


def test_sharded_hub_base_opens_from_its_snapshot_and_from_its_headers(vector_dir: Path, family: dict[str, Path], url: str, tmp_path: Path) -> None:
    sharded = apply_vectors([(Vector.open(vector_dir), 0.0)], open_checkpoint(family["instruct"]), tmp_path / "sharded",
                            max_shard_bytes=200_000, quiet=True).path
    assert (sharded / "model.safetensors.index.json").exists()
    _push_base(url, sharded, "alice/sharded")
    local = open_checkpoint(sharded)

    headers = open_checkpoint_headers("alice/sharded", endpoint=url)
    full = open_checkpoint("alice/sharded", endpoint=url)

    assert headers.headers_only and {n: t.shape for n, t in headers.tensors.items()} == {n: t.shape for n, t in local.tensors.items()}
    assert all(full.read_rows(n).equal(local.read_rows(n)) for n in local.tensors)
    with pytest.raises(CheckpointError, match="headers only"):
        headers.read_rows("model.norm.weight")


def test_load_format_resolves_hub_vectors_from_the_cache_offline(vector_dir: Path, url: str, monkeypatch) -> None:
    from rvec_serving.spec import VectorSpec, open_specs, split_extra_config

    pushed = push(vector_dir, "alice/served", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    pull("alice/served@1.0.0", endpoint=url)
    _go_offline(monkeypatch)

    specs, endpoint, _ = split_extra_config(json.dumps({"vectors": [{"ref": "alice/served@1.0.0", "alpha": 0.5}], "endpoint": DEAD}))
    (opened,) = open_specs(specs, endpoint=endpoint)
    assert opened.alpha == 0.5 and opened.vector.path.name == pushed.commit
    assert open_specs([VectorSpec("alice/served@latest")], endpoint=DEAD)[0].vector.path == opened.vector.path


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_load_format_rvec_serves_a_hub_base_and_vector_from_the_cache_with_hf_hub_offline_set(
    vector_dir: Path, family: dict[str, Path], url: str, tmp_path: Path
) -> None:
    pytest.importorskip("vllm")
    push(vector_dir, "alice/served", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    commit = _push_base(url, family["instruct"], "alice/tiny-instruct")
    pull("alice/served@1.0.0", endpoint=url)
    open_checkpoint("alice/tiny-instruct", endpoint=url)
    applied = apply_vectors([(Vector.open(vector_dir), 1.0)], open_checkpoint(family["instruct"]), tmp_path / "applied", quiet=True).path
    engine = {"enforce_eager": True, "max_model_len": 256, "max_num_seqs": 8, "gpu_memory_utilization": 0.1,
              "distributed_executor_backend": "uni"}
    hub = {"model": "alice/tiny-instruct", "revision": commit, "load_format": "rvec",
           "model_loader_extra_config": {"vectors": [{"ref": "alice/served@1.0.0"}], "endpoint": DEAD}}
    spec = {"prompts": ["The quick brown fox", "Question: Tom has 3 apples"], "max_tokens": 6, "logprobs": 3, "engine": engine,
            "runs": [{"name": "applied", "llm": {"model": str(applied), "load_format": "safetensors"}}, {"name": "hub", "llm": hub}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))

    proc = subprocess.run([sys.executable, "-m", "rvec_serving.probe", str(tmp_path / "spec.json"), str(tmp_path / "out.json")],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": DEAD})

    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["name"]: r for r in json.loads((tmp_path / "out.json").read_text())}
    assert "error" not in results["hub"], results["hub"].get("error")
    assert [o["tokens"] for o in results["hub"]["outputs"]["base"]] == [o["tokens"] for o in results["applied"]["outputs"]["base"]]
