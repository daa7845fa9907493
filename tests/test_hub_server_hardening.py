"""`rvec hub serve` against hostile and careless clients: real processes, real HTTP on 127.0.0.1, real files."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

from hubproc import hub_process, write_token_file
from hubtest_common import ALICE, BOB, TOKENS
from rvec_hub.hub.server import running_server
from rvec_hub.hub.server.storage import CRASH_AT_ENV
from rvec_hub.hub.server.throttle import AuthThrottle

MB = 1 << 20


def _request(url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
             source: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request (the path is sent exactly as given); returns status, headers, body."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30,
                                      source_address=(source, 0) if source else None)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for key, value in {**({"Content-Length": str(len(body))} if body is not None else {}), **(headers or {})}.items():
            conn.putheader(key, value)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _stream(total: int, chunk: int = MB):
    sent = 0
    block = b"\0" * chunk
    while sent < total:
        yield block
        sent += chunk


# -- request bodies ------------------------------------------------------------------------------------


def test_huge_anonymous_bodies_are_refused_while_streaming_without_growing_server_memory(tmp_path: Path) -> None:
    body = 200 * MB
    with hub_process(tmp_path / "hub", TOKENS) as server:
        HfApi(endpoint=server.url, token=ALICE).create_repo("alice/target")
        before = server.memory_kib()
        answers = {}
        for method, path in [("POST", "/api/repos/create"), ("POST", "/api/models/alice/target/paths-info/main"),
                             ("POST", "/api/models/alice/target/commit/main"), ("POST", "/api/validate-yaml"),
                             ("PUT", "/lfs-upload/alice/target/" + "0" * 64 + "?size=1&expires=1&sig=x")]:
            # chunked: no Content-Length to refuse up front, so the limit must hold while the bytes arrive
            response = httpx2.request(method, server.url + path, content=_stream(body), timeout=120,
                                      headers={"Content-Type": "application/json"})
            answers[path] = response.status_code
            assert response.status_code in (401, 403, 404, 413), (path, response.status_code, response.text)
            assert response.headers.get("x-error-message"), path
        parts = urlsplit(server.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.putrequest("POST", "/api/models/alice/target/paths-info/main")
        conn.putheader("Content-Length", str(body))  # announced, never sent: refused before reading
        conn.endheaders()
        declared = conn.getresponse().status
        conn.close()
        after = server.memory_kib()
        assert server.process.poll() is None
    grown_mib = (after["VmHWM"] - before["VmRSS"]) / 1024
    print(f"server RSS before {before['VmRSS'] / 1024:.1f} MiB, peak after five 200 MB bodies "
          f"{after['VmHWM'] / 1024:.1f} MiB (+{grown_mib:.1f} MiB); answers {answers}")
    assert answers["/api/repos/create"] == 401 and answers["/api/validate-yaml"] == 413
    assert declared == 413
    assert grown_mib < 100, f"server memory grew by {grown_mib:.0f} MiB"


def test_write_endpoints_check_the_token_before_reading_the_body(url: str) -> None:
    HfApi(endpoint=url, token=ALICE).create_repo("alice/auth-first")
    # Content-Length announces 1 GB that never comes: only an answer given before reading can arrive.
    for path in ("/api/models/alice/auth-first/commit/main", "/api/repos/create",
                 "/api/models/alice/auth-first/tag/main", "/alice/auth-first.git/info/lfs/objects/batch"):
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.putrequest("POST", path)
        conn.putheader("Content-Length", str(1 << 30))
        conn.putheader("Authorization", "Bearer wrong-token-0123456789")
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 401, path
        conn.close()


def test_configured_limits_refuse_large_commits_and_lfs_objects(tmp_path: Path) -> None:
    from rvec_hub.hub.server.guard import BodyLimits

    limits = BodyLimits(max_inline_bytes=64 * 1024, max_lfs_bytes=256 * 1024)
    with running_server(tmp_path / "hub", TOKENS, limits=limits) as url:
        api = HfApi(endpoint=url, token=ALICE)
        api.create_repo("alice/small")
        api.upload_file(path_or_fileobj=b"x" * 1000, path_in_repo="small.txt", repo_id="alice/small")
        with pytest.raises(HfHubHTTPError) as inline:
            api.upload_file(path_or_fileobj=b"y" * (100 * 1024), path_in_repo="big.txt", repo_id="alice/small")
        assert inline.value.response.status_code == 413 and "--max-inline-bytes" in str(inline.value)
        with pytest.raises(ValueError, match="limit of 262144 bytes"):  # the client's words for a batch error
            api.upload_file(path_or_fileobj=os.urandom(300 * 1024), path_in_repo="w.safetensors", repo_id="alice/small")
        api.upload_file(path_or_fileobj=os.urandom(200 * 1024), path_in_repo="w.safetensors", repo_id="alice/small")
        assert sorted(api.list_repo_files("alice/small")) == [".gitattributes", "small.txt", "w.safetensors"]


def test_cli_limits_take_human_sizes(tmp_path: Path) -> None:
    with hub_process(tmp_path / "hub", TOKENS, "--max-inline-bytes", "1K", "--max-lfs-bytes", "2KiB") as server:
        api = HfApi(endpoint=server.url, token=ALICE)
        api.create_repo("alice/tiny")
        with pytest.raises(HfHubHTTPError) as err:
            api.upload_file(path_or_fileobj=b"z" * 4000, path_in_repo="z.txt", repo_id="alice/tiny")
        assert err.value.response.status_code == 413 and "limit of 1024 bytes" in str(err.value)


# -- malformed requests --------------------------------------------------------------------------------

MALFORMED = [
    ("POST", "/api/repos/create", b"{not json"),
    ("POST", "/api/repos/create", b'{"name": 5}'),
    ("POST", "/api/repos/create", b'["name"]'),
    ("POST", "/api/repos/create", b"[" * 100_000 + b"]" * 100_000),
    ("POST", "/api/repos/create", b'{"name": "x", "private": "maybe"}'),
    ("DELETE", "/api/repos/delete", b'{"name": null}'),
    ("PUT", "/api/models/alice/m/settings", b'{"private": []}'),
    ("POST", "/api/models/alice/m/tag/main", b'{"tag": {"a": 1}}'),
    ("POST", "/api/models/alice/m/branch/dev", b'{"startingPoint": 7}'),
    ("POST", "/api/models/alice/m/preupload/main", b'{"files": "all"}'),
    ("POST", "/api/models/alice/m/preupload/main", b'{"files": [1, null, {"path": 3}]}'),
    ("POST", "/api/models/alice/m/preupload/main", b'{"files": [{"path": "a", "size": "big"}]}'),
    ("POST", "/api/models/alice/m/preupload/main", b'{"files": [{"path": "a", "sample": "!!"}]}'),
    ("POST", "/api/models/alice/m/preupload/main", b"\xff\xfe"),
    ("POST", "/api/models/alice/m/commit/main", b'{"key": "header", "value": []}\n'),
    ("POST", "/api/models/alice/m/commit/main", b'{"key": "header", "value": {"summary": "s", "parentCommit": 5}}\n'),
    ("POST", "/api/models/alice/m/commit/main", b'{"key": "file", "value": {"path": "a", "content": 5}}\n'),
    ("POST", "/api/models/alice/m/commit/main", b'{"key": "lfsFile", "value": {"path": "a", "oid": []}}\n'),
    ("POST", "/api/models/alice/m/commit/main", b"[" * 50_000 + b"\n"),
    ("POST", "/api/models/alice/m/paths-info/main", b'{"paths": 5}'),
    ("POST", "/api/models/alice/m/paths-info/main", b'{"paths": [1, 2]}'),
    ("POST", "/api/models/alice/m/paths-info/main", b"[1]"),
    ("POST", "/api/models/alice/m/paths-info/main", b"{bad"),
    ("POST", "/api/validate-yaml", b'{"content": 5}'),
    ("POST", "/api/validate-yaml", json.dumps({"content": "---\na: &a [x, x, x, x, x, x, x, x, x]\n"
                                                          + "".join(f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                                                                    for p, c in zip("abcdefgh", "bcdefghi"))
                                                          + "---\n"}).encode()),
    ("POST", "/alice/m.git/info/lfs/objects/batch", b'{"operation": "upload", "objects": [{"oid": 1, "size": "x"}]}'),
    ("POST", "/lfs-verify/alice/m", b'{"oid": null}'),
    ("GET", "/api/models/alice/m/tree/main/%FF%FE", None),
    ("GET", "/alice/m/resolve/%C0%AF/x", None),
    ("GET", "/alice/m/resolve/main/%2e%2e/%2e%2e/etc/passwd", None),
    ("GET", "/alice/m/resolve/main/a%00b", None),
    ("GET", "/api/models/%2e%2e/m", None),
    ("GET", "/api/models/al%ZZice/m", None),
    ("GET", "/api/models/alice/m/revision/%FF", None),
    ("GET", "/api/models/alice/m/commits/main?cursor=%FF", None),
    ("GET", "/api/models?limit=%C2%B2&cursor=-5", None),
    ("GET", "/api/models/alice/m/tree/main?cursor=99999999999999999999999999", None),
    ("PUT", "/lfs-upload/alice/m/" + "0" * 64 + "?size=-1&expires=x&sig=%FF", b"abc"),
]


def test_malformed_requests_never_get_a_server_error_and_refusals_say_why(url: str) -> None:
    HfApi(endpoint=url, token=ALICE).create_repo("alice/m")
    for method, path, body in MALFORMED:
        headers = {"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"}
        status, response_headers, payload = _request(url, method, path, body, headers)
        if body is not None:  # a malformed body is refused; a malformed query may be read leniently
            assert 400 <= status < 500, (method, path, status, payload[:300])
        assert status < 500, (method, path, status, payload[:300])
        if status >= 400:
            assert response_headers.get("x-error-message") or json.loads(payload).get("errors"), (method, path)
    assert HfApi(endpoint=url, token=ALICE).model_info("alice/m").id == "alice/m"  # still serving


# -- authentication --------------------------------------------------------------------------------------


def test_short_tokens_are_refused_at_start_up_in_one_line_without_echoing_them(tmp_path: Path) -> None:
    token_file = write_token_file(tmp_path / "tokens.txt", {"alice": "short-secret"})
    for args, env in ([["--token-file", str(token_file)], {}], [[], {"RVEC_HUB_TOKEN": "tiny-secret-9"}]):
        result = subprocess.run([sys.executable, "-m", "rvec_hub.cli", "hub", "serve", "--root", str(tmp_path / "r"),
                                 "--port", "1", *args], capture_output=True, text=True, timeout=120,
                                env={**os.environ, **env})
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "at least 16" in lines[0], result.stderr
        assert "short-secret" not in result.stderr + result.stdout and "tiny-secret-9" not in result.stderr


def test_failed_logins_lock_out_the_client_and_the_targeted_user_for_a_while(tmp_path: Path) -> None:
    now = [1000.0]  # the test moves time: a loaded machine must not unlock anything early
    throttle = AuthThrottle(free_failures=2, base_delay_s=2, max_delay_s=4, clock=lambda: now[0])
    with running_server(tmp_path / "hub", TOKENS, throttle=throttle) as url:
        HfApi(endpoint=url, token=ALICE).create_repo("alice/locked")
        bad = {"Authorization": "Bearer not-the-right-token-00"}
        good = {"Authorization": f"Bearer {ALICE}"}
        target = "/api/models/alice/locked"
        # Client 127.0.0.2: two free failures, the third locks it.
        statuses = [_request(url, "GET", target, headers=bad, source="127.0.0.2")[0] for _ in range(3)]
        assert statuses == [401, 401, 401]
        status, headers, _ = _request(url, "GET", "/api/whoami-v2", headers=good, source="127.0.0.2")
        assert status == 429 and int(headers["retry-after"]) >= 1  # even a right token waits: guessing gains nothing
        assert _request(url, "GET", "/api/whoami-v2", headers=good, source="127.0.0.3")[0] == 200  # others unaffected
        # The user alice has now seen 3 failures (its lock came with them): another address is refused on her repos.
        assert _request(url, "GET", target, headers=good, source="127.0.0.4")[0] == 429
        assert _request(url, "GET", "/api/whoami-v2", headers=good, source="127.0.0.4")[0] == 200
        assert _request(url, "GET", target, source="127.0.0.4")[0] == 200  # anonymous reads carry no token to check
        now[0] += 2.1
        assert _request(url, "GET", target, headers=good, source="127.0.0.2")[0] == 200


def test_the_failure_table_stays_bounded_and_forgives_quiet_keys() -> None:
    now = [0.0]
    throttle = AuthThrottle(free_failures=1, base_delay_s=1, max_delay_s=8, max_keys=100, clock=lambda: now[0])
    for i in range(10_000):
        throttle.failed([f"client:10.0.{i // 256}.{i % 256}"])
    assert len(throttle) == 100
    throttle.failed(["client:x"])
    throttle.failed(["client:x"])
    assert throttle.retry_after(["client:x"]) == 1
    throttle.failed(["client:x"])
    assert throttle.retry_after(["client:x"]) == 2  # doubles
    for _ in range(20):
        throttle.failed(["client:x"])
    assert throttle.retry_after(["client:x"]) == 8  # capped
    now[0] += 17
    assert throttle.retry_after(["client:x"]) == 0
    throttle.failed(["client:x"])
    assert throttle.retry_after(["client:x"]) == 0  # forgiven: a free failure again


# -- private repos ---------------------------------------------------------------------------------------


def test_a_private_repo_answers_404_on_every_endpoint_to_those_who_cannot_see_it(url: str) -> None:
    alice = HfApi(endpoint=url, token=ALICE)
    alice.create_repo("alice/hidden", private=True)
    commit = alice.upload_file(path_or_fileobj=b"secret", path_in_repo="s.txt", repo_id="alice/hidden").oid
    oid = "0" * 64
    endpoints = [
        ("GET", "/api/models/alice/hidden", None), ("GET", "/api/models/alice/hidden/revision/main", None),
        ("GET", "/api/models/alice/hidden/refs", None), ("GET", "/api/models/alice/hidden/commits/main", None),
        ("GET", "/api/models/alice/hidden/tree/main", None), ("GET", f"/alice/hidden/resolve/{commit}/s.txt", None),
        ("HEAD", "/alice/hidden/resolve/main/s.txt", None),
        ("POST", "/api/models/alice/hidden/paths-info/main", b'{"paths": ["s.txt"]}'),
        ("PUT", "/api/models/alice/hidden/settings", b'{"private": false}'),
        ("POST", "/api/models/alice/hidden/preupload/main", b'{"files": [{"path": "a.txt", "size": 1}]}'),
        ("POST", "/api/models/alice/hidden/commit/main", b'{"key": "header", "value": {"summary": "x"}}\n'),
        ("POST", "/api/models/alice/hidden/tag/main", b'{"tag": "t"}'),
        ("DELETE", "/api/models/alice/hidden/tag/t", None),
        ("POST", "/api/models/alice/hidden/branch/b", b"{}"),
        ("DELETE", "/api/models/alice/hidden/branch/b", None),
        ("POST", "/alice/hidden.git/info/lfs/objects/batch", b'{"operation": "upload", "objects": []}'),
        ("POST", "/lfs-verify/alice/hidden", json.dumps({"oid": oid, "size": 1}).encode()),
        ("PUT", f"/lfs-upload/alice/hidden/{oid}?size=1&expires=9999999999&sig=forged", b"x"),
    ]
    for who, headers in [("anonymous", {}), ("bob", {"Authorization": f"Bearer {BOB}"})]:
        for method, path, body in endpoints:
            status, response_headers, _ = _request(url, method, path, body,
                                                   {**headers, "Content-Type": "application/json"})
            assert status == 404, (who, method, path, status)
            if method != "PUT" or "lfs-upload" not in path:
                assert response_headers.get("x-error-code") == "RepoNotFound", (who, method, path)
    status, _, _ = _request(url, "DELETE", "/api/repos/delete", b'{"name": "hidden", "organization": "alice"}',
                            {"Authorization": f"Bearer {BOB}", "Content-Type": "application/json"})
    assert status == 404
    assert alice.model_info("alice/hidden").private  # untouched


# -- crash and race safety -------------------------------------------------------------------------------


def test_deleting_a_repo_during_an_upload_keeps_its_name_usable(url: str) -> None:
    alice = HfApi(endpoint=url, token=ALICE)
    alice.create_repo("alice/racy")
    data = os.urandom(3 * MB)
    oid = hashlib.sha256(data).hexdigest()
    batch = httpx2.post(f"{url}/alice/racy.git/info/lfs/objects/batch", headers={"Authorization": f"Bearer {ALICE}"},
                        json={"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}).json()
    href = batch["objects"][0]["actions"]["upload"]["href"]
    half_sent, deleted, result = threading.Event(), threading.Event(), {}

    def body():
        yield data[: len(data) // 2]
        half_sent.set()
        deleted.wait(30)
        yield data[len(data) // 2:]

    uploader = threading.Thread(target=lambda: result.update(response=httpx2.put(href, content=body(), timeout=60)))
    uploader.start()
    assert half_sent.wait(30)
    time.sleep(0.3)
    alice.delete_repo("alice/racy")
    deleted.set()
    uploader.join(60)
    assert result["response"].status_code == 404, result["response"].text

    alice.create_repo("alice/racy")  # the name is free again
    alice.upload_file(path_or_fileobj=data, path_in_repo="w.safetensors", repo_id="alice/racy")
    assert [m.id for m in alice.list_models(author="alice")].count("alice/racy") == 1
    assert sorted(alice.list_repo_files("alice/racy")) == [".gitattributes", "w.safetensors"]


def test_a_repo_name_left_occupied_by_a_deleted_repos_remains_can_be_created(root: Path, url: str) -> None:
    # What an upload finishing after its repo was deleted used to leave: a directory without repo.json.
    remains = root / "repos" / "alice" / "ghost" / "objects" / "blobs" / "ab"
    remains.mkdir(parents=True)
    (remains / ("ab" * 32)).write_bytes(b"orphan")
    alice = HfApi(endpoint=url, token=ALICE)
    assert not alice.repo_exists("alice/ghost")
    alice.create_repo("alice/ghost")
    assert alice.list_repo_files("alice/ghost") == [".gitattributes"]


@pytest.mark.parametrize("point", ["create_repo:staged", "create_repo:done"])
def test_a_crash_during_repo_creation_never_lists_the_repo_twice(tmp_path: Path, point: str) -> None:
    root = tmp_path / "hub"
    with hub_process(root, TOKENS, env={CRASH_AT_ENV: point}) as server:
        with pytest.raises(Exception):
            HfApi(endpoint=server.url, token=ALICE).create_repo("alice/crashy")
        server.process.wait(timeout=30)
        assert server.process.returncode == -signal.SIGKILL
    with hub_process(root, TOKENS) as server:
        api = HfApi(endpoint=server.url, token=ALICE)
        api.create_repo("alice/crashy", exist_ok=True)
        api.create_repo("alice/other")
        ids = [m.id for m in api.list_models()]
        assert ids.count("alice/crashy") == 1 and sorted(ids) == ["alice/crashy", "alice/other"]
        assert api.list_repo_files("alice/crashy") == [".gitattributes"]


# -- stored blobs ----------------------------------------------------------------------------------------


def _flip_a_byte(path: Path, keep_times: bool) -> None:
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    if keep_times:  # what a careful attacker (or silent disk rot) leaves: same size, same mtime
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("keep_times", [False, True])
def test_a_corrupted_blob_is_quarantined_and_never_served_under_its_old_etag(
    url: str, root: Path, tmp_path: Path, keep_times: bool
) -> None:
    alice = HfApi(endpoint=url, token=ALICE)
    alice.create_repo("alice/rot")
    weights, notes = os.urandom(64 * 1024), b"notes\n" * 100
    alice.upload_file(path_or_fileobj=weights, path_in_repo="w.safetensors", repo_id="alice/rot")
    alice.upload_file(path_or_fileobj=notes, path_in_repo="notes.txt", repo_id="alice/rot")
    for name, data in (("w.safetensors", weights), ("notes.txt", notes)):
        first = httpx2.get(f"{url}/alice/rot/resolve/main/{name}")
        assert first.status_code == 200 and first.content == data
        blob = root / "repos" / "alice" / "rot" / "objects" / "blobs" / hashlib.sha256(data).hexdigest()[:2] \
            / hashlib.sha256(data).hexdigest()
        _flip_a_byte(blob, keep_times)
        for method in ("HEAD", "GET"):
            again = httpx2.request(method, f"{url}/alice/rot/resolve/main/{name}")
            assert again.status_code == 410 and "etag" not in again.headers, (name, method)
            assert "quarantined" in again.headers["x-error-message"]
        assert not blob.exists()
        assert any(p.name.endswith(blob.name) for p in (root / "quarantine").iterdir())

    # Pushing the same files again restores them: the server no longer claims to have them.
    alice.upload_file(path_or_fileobj=weights, path_in_repo="w.safetensors", repo_id="alice/rot")
    alice.upload_file(path_or_fileobj=notes, path_in_repo="notes.txt", repo_id="alice/rot")
    for name, data in (("w.safetensors", weights), ("notes.txt", notes)):
        path = hf_hub_download("alice/rot", name, endpoint=url, cache_dir=tmp_path / "cache")
        assert Path(path).read_bytes() == data


def test_hub_fsck_quarantines_corruption_and_reports_lost_files(tmp_path: Path) -> None:
    root = tmp_path / "hub"
    data = os.urandom(32 * 1024)
    with hub_process(root, TOKENS) as server:
        api = HfApi(endpoint=server.url, token=ALICE)
        api.create_repo("alice/checked")
        api.upload_file(path_or_fileobj=data, path_in_repo="w.safetensors", repo_id="alice/checked")
    fsck = [sys.executable, "-m", "rvec_hub.cli", "hub", "fsck", "--root", str(root)]
    clean = subprocess.run([*fsck, "--json"], capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0 and json.loads(clean.stdout)["clean"], clean.stdout + clean.stderr
    sha = hashlib.sha256(data).hexdigest()
    blob = root / "repos" / "alice" / "checked" / "objects" / "blobs" / sha[:2] / sha
    _flip_a_byte(blob, keep_times=True)
    (root / "repos" / "alice" / ".checked.creating-deadbeef").mkdir()  # a crash's leftover
    (root / "repos" / "alice" / "ghost" / "tmp").mkdir(parents=True)  # remains of a repo deleted mid-upload

    found = subprocess.run(fsck, capture_output=True, text=True, timeout=120)
    assert found.returncode == 1, found.stdout + found.stderr
    assert f"quarantined: alice/checked: blob {sha}" in found.stdout
    assert "lost the content of w.safetensors" in found.stdout
    assert not blob.exists() and not (root / "repos" / "alice" / ".checked.creating-deadbeef").exists()
    assert not (root / "repos" / "alice" / "ghost").exists()

    with hub_process(root, TOKENS) as server:  # pushing the file again repairs the repo
        HfApi(endpoint=server.url, token=ALICE).upload_file(path_or_fileobj=data, path_in_repo="w.safetensors",
                                                              repo_id="alice/checked")
    repaired = subprocess.run([*fsck, "--json"], capture_output=True, text=True, timeout=120)
    assert repaired.returncode == 0 and json.loads(repaired.stdout)["clean"], repaired.stdout


# -- refs ------------------------------------------------------------------------------------------------


def test_version_tags_cannot_be_deleted_or_moved_unless_the_server_allows_it(tmp_path: Path) -> None:
    with running_server(tmp_path / "hub", TOKENS) as url:
        alice = HfApi(endpoint=url, token=ALICE)
        alice.create_repo("alice/released")
        first = alice.upload_file(path_or_fileobj=b"1", path_in_repo="x.txt", repo_id="alice/released").oid
        alice.create_tag("alice/released", tag="v1.0.0")
        alice.upload_file(path_or_fileobj=b"2", path_in_repo="x.txt", repo_id="alice/released")
        for attempt in (lambda: alice.delete_tag("alice/released", tag="v1.0.0"),
                        lambda: alice.delete_repo("alice/released")):
            with pytest.raises(HfHubHTTPError) as err:
                attempt()
            assert err.value.response.status_code == 403 and "--allow-version-tag-rewrite" in str(err.value)
        with pytest.raises(HfHubHTTPError) as moved:
            alice.create_tag("alice/released", tag="v1.0.0", revision="main")
        assert moved.value.response.status_code == 409
        assert alice.model_info("alice/released", revision="v1.0.0").sha == first
        alice.create_tag("alice/released", tag="nightly")
        alice.delete_tag("alice/released", tag="nightly")  # only version tags are frozen
    with hub_process(tmp_path / "hub", TOKENS, "--allow-version-tag-rewrite") as server:
        alice = HfApi(endpoint=server.url, token=ALICE)
        alice.delete_tag("alice/released", tag="v1.0.0")
        alice.delete_repo("alice/released")


def test_rvec_pull_takes_a_short_commit_id(url: str, vector_dir: Path, tmp_path: Path) -> None:
    from rvec_hub.hub.client import pull, push

    pushed = push(vector_dir, "alice/pinned", "1.0.0", endpoint=url, token=ALICE, quiet=True)
    result = pull(f"alice/pinned@{pushed.commit[:7]}", output=tmp_path / "out", endpoint=url, token=ALICE, quiet=True)
    assert result.commit == pushed.commit and (tmp_path / "out" / "rvec.json").is_file()


def test_short_commit_ids_resolve_when_unambiguous(url: str, root: Path, tmp_path: Path) -> None:
    alice = HfApi(endpoint=url, token=ALICE)
    alice.create_repo("alice/short")
    first = alice.upload_file(path_or_fileobj=b"one", path_in_repo="x.txt", repo_id="alice/short").oid
    alice.upload_file(path_or_fileobj=b"two", path_in_repo="x.txt", repo_id="alice/short")
    assert alice.model_info("alice/short", revision=first[:7]).sha == first
    path = hf_hub_download("alice/short", "x.txt", revision=first[:9], endpoint=url, cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == b"one"
    assert httpx2.get(f"{url}/api/models/alice/short/revision/{first[:6]}").status_code == 404  # too short

    # A second commit file sharing the first 7 digits makes that prefix ambiguous.
    commits = root / "repos" / "alice" / "short" / "objects" / "commits" / first[:2]
    twin = first[:7] + ("0" if first[7] != "0" else "1") + first[8:]
    (commits / f"{twin}.json").write_bytes((commits / f"{first}.json").read_bytes())
    ambiguous = httpx2.get(f"{url}/api/models/alice/short/revision/{first[:7]}")
    assert ambiguous.status_code == 400 and "ambiguous" in ambiguous.headers["x-error-message"]
    assert alice.model_info("alice/short", revision=first[:8]).sha == first
