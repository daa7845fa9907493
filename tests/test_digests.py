"""A payload rvec wrote or verified is not hashed again while unchanged; any change to it is still caught."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from rvec_hub import IntegrityError, Vector, digests, extract
from rvec_hub.check import verify_vector
from rvec_hub.manifest import load_manifest
from rvec_hub.vector import sha256_file


@pytest.fixture
def written(family: dict[str, Path], tmp_path: Path) -> Path:
    """A vector extracted in this test's environment, so its digests are recorded there."""
    out = tmp_path / "vec"
    extract(family["sft"], family["grpo"], out, quiet=True)
    return out


def _payload(vector: Path) -> Path:
    [entry] = [f for f in load_manifest(vector).files if f.path.endswith(".safetensors")]
    return vector / entry.path


def _flip_one_byte(path: Path) -> None:
    """Change the last byte in place: same size, same inode."""
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))


def _forge_record(path: Path, digest: str) -> None:
    """What a record would say had `digest` been read from `path` as it is now."""
    real = path.resolve()
    digests.record(real, os.stat(real), digest)


def test_extract_records_each_payload_digest_and_open_uses_it(written):
    payload = _payload(written)
    expected = next(f.sha256 for f in load_manifest(written).files if f.path == payload.name)
    assert digests.recorded(payload.resolve()) == expected
    Vector.open(written).close()


def test_a_payload_changed_in_place_is_caught_although_a_record_exists(written):
    payload = _payload(written)
    times = os.stat(payload)
    _flip_one_byte(payload)
    os.utime(payload, ns=(times.st_atime_ns, times.st_mtime_ns))  # the change time still moves
    assert digests.recorded(payload.resolve()) is None
    with pytest.raises(IntegrityError, match="sha256 differs"):
        Vector.open(written)


def test_a_copied_vector_is_hashed_not_trusted_from_the_original(written, tmp_path):
    copy = shutil.copytree(written, tmp_path / "copy")
    assert digests.recorded(_payload(copy).resolve()) is None
    Vector.open(copy).close()
    assert digests.recorded(_payload(copy).resolve()) == digests.recorded(_payload(written).resolve())


def test_check_rehashes_whatever_a_record_says_and_verify_full_makes_open_do_so(written, monkeypatch):
    payload = _payload(written)
    good = digests.recorded(payload.resolve())
    _flip_one_byte(payload)
    _forge_record(payload, good)  # a record that no longer matches the bytes
    Vector.open(written).close()  # a record is trusted: that is what it is for
    report = verify_vector(written)
    assert not report.ok and any("sha256 differs" in p for p in report.problems)
    monkeypatch.setenv("RVEC_VERIFY", "full")
    with pytest.raises(IntegrityError, match="sha256 differs"):
        Vector.open(written)


def test_a_record_whose_file_status_differs_or_that_is_malformed_is_ignored(written):
    payload = _payload(written).resolve()
    record = digests._record_path(os.stat(payload))
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "stat": [*data["stat"][:4], data["stat"][4] - 1]}))
    assert digests.recorded(payload) is None
    for junk in ("not json", "[]", json.dumps({**data, "sha256": "../../etc"})):
        record.write_text(junk)
        assert digests.recorded(payload) is None
    assert sha256_file(payload) == data["sha256"]  # hashed again, and recorded afresh
    assert digests.recorded(payload) == data["sha256"]


def test_a_file_written_just_now_is_read_only_after_its_change_time_settles(tmp_path):
    path = tmp_path / "fresh.bin"
    path.write_bytes(b"x" * 1000)
    st = digests.settled(path)
    assert st is not None and st.st_ctime_ns <= digests.time.time_ns() - digests._SETTLE_NS


def test_the_record_folder_keeps_the_newest_records_and_prunes_the_oldest_past_its_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(digests, "KEEP", 8)
    paths = []
    for i in range(12):
        path = tmp_path / f"payload-{i}.bin"
        path.write_bytes(bytes([i]) * 100)
        st = digests.settled(path)
        digests.record(path, st, f"{i:064x}")
        os.utime(digests._record_path(st), ns=(i * 10**9, i * 10**9))  # written in this order
        paths.append(path)
        assert len(list(digests.record_dir().glob("*.json"))) <= 8
    kept = [digests.recorded(p) is not None for p in paths]
    # The 9th record left the newest 6 (3 to 8), the 12th the newest 6 again (6 to 11).
    assert kept == [False] * 6 + [True] * 6
    assert digests.recorded(paths[-1]) == f"{11:064x}"
