"""A bounded property-based fuzz of every `rvec hub serve` endpoint (bench/bench_hub_fuzz.py runs it large)."""

from __future__ import annotations

from pathlib import Path

import pytest

import hubfuzz
from hubproc import hub_process

from hubtest_common import TOKENS


@pytest.mark.slow
def test_fuzzing_every_endpoint_from_the_openapi_schema_finds_no_server_error(tmp_path: Path) -> None:
    with hub_process(tmp_path / "hub", TOKENS) as server:
        names = hubfuzz.seed(server.url, TOKENS["alice"])
        report = hubfuzz.run(server.url, TOKENS, "alice", names, examples=2)
        assert server.process.poll() is None, "the server died during the fuzz"
    assert report.operations >= 20 and report.requests >= 2 * report.operations
    print(f"fuzzed {report.requests} requests to {report.operations} operations: {dict(report.statuses)}")
    assert report.failures == [], "\n".join(report.failures[:20])
    assert any(status == 200 for status in report.statuses), "no fuzzed request got past validation"
