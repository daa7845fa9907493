"""The real `huggingface_hub` client against the real rvec hub server on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest


import httpx2  # noqa: E402  (the HTTP library huggingface_hub itself uses)
from huggingface_hub import (  # noqa: E402
    CommitOperationAdd,
    CommitOperationCopy,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (  # noqa: E402
    BadRequestError,
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get  # noqa: E402
from huggingface_hub.utils import get_session, hf_raise_for_status  # noqa: E402

from rvec_hub.errors import UsageError  # noqa: E402
from rvec_hub.hub.server import load_tokens, running_server  # noqa: E402
from rvec_hub.hub.server.paths import path_problem  # noqa: E402

from hubtest_common import ALICE, BOB, TOKENS
CARD = "---\nlicense: apache-2.0\nlibrary_name: rvec\ntags:\n- rvec\n- reasoning\nbase_model: tiny/instruct\n---\n# A vector\n"




@pytest.fixture
def alice(url: str) -> HfApi:
    return HfApi(endpoint=url, token=ALICE)


@pytest.fixture
def anon(url: str) -> HfApi:
    return HfApi(endpoint=url, token=False)


def _vector_folder(path: Path, seed: int = 0) -> Path:
    """A vector-like folder: safetensors payload (LFS), manifest and card (regular), nested file."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    path.mkdir(parents=True)
    save_file({"layer.0.delta": torch.randn(64, 257, generator=gen)}, str(path / "delta.safetensors"))
    (path / "rvec.json").write_text(json.dumps({"format_version": 1, "seed": seed}))
    (path / "README.md").write_text(CARD)
    (path / "extra").mkdir()
    (path / "extra" / "notes.txt").write_text("notes\n" * 10)
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_upload_folder_then_download_is_bit_exact(alice: HfApi, url: str, tmp_path: Path) -> None:
    src = _vector_folder(tmp_path / "vec")
    alice.create_repo("alice/vec")
    alice.upload_folder(repo_id="alice/vec", folder_path=src, commit_message="add vector")

    info = alice.model_info("alice/vec", files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings}
    assert siblings["delta.safetensors"].lfs is not None  # went through the LFS batch + PUT + verify path
    assert siblings["rvec.json"].lfs is None
    assert info.card_data["library_name"] == "rvec" and "rvec" in info.tags
    assert info.private is False and info.last_modified is not None and len(info.sha) == 40

    snap = Path(snapshot_download("alice/vec", endpoint=url, token=ALICE, cache_dir=tmp_path / "cache"))
    got = _files(snap)
    assert {k: v for k, v in got.items() if k != ".gitattributes"} == _files(src)
    one = hf_hub_download("alice/vec", "delta.safetensors", endpoint=url, token=False, cache_dir=tmp_path / "c2")
    assert Path(one).read_bytes() == (src / "delta.safetensors").read_bytes()


def test_create_commit_adds_regular_and_lfs_files_and_deletes(alice: HfApi) -> None:
    alice.create_repo("alice/ops")
    payload = os.urandom(4096)
    alice.create_commit("alice/ops", commit_message="one", operations=[
        CommitOperationAdd("a/w.safetensors", payload),
        CommitOperationAdd("a/readme.txt", b"hello"),
        CommitOperationAdd("b/c.txt", b"bye"),
    ])
    alice.create_commit("alice/ops", commit_message="two", operations=[
        CommitOperationDelete("a/readme.txt"), CommitOperationDelete("b/", is_folder=True),
    ])
    assert sorted(alice.list_repo_files("alice/ops")) == [".gitattributes", "a/w.safetensors"]
    alice.create_commit("alice/ops", commit_message="copy", operations=[
        CommitOperationCopy(src_path_in_repo="a/w.safetensors", path_in_repo="copy.safetensors"),
        CommitOperationCopy(src_path_in_repo=".gitattributes", path_in_repo="attrs.txt"),
    ])
    info = {s.rfilename: s for s in alice.model_info("alice/ops", files_metadata=True).siblings}
    assert info["copy.safetensors"].lfs.sha256 == info["a/w.safetensors"].lfs.sha256
    assert info["attrs.txt"].blob_id == info[".gitattributes"].blob_id
    with pytest.raises(EntryNotFoundError):
        alice.create_commit("alice/ops", commit_message="x", operations=[CommitOperationDelete("nope.txt")])


def test_range_requests_serve_slices_and_resume_downloads(alice: HfApi, url: str, tmp_path: Path) -> None:
    alice.create_repo("alice/big")
    data = os.urandom(200_000)
    alice.upload_file(path_or_fileobj=data, path_in_repo="w.safetensors", repo_id="alice/big")
    file_url = f"{url}/alice/big/resolve/main/w.safetensors"

    part = httpx2.get(file_url, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    head = httpx2.head(file_url)
    assert int(head.headers["content-length"]) == len(data) and head.headers["x-linked-size"] == str(len(data))
    assert len(head.headers["x-repo-commit"]) == 40
    assert httpx2.get(file_url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416

    target = tmp_path / "partial.bin"
    target.write_bytes(data[:77_777])  # an interrupted download
    with open(target, "ab") as f:
        http_get(file_url, f, resume_size=77_777, expected_size=len(data))
    assert target.read_bytes() == data


def test_list_repo_tree_is_recursive_and_paginated(alice: HfApi, url: str) -> None:
    alice.create_repo("alice/tree")
    ops = [CommitOperationAdd(f"d{i % 2}/sub/f{i}.txt", f"{i}".encode()) for i in range(7)]
    alice.create_commit("alice/tree", operations=ops, commit_message="files")

    entries = list(alice.list_repo_tree("alice/tree", recursive=True))
    files = sorted(e.path for e in entries if hasattr(e, "blob_id"))
    folders = sorted(e.path for e in entries if hasattr(e, "tree_id"))
    assert files == sorted([".gitattributes"] + [o.path_in_repo for o in ops])
    assert folders == ["d0", "d0/sub", "d1", "d1/sub"]
    assert sorted(e.path for e in alice.list_repo_tree("alice/tree")) == [".gitattributes", "d0", "d1"]
    assert sorted(e.path for e in alice.list_repo_tree("alice/tree", path_in_repo="d1/sub")) == [
        "d1/sub/f1.txt", "d1/sub/f3.txt", "d1/sub/f5.txt"]
    expanded = list(alice.list_repo_tree("alice/tree", path_in_repo="d0", expand=True))
    assert all(e.last_commit is not None and e.last_commit.title == "files" for e in expanded)

    first = httpx2.get(f"{url}/api/models/alice/tree/tree/main", params={"recursive": "true"})
    assert len(first.json()) == 3 and 'rel="next"' in first.headers["link"]  # page_size=3 in this fixture
    with pytest.raises(EntryNotFoundError):
        list(alice.list_repo_tree("alice/tree", path_in_repo="missing"))


def test_tags_branches_and_revisions_by_tag_and_commit(alice: HfApi, url: str, tmp_path: Path) -> None:
    alice.create_repo("alice/rev")
    first = alice.upload_file(path_or_fileobj=b"v1", path_in_repo="x.txt", repo_id="alice/rev")
    alice.create_tag("alice/rev", tag="v1")
    alice.upload_file(path_or_fileobj=b"v2", path_in_repo="x.txt", repo_id="alice/rev")
    alice.create_branch("alice/rev", branch="dev", revision="v1")

    refs = alice.list_repo_refs("alice/rev")
    assert {b.name for b in refs.branches} == {"main", "dev"}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", first.oid)]

    def read(revision: str) -> bytes:
        return Path(hf_hub_download("alice/rev", "x.txt", revision=revision, endpoint=url, token=ALICE,
                                    cache_dir=tmp_path / "cache")).read_bytes()

    assert read("main") == b"v2" and read("v1") == b"v1" and read(first.oid) == b"v1" and read("dev") == b"v1"
    assert alice.model_info("alice/rev", revision="v1").sha == first.oid
    assert [c.title for c in alice.list_repo_commits("alice/rev")][:2] == ["Upload x.txt with huggingface_hub"] * 2
    alice.upload_file(path_or_fileobj=b"on dev", path_in_repo="y.txt", repo_id="alice/rev", revision="dev")
    assert read("dev") == b"v1" and "y.txt" in alice.list_repo_files("alice/rev", revision="dev")
    assert "y.txt" not in alice.list_repo_files("alice/rev")
    alice.create_tag("alice/rev", tag="reviewed", revision="dev")
    alice.delete_tag("alice/rev", tag="reviewed")
    with pytest.raises(RevisionNotFoundError):
        alice.model_info("alice/rev", revision="reviewed")


def test_stale_parent_commit_is_refused(alice: HfApi) -> None:
    alice.create_repo("alice/race")
    base = alice.model_info("alice/race").sha
    alice.upload_file(path_or_fileobj=b"one", path_in_repo="a.txt", repo_id="alice/race", parent_commit=base)
    with pytest.raises(HfHubHTTPError) as err:
        alice.upload_file(path_or_fileobj=b"two", path_in_repo="b.txt", repo_id="alice/race", parent_commit=base)
    assert err.value.response.status_code == 412
    assert "b.txt" not in alice.list_repo_files("alice/race")


def test_concurrent_commits_lose_no_update(alice: HfApi) -> None:
    from concurrent.futures import ThreadPoolExecutor

    alice.create_repo("alice/busy")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: alice.upload_file(path_or_fileobj=f"{i}".encode(), path_in_repo=f"f{i}.txt",
                                                  repo_id="alice/busy"), range(16)))
    assert sorted(alice.list_repo_files("alice/busy")) == sorted([".gitattributes"] + [f"f{i}.txt" for i in range(16)])
    assert len(alice.list_repo_commits("alice/busy")) == 17


@pytest.mark.parametrize("bad_path", ["../escape.txt", "/etc/passwd", "a/../../x", "a\\b.txt", "a//b.txt", "./a"])
def test_commit_with_unsafe_path_is_refused(alice: HfApi, url: str, root: Path, bad_path: str) -> None:
    alice.create_repo("alice/safe")
    before = alice.model_info("alice/safe").sha
    lines = [{"key": "header", "value": {"summary": "evil", "description": ""}},
             {"key": "file", "value": {"path": bad_path, "content": base64.b64encode(b"x").decode(),
                                       "encoding": "base64"}}]
    # huggingface_hub validates paths itself, so send the NDJSON it would send, with its own session.
    response = get_session().post(
        f"{url}/api/models/alice/safe/commit/main", content=b"".join(json.dumps(x).encode() + b"\n" for x in lines),
        headers={"Authorization": f"Bearer {ALICE}", "Content-Type": "application/x-ndjson"},
    )
    with pytest.raises(BadRequestError):
        hf_raise_for_status(response)
    assert alice.model_info("alice/safe").sha == before
    assert not (root.parent / "escape.txt").exists() and not (root / "escape.txt").exists()


def test_private_repo_is_invisible_without_its_owner_token(alice: HfApi, anon: HfApi, url: str) -> None:
    alice.create_repo("alice/secret", private=True)
    alice.upload_file(path_or_fileobj=b"s", path_in_repo="s.txt", repo_id="alice/secret")
    bob = HfApi(endpoint=url, token=BOB)
    for api in (anon, bob):
        with pytest.raises(RepositoryNotFoundError):
            api.model_info("alice/secret")
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("alice/secret", "s.txt", endpoint=url, token=api.token)
        assert "alice/secret" not in [m.id for m in api.list_models()]
    assert alice.model_info("alice/secret").private is True
    assert "alice/secret" in [m.id for m in alice.list_models(author="alice")]


def test_writes_need_a_valid_token_for_the_namespace(alice: HfApi, anon: HfApi, url: str) -> None:
    alice.create_repo("alice/pub")
    with pytest.raises(HfHubHTTPError) as err:
        anon.create_repo("alice/other")
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as err:
        anon.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/pub")
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=url, token=BOB).upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/pub")
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=url, token="hf_not_a_real_token").create_repo("alice/forged")
    assert err.value.response.status_code == 401
    assert alice.list_repo_files("alice/pub") == [".gitattributes"]
    assert alice.whoami()["name"] == "alice"


def test_list_models_filters_by_tag_author_and_search(alice: HfApi, anon: HfApi, url: str) -> None:
    bob = HfApi(endpoint=url, token=BOB)
    for api, repo, card in ((alice, "alice/rvec-math", CARD), (alice, "alice/plain", "# no metadata\n"),
                            (bob, "bob/rvec-code", CARD), (bob, "bob/rvec-notag", "---\nlicense: mit\n---\n")):
        api.create_repo(repo)
        api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo)

    def ids(**kwargs: object) -> list[str]:
        return sorted(m.id for m in anon.list_models(**kwargs))

    assert ids(filter="rvec") == ["alice/rvec-math", "bob/rvec-code"]  # 4 repos, pages of 3: paginated
    assert ids(author="alice") == ["alice/plain", "alice/rvec-math"]
    assert ids(search="rvec-") == ["alice/rvec-math", "bob/rvec-code", "bob/rvec-notag"]
    assert ids(filter=["rvec", "license:apache-2.0"], author="bob") == ["bob/rvec-code"]
    assert len(list(anon.list_models(limit=1))) == 1
    [full] = list(anon.list_models(search="rvec-math", cardData=True, full=True))
    assert full.card_data["base_model"] == "tiny/instruct" and {s.rfilename for s in full.siblings} >= {"README.md"}


def test_restart_on_same_root_serves_same_data(root: Path, tmp_path: Path) -> None:
    src = _vector_folder(tmp_path / "vec", seed=3)
    with running_server(root, TOKENS) as first:
        api = HfApi(endpoint=first, token=ALICE)
        api.create_repo("alice/persist")
        commit = api.upload_folder(repo_id="alice/persist", folder_path=src)
        api.create_tag("alice/persist", tag="v1")
    with running_server(root, TOKENS) as second:
        api = HfApi(endpoint=second, token=ALICE)
        assert api.model_info("alice/persist").sha == commit.oid
        assert [t.name for t in api.list_repo_refs("alice/persist").tags] == ["v1"]
        snap = snapshot_download("alice/persist", revision="v1", endpoint=second, token=ALICE,
                                 cache_dir=tmp_path / "cache")
        assert _files(src).items() <= _files(Path(snap)).items()


def test_client_errors_map_to_hub_exceptions(alice: HfApi, url: str, tmp_path: Path) -> None:
    alice.create_repo("alice/errs")
    with pytest.raises(RepositoryNotFoundError):
        alice.model_info("alice/missing")
    with pytest.raises(RevisionNotFoundError):
        alice.model_info("alice/errs", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("alice/errs", ".gitattributes", revision="nope", endpoint=url, cache_dir=tmp_path / "c")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/errs", "missing.txt", endpoint=url, cache_dir=tmp_path / "c")
    assert alice.file_exists("alice/errs", ".gitattributes") and not alice.file_exists("alice/errs", "nope")
    with pytest.raises(HfHubHTTPError) as err:
        alice.create_repo("alice/errs")
    assert err.value.response.status_code == 409
    alice.create_repo("alice/errs", exist_ok=True)
    alice.delete_repo("alice/errs")
    assert not alice.repo_exists("alice/errs")


def test_load_tokens_reads_file_and_environment_without_echoing_tokens(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens.txt"
    a, b, c = "tok-a-0123456789", "tok-b-0123456789", "tok-c-0123456789"
    token_file.write_text(f"# users\nalice {a}\n\nbob {b}\n")
    assert load_tokens(token_file, {"RVEC_HUB_TOKEN": c}) == {"alice": a, "bob": b, "admin": c}
    assert load_tokens(None, {"RVEC_HUB_TOKEN": c, "RVEC_HUB_USER": "carol"}) == {"carol": c}
    token_file.write_text("alice secret-value extra\n")
    with pytest.raises(UsageError) as err:
        load_tokens(token_file, {})
    assert "secret-value" not in str(err.value) + " ".join(err.value.problems)


def test_path_rules_reject_escapes() -> None:
    for bad in ["", "..", "a/..", "/abs", "a\\b", "a//b", "C:/x", "a/./b", ".git/config", "a\x00b"]:
        assert path_problem(bad) is not None, bad
    for good in ["README.md", "a/b/c.safetensors", ".gitattributes", "dir.with.dots/x..y"]:
        assert path_problem(good) is None, good


def test_cli_hub_serve_help_shows_an_example() -> None:
    from click.testing import CliRunner

    from rvec_hub.cli.hub_server_cmd import hub_group

    result = CliRunner().invoke(hub_group, ["serve", "--help"])
    assert result.exit_code == 0 and "--token-file" in result.output and "rvec hub serve --root" in result.output
