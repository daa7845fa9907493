"""The Hub client (push, pull, versions, search) with the real `huggingface_hub` against the real server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


from huggingface_hub import HfApi, constants  # noqa: E402

import rvec_hub.hub.fetch as fetch_module  # noqa: E402
from rvec_hub.errors import HubError, IntegrityError, OutputExistsError, UsageError  # noqa: E402
from rvec_hub.hub.client import pull, push, search, versions  # noqa: E402
from rvec_hub.manifest import load_manifest  # noqa: E402
from rvec_hub.package import finalize_vector  # noqa: E402
from rvec_hub.refs import open_vector  # noqa: E402

from hubtest_common import ALICE, BOB




def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _variant(source: Path, dest: Path, *, base_model: str | None = None, asset_bytes: int = 0) -> Path:
    """A copy of a vector with another suggested base and/or a large random asset, re-finalized."""
    shutil.copytree(source, dest)
    manifest = load_manifest(dest)
    fields = manifest.model_dump(mode="json", exclude={"files"})
    if base_model is not None:
        fields["base"]["model_id"] = base_model
    if asset_bytes:
        (dest / "assets").mkdir()
        (dest / "assets" / "noise.bin").write_bytes(os.urandom(asset_bytes))
    payload = [dest / f.path for f in manifest.files if f.path.endswith(".safetensors")]
    finalize_vector(dest, fields, payload)
    return dest


def _blob(root: Path, repo_id: str, sha256: str) -> Path:
    """Where the server keeps a file's bytes (content-addressed by sha256)."""
    return root / "repos" / repo_id / "objects" / "blobs" / sha256[:2] / sha256


def _without_card(files: dict[str, bytes]) -> dict[str, bytes]:
    # The card is rendered again at push time (it names the repo and version), so it differs by design.
    return {k: v for k, v in files.items() if k != "README.md"}


def test_push_then_pull_round_trips_bit_exactly_through_regular_and_lfs_uploads(vector_dir: Path, url: str, tmp_path: Path) -> None:
    pushed = push(vector_dir, "alice/tiny-reasoning", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    info = {f.path: f for f in HfApi(endpoint=url, token=ALICE).list_repo_tree("alice/tiny-reasoning", recursive=True)}
    assert info["vector.safetensors"].lfs is not None and info["rvec.json"].lfs is None

    pulled = pull("alice/tiny-reasoning@1.0.0", output=tmp_path / "copy", endpoint=url)

    assert pulled.commit == pushed.commit and pulled.version == "1.0.0"
    assert _without_card(_files(pulled.path)) == _without_card(_files(vector_dir))
    card = (pulled.path / "README.md").read_text()
    assert "alice/tiny-reasoning@1.0.0" in card and "base_model: tiny/instruct" in card
    assert not list(tmp_path.glob(".copy*")), "staging directory left behind"


def test_pull_without_output_lands_verified_in_the_hub_cache_and_is_reused(vector_dir: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    push(vector_dir, "alice/cached", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    first = pull("alice/cached", endpoint=url)
    cache = Path(os.environ["HF_HUB_CACHE"])
    assert first.path == cache / "models--alice--cached" / "snapshots" / first.commit

    calls: list[str] = []
    monkeypatch.setattr(fetch_module, "hf_hub_download", lambda repo_id, filename, **k: calls.append(filename))
    again = pull("alice/cached@1.0.0", endpoint=url)
    assert again.path == first.path and calls == [], "a verified cached copy is downloaded again"


def test_pull_replaces_a_cached_copy_that_no_longer_verifies(vector_dir: Path, url: str) -> None:
    push(vector_dir, "alice/rotted", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    cached = pull("alice/rotted", endpoint=url).path
    payload = cached / "vector.safetensors"
    payload.write_bytes(b"\x00" * payload.stat().st_size)

    assert pull("alice/rotted@1.0.0", endpoint=url).path == cached
    assert payload.read_bytes() == (vector_dir / "vector.safetensors").read_bytes()


def test_two_versions_coexist_and_version_latest_and_commit_each_resolve(vector_dir: Path, vector_fp32: Path, url: str, tmp_path: Path) -> None:
    v1 = push(vector_dir, "alice/evolving", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    v2 = push(vector_fp32, "alice/evolving", "v1.1.0", endpoint=url, token=ALICE, quiet=True)
    push(vector_dir, "alice/evolving", "2.0.0-rc.1", endpoint=url, token=ALICE, quiet=True)

    listed = versions("alice/evolving", endpoint=url)
    assert [(str(v.version), v.commit) for v in listed][1:] == [("1.1.0", v2.commit), ("1.0.0", v1.commit)]
    assert str(listed[0].version) == "2.0.0-rc.1" and all(v.date is not None for v in listed)

    by_version = pull("alice/evolving@1.0.0", output=tmp_path / "a", endpoint=url)
    by_tag = pull("alice/evolving@v1.0.0", output=tmp_path / "b", endpoint=url)
    latest = pull("alice/evolving@latest", output=tmp_path / "c", endpoint=url)
    bare = pull("alice/evolving", output=tmp_path / "d", endpoint=url)
    by_sha = pull(f"alice/evolving@{v1.commit}", output=tmp_path / "e", endpoint=url)
    assert by_version.commit == by_tag.commit == by_sha.commit == v1.commit
    assert latest.commit == bare.commit == v2.commit and latest.version == "1.1.0"
    assert _without_card(_files(by_sha.path)) == _without_card(_files(vector_dir))
    assert _without_card(_files(latest.path)) == _without_card(_files(vector_fp32))
    assert pull("alice/evolving@2.0.0-rc.1", output=tmp_path / "f", endpoint=url).version == "2.0.0-rc.1"


def test_push_removes_files_the_new_version_no_longer_has(vector_dir: Path, url: str, tmp_path: Path) -> None:
    with_asset = _variant(vector_dir, tmp_path / "with-asset", asset_bytes=1000)
    push(with_asset, "alice/shrinking", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    push(vector_dir, "alice/shrinking", "1.1.0", endpoint=url, token=ALICE, quiet=True)
    api = HfApi(endpoint=url, token=ALICE)
    assert "assets/noise.bin" in api.list_repo_files("alice/shrinking", revision="v1.0.0")
    assert "assets/noise.bin" not in api.list_repo_files("alice/shrinking", revision="v1.1.0")


def test_pull_detects_a_file_tampered_on_the_server_and_keeps_the_users_directory(vector_dir: Path, unverified_url: str, root: Path, tmp_path: Path) -> None:
    push(vector_dir, "alice/tampered", "1.0.0", endpoint=unverified_url, token=ALICE, quiet=True)
    entry = next(f for f in load_manifest(vector_dir).files if f.path == "vector.safetensors")
    blob = _blob(root, "alice/tampered", entry.sha256)
    data = bytearray(blob.read_bytes())
    data[-7] ^= 0xFF  # same size, one byte of payload flipped
    blob.write_bytes(bytes(data))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")

    with pytest.raises(IntegrityError, match="vector.safetensors sha256 differs"):
        pull("alice/tampered@1.0.0", output=mine, force=True, endpoint=unverified_url)
    with pytest.raises(IntegrityError):
        pull("alice/tampered@1.0.0", endpoint=unverified_url)

    assert _files(mine) == {"notes.txt": b"keep me"}
    assert not list(Path(os.environ["HF_HUB_CACHE"]).rglob("vector.safetensors")), "a corrupt file reached the cache"


def test_pull_detects_a_tampered_manifest_against_the_commit_tree(vector_dir: Path, unverified_url: str, root: Path, tmp_path: Path) -> None:
    push(vector_dir, "alice/forged", "1.0.0", endpoint=unverified_url, token=ALICE, quiet=True)
    manifest_bytes = (vector_dir / "rvec.json").read_bytes()
    import hashlib

    blob = _blob(root, "alice/forged", hashlib.sha256(manifest_bytes).hexdigest())
    blob.write_bytes(manifest_bytes.replace(b'"default_alpha": 1.0', b'"default_alpha": 9.0'))

    with pytest.raises(IntegrityError, match="rvec.json differs from the commit's tree"):
        pull("alice/forged@1.0.0", output=tmp_path / "out", endpoint=unverified_url)
    assert not (tmp_path / "out").exists()


def test_push_refuses_an_existing_version(vector_dir: Path, url: str) -> None:
    first = push(vector_dir, "alice/fixed", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    with pytest.raises(HubError, match=r"already has version 1\.0\.0 .*e\.g\. 1\.0\.1"):
        push(vector_dir, "alice/fixed", "v1.0.0", endpoint=url, token=ALICE, quiet=True)
    assert [v.commit for v in versions("alice/fixed", endpoint=url)] == [first.commit]


def test_push_racing_another_commit_is_refused_instead_of_overwriting_it(vector_dir: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import rvec_hub.hub.push as push_module

    push(vector_dir, "alice/raced", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    api = HfApi(endpoint=url, token=ALICE)
    real_head = push_module._branch_head

    def head_then_someone_else_commits(api_: HfApi, repo_id: str) -> str | None:
        head = real_head(api_, repo_id)
        api.upload_file(path_or_fileobj=b"theirs\n", path_in_repo="NOTES.md", repo_id=repo_id)
        return head

    monkeypatch.setattr(push_module, "_branch_head", head_then_someone_else_commits)
    with pytest.raises(HubError, match="changed while this command ran"):
        push(vector_dir, "alice/raced", "1.1.0", endpoint=url, token=ALICE, quiet=True)
    assert "NOTES.md" in api.list_repo_files("alice/raced")
    assert [str(v.version) for v in versions("alice/raced", endpoint=url)] == ["1.0.0"]


def test_versions_order_by_semver_precedence_and_latest_prefers_releases() -> None:
    from rvec_hub.hub.versions import Version, latest

    chain = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11",
             "1.0.0-rc.1", "1.0.0", "1.0.1", "1.2.0", "1.10.0", "2.0.0"]
    parsed = [Version.parse(v) for v in chain]
    assert sorted(reversed(parsed)) == parsed and [str(v) for v in parsed] == chain
    assert Version.parse("v1.2.3") == Version.parse("1.2.3") and Version.parse("1.2.3").tag == "v1.2.3"
    assert Version.from_tag("stable") is None and Version.from_tag("v1") is None
    tags = {Version.parse(v): "c" for v in ("1.0.0", "1.1.0", "2.0.0-rc.1")}
    assert str(latest(tags)) == "1.1.0"
    assert str(latest({Version.parse("0.1.0-rc.1"): "c"})) == "0.1.0-rc.1" and latest({}) is None


class _CreateAnswers:
    """huggingface_hub's HTTP session, except that creating a repository gets `status` with `body` back
    (after the real Hub has handled it): a Hub that says "exists" without the url huggingface_hub reads."""

    def __init__(self, session: object, status: int, body: bytes) -> None:
        self._session, self._status, self._body = session, status, body

    def post(self, url: str, *args: object, **kwargs: object) -> object:
        import httpx2

        answer = self._session.post(url, *args, **kwargs)
        if not url.endswith("/api/repos/create"):
            return answer
        return httpx2.Response(self._status, content=self._body, headers={"Content-Type": "application/json"}, request=answer.request)

    def __getattr__(self, name: str) -> object:
        return getattr(self._session, name)


@pytest.mark.parametrize("status, body", [(409, b'{"error": "You already created this model repo"}'), (409, b"exists"), (200, b"{}")])
def test_push_to_a_hub_whose_create_answer_names_no_url(vector_dir: Path, url: str, status: int, body: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.hf_api as hf_api

    session = hf_api.get_session()
    monkeypatch.setattr(hf_api, "get_session", lambda: _CreateAnswers(session, status, body))
    pushed = push(vector_dir, f"alice/no-url-{status}-{len(body)}", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    assert pushed.url == f"{url}/alice/no-url-{status}-{len(body)}"
    assert [str(v.version) for v in versions(pushed.repo_id, endpoint=url, token=ALICE)] == ["1.0.0"]


def test_push_where_create_answers_409_without_url_and_no_repository_exists_says_so(vector_dir: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.hf_api as hf_api

    session = hf_api.get_session()
    monkeypatch.setattr(hf_api, "get_session", lambda: _CreateAnswers(session, 409, b"{}"))
    # BOB may not create under alice's namespace: the real Hub refuses, the answer says "exists", nothing exists.
    with pytest.raises(HubError, match="alice/ghost"):
        push(vector_dir, "alice/ghost", "1.0.0", endpoint=url, token=BOB, quiet=True)


@pytest.mark.parametrize("bad", ["1.0", "01.0.0", "1.0.0+build.5", "latest", "v1"])
def test_push_refuses_a_version_that_is_not_semver(vector_dir: Path, bad: str) -> None:
    with pytest.raises(UsageError, match="semantic versioning"):
        push(vector_dir, "alice/x", bad, endpoint="http://127.0.0.1:9", token=ALICE)


def test_push_verifies_the_vector_before_creating_anything(vector_dir: Path, url: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(vector_dir, broken)
    payload = broken / "vector.safetensors"
    data = bytearray(payload.read_bytes())
    data[-1] ^= 0xFF
    payload.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        push(broken, "alice/broken", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    assert not HfApi(endpoint=url, token=ALICE).repo_exists("alice/broken")


def test_missing_repo_version_or_file_gives_a_clear_error(vector_dir: Path, url: str, tmp_path: Path) -> None:
    with pytest.raises(HubError, match="repository alice/nothing-here not found"):
        pull("alice/nothing-here@1.0.0", endpoint=url)
    push(vector_dir, "alice/partial", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    with pytest.raises(HubError, match=r"has no version 3\.0\.0; it has 1\.0\.0"):
        pull("alice/partial@3.0.0", endpoint=url)
    with pytest.raises(HubError, match="not found|Invalid rev"):
        pull("alice/partial@0123456789abcdef0123456789abcdef01234567", endpoint=url)

    api = HfApi(endpoint=url, token=ALICE)
    api.delete_file("vector.safetensors", "alice/partial")
    api.create_tag("alice/partial", tag="v1.0.1")
    with pytest.raises(HubError, match="lacks 1 file.*vector.safetensors"):
        pull("alice/partial@1.0.1", output=tmp_path / "out", endpoint=url)

    api.create_repo("alice/plain")
    api.upload_file(path_or_fileobj=b"hello\n", path_in_repo="notes.txt", repo_id="alice/plain")
    with pytest.raises(HubError, match="not an rvec vector"):
        pull("alice/plain", endpoint=url)
    with pytest.raises(HubError, match="has no versions yet"):
        pull("alice/plain@latest", endpoint=url)


def test_unreachable_hub_is_a_clear_error(vector_dir: Path) -> None:
    with pytest.raises(HubError, match=r"cannot reach the Hub at http://127\.0\.0\.1:9"):
        pull("alice/x@1.0.0", endpoint="http://127.0.0.1:9")


def test_private_vector_is_invisible_without_the_token(vector_dir: Path, url: str, tmp_path: Path) -> None:
    push(vector_dir, "alice/secret", "1.0.0", private=True, endpoint=url, token=ALICE, quiet=True)

    with pytest.raises(HubError, match="not found") as anonymous:
        pull("alice/secret@1.0.0", endpoint=url)
    with pytest.raises(HubError, match="not found"):
        versions("alice/secret", endpoint=url, token=BOB)
    assert [v.repo_id for v in search(endpoint=url)] == []
    assert [v.repo_id for v in search(endpoint=url, token=ALICE)] == ["alice/secret"]
    assert pull("alice/secret@1.0.0", output=tmp_path / "s", endpoint=url, token=ALICE).version == "1.0.0"
    assert ALICE not in str(anonymous.value)


def test_push_without_a_valid_token_fails_without_showing_it(vector_dir: Path, url: str) -> None:
    with pytest.raises(HubError, match="token") as bad:
        push(vector_dir, "alice/denied", "1.0.0", endpoint=url, token="not-a-real-token-xyz", quiet=True)
    assert "not-a-real-token-xyz" not in str(bad.value)
    with pytest.raises(HubError, match="not allowed"):
        push(vector_dir, "alice/denied", "1.0.0", endpoint=url, token=BOB, quiet=True)


def test_push_to_a_hub_without_xet_falls_back_to_lfs(vector_dir: Path, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("hf_xet")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)  # as for a user who did not set HF_HUB_DISABLE_XET=1
    pushed = push(vector_dir, "alice/xet", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    pulled = pull("alice/xet@1.0.0", output=tmp_path / "x", endpoint=url)
    assert pulled.commit == pushed.commit and _without_card(_files(pulled.path)) == _without_card(_files(vector_dir))


def test_search_base_finds_exactly_the_matching_vectors(vector_dir: Path, url: str, tmp_path: Path) -> None:
    other = _variant(vector_dir, tmp_path / "other", base_model="acme/other-base")
    near = _variant(vector_dir, tmp_path / "near", base_model="tiny/instruct-v2")
    push(vector_dir, "alice/for-tiny", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    push(vector_dir, "bob/also-for-tiny", "0.2.0", endpoint=url, token=BOB, quiet=True)
    push(vector_dir, "bob/also-for-tiny", "0.3.0", endpoint=url, token=BOB, quiet=True)
    push(other, "alice/for-other", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    push(near, "alice/for-near", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    api = HfApi(endpoint=url, token=ALICE)
    api.create_repo("alice/not-a-vector")
    api.upload_file(path_or_fileobj=b"---\nbase_model: tiny/instruct\n---\n", path_in_repo="README.md", repo_id="alice/not-a-vector")

    found = {v.repo_id: v for v in search(base="tiny/instruct", endpoint=url)}
    assert set(found) == {"alice/for-tiny", "bob/also-for-tiny"}
    assert found["bob/also-for-tiny"].latest_version == "0.3.0" and found["alice/for-tiny"].base_model == "tiny/instruct"
    assert {v.repo_id for v in search(endpoint=url)} == {"alice/for-tiny", "bob/also-for-tiny", "alice/for-other", "alice/for-near"}
    assert [v.repo_id for v in search("other", endpoint=url)] == ["alice/for-other"]
    assert {v.repo_id for v in search(author="bob", endpoint=url)} == {"bob/also-for-tiny"}


_KILLED_PULL = textwrap.dedent(
    """
    import os, signal, sys
    from huggingface_hub import file_download
    from rvec_hub.hub.client import pull

    url = sys.argv[1]
    http_get = file_download.http_get

    class KillAfterFirstChunk:
        # SIGKILL: no cleanup runs, exactly like a crash or a pulled plug.
        def __init__(self, file):
            self.file = file

        def write(self, chunk):
            written = self.file.write(chunk)
            self.file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
            return written

        def __getattr__(self, name):
            return getattr(self.file, name)

    def killed_midway(url, temp_file, *args, expected_size=None, **kwargs):
        if expected_size is not None and expected_size > 1024 * 1024:
            temp_file = KillAfterFirstChunk(temp_file)
        return http_get(url, temp_file, *args, expected_size=expected_size, **kwargs)

    file_download.http_get = killed_midway
    pull("alice/big@1.0.0", endpoint=url)
    print("finished before it could be killed")
    """
)


def test_pull_killed_midway_leaves_no_complete_looking_snapshot_and_the_next_pull_finishes(vector_dir: Path, url: str, tmp_path: Path) -> None:
    big = _variant(vector_dir, tmp_path / "big", asset_bytes=64 * 1024 * 1024)
    push(big, "alice/big", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    storage = Path(os.environ["HF_HUB_CACHE"]) / "models--alice--big"
    killed = subprocess.run([sys.executable, "-c", _KILLED_PULL, url], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert list((storage / "blobs").glob("*.incomplete")), "the pull was not killed while downloading"
    assert not list(storage.glob("snapshots/*/assets/noise.bin")), "a partial file is linked into the snapshot"

    done = pull("alice/big@1.0.0", endpoint=url)

    assert _without_card(_files(done.path)) == _without_card(_files(big))


def test_pull_refuses_an_existing_output_unless_forced(vector_dir: Path, url: str, tmp_path: Path) -> None:
    push(vector_dir, "alice/twice", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    out = pull("alice/twice", output=tmp_path / "v", endpoint=url).path
    with pytest.raises(OutputExistsError, match="--force"):
        pull("alice/twice", output=out, endpoint=url)
    assert pull("alice/twice", output=out, force=True, endpoint=url).path == out


def test_hub_reference_opens_as_a_vector(vector_dir: Path, url: str) -> None:
    push(vector_dir, "alice/openable", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    vec = open_vector("alice/openable@latest", endpoint=url)
    local = open_vector(vector_dir)
    name = next(n for n, e in vec.entries.items() if e.encoding != "zero")
    assert vec.decode(name).equal(local.decode(name))


def _rvec(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from rvec_hub.cli._errors import run_cli
    from rvec_hub.cli.main import cli

    code = run_cli(cli, list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_push_pull_versions_search_are_wired(vector_dir: Path, url: str, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.setenv("HF_TOKEN", ALICE)
    code, out, err = _rvec(capsys, "push", str(vector_dir), "alice/cli", "--version", "1.0.0", "--endpoint", url, "-q")
    assert code == 0 and "pushed alice/cli@1.0.0" in out and ALICE not in out + err
    commit = out.split("commit ")[1].split()[0]

    monkeypatch.setenv("HF_ENDPOINT", url)  # the same as --endpoint
    code, out, _ = _rvec(capsys, "pull", "alice/cli@latest", "-o", str(tmp_path / "v"), "--json")
    assert code == 0 and json.loads(out) == {"path": str(tmp_path / "v"), "repo_id": "alice/cli", "version": "1.0.0", "commit": commit}
    code, out, _ = _rvec(capsys, "versions", "alice/cli")
    assert code == 0 and out.split()[0] == "1.0.0" and commit in out
    code, out, _ = _rvec(capsys, "search", "--base", "tiny/instruct", "--json")
    assert code == 0 and [v["repo_id"] for v in json.loads(out)] == ["alice/cli"]

    code, out, err = _rvec(capsys, "push", str(vector_dir), "alice/cli", "--version", "1.0.0", "-q")
    assert code == 1 and err.startswith("error: alice/cli already has version 1.0.0") and len(err.splitlines()) == 1
    code, _, err = _rvec(capsys, "pull", "alice/absent@1.0.0")
    assert code == 1 and err.startswith("error: repository alice/absent not found") and "Traceback" not in err
    for command in ("push", "pull", "versions", "search"):
        code, out, _ = _rvec(capsys, command, "--help")
        assert code == 0 and "Examples:" in out and "--endpoint" in out


def test_info_check_and_apply_accept_repo_at_version(vector_dir: Path, family: dict[str, Path], url: str, tmp_path: Path, capsys) -> None:
    from safetensors.torch import load_file

    push(vector_dir, "alice/usable", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    code, out, _ = _rvec(capsys, "info", "alice/usable@1.0.0", "--endpoint", url, "--json")
    assert code == 0 and '"name": "tiny-reasoning"' in out
    code, out, _ = _rvec(capsys, "check", "alice/usable@1.0.0", "--base", str(family["instruct"]), "--endpoint", url)
    assert code == 0 and out.startswith("compatible")
    code, _, err = _rvec(capsys, "apply", "alice/usable@1.0.0:0.5", "--base", str(family["instruct"]), "-o", str(tmp_path / "hub"), "--endpoint", url, "-q")
    assert code == 0, err
    assert _rvec(capsys, "apply", f"{vector_dir}:0.5", "--base", str(family["instruct"]), "-o", str(tmp_path / "local"), "-q")[0] == 0

    def weights(d: Path) -> dict:
        return {k: v for f in sorted(d.glob("*.safetensors")) for k, v in load_file(f).items()}

    from_hub, from_dir = weights(tmp_path / "hub"), weights(tmp_path / "local")
    assert from_hub.keys() == from_dir.keys() and all(from_hub[k].equal(from_dir[k]) for k in from_hub)
