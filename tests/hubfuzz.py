"""Property-based fuzzing of a running `rvec hub serve`, driven by the app's own OpenAPI schema.

schemathesis turns every operation of `create_app(...).openapi()` into a hypothesis strategy, both
positive (fits the schema) and negative (wrong types, missing fields, odd strings). Path
parameters are biased towards names that exist (seeded repos, branches, tags, commits) so requests
reach the handlers instead of stopping at "repo not found". Each case goes out anonymously, with a
valid token of the owner, or with another user's token (wrong tokens would soon lock the fuzzer out:
the lock-out has tests of its own). A finding is any 5xx, any dropped connection, and any 4xx
without a message.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.errors
import hypothesis.strategies as st
import requests
import schemathesis
from hypothesis import HealthCheck
from schemathesis import GenerationMode

from rvec_hub.hub.server import create_app

SEED_FILES = {"README.md": b"---\nlicense: mit\ntags: [rvec]\n---\n# fuzz\n", "notes/a.txt": b"hello\n"}
LFS_PAYLOAD = bytes(range(256)) * 64


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: Any, value: Any) -> dict[str, Any]:
    lines = value if isinstance(value, list) else [value]
    return {"data": "\n".join(json.dumps(line) for line in lines).encode()}


@dataclass
class FuzzReport:
    """What one fuzz run sent and what came back."""

    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    operations: int = 0


def seed(url: str, owner_token: str) -> dict[str, list[str]]:
    """Create the repos, files, refs the fuzzer aims at; return the names to bias path parameters with."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=url, token=owner_token)
    owner = api.whoami()["name"]
    api.create_repo(f"{owner}/vec")
    api.create_repo(f"{owner}/secret", private=True)
    def ops() -> list[CommitOperationAdd]:
        files = {**SEED_FILES, "weights.safetensors": LFS_PAYLOAD}
        return [CommitOperationAdd(path, data) for path, data in files.items()]

    first = api.create_commit(f"{owner}/vec", ops(), commit_message="seed")
    api.create_commit(f"{owner}/secret", ops(), commit_message="seed")
    api.create_tag(f"{owner}/vec", tag="v1.0.0")
    api.create_branch(f"{owner}/vec", branch="dev")
    import hashlib

    commit = first.oid
    return {
        "namespace": [owner, "bob", "api", "..", "a" * 200],
        "name": ["vec", "secret", "missing", "vec.git"],
        "name_git": ["vec.git", "secret.git", "vec"],
        "revision": ["main", "dev", "v1.0.0", commit, commit[:7], "refs/heads/main", "refs/tags/v1.0.0", "refs/pr/1"],
        "branch": ["dev", "main", "new-branch", "v1.0.0"],
        "tag": ["v1.0.0", "v2.0.0", "stable", "refs/tags/v1.0.0"],
        "rest": ["main", "main/README.md", "main/notes", "v1.0.0/weights.safetensors", f"{commit}/notes/a.txt",
                 "main/%2e%2e/x", "main/%FF", "dev/../README.md"],
        "oid": [hashlib.sha256(LFS_PAYLOAD).hexdigest(), "0" * 64],
    }


def _schema() -> dict[str, Any]:
    """The app's OpenAPI schema, as `rvec hub serve` builds it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GET and HEAD of /resolve share an operation id
        return create_app(Path(tempfile.mkdtemp()), {}).openapi()


def _path_value(known: list[str]) -> st.SearchStrategy[str]:
    """A path parameter: mostly a name that exists, else arbitrary text (the client percent-encodes it)."""
    return st.one_of(
        st.sampled_from(known),
        st.sampled_from(known).map(lambda v: v + "/"),
        st.text(min_size=1, max_size=40),
        st.sampled_from(["..", ".", "%", "%2F", "a/../b", "\\", "\x00", "x" * 300, "refs/pr/1", "0" * 40]),
    )


def run(url: str, tokens: dict[str, str], owner: str, names: dict[str, list[str]], *,
        examples: int, seed_value: int = 0) -> FuzzReport:
    """Fuzz every operation with `examples` positive and `examples` negative cases each."""
    report = FuzzReport()
    schema = schemathesis.openapi.from_dict(_schema())
    # Wrong tokens are left to the lock-out tests: here they would soon lock the fuzzer out (429) of everything.
    auth_choices = [None, f"Bearer {tokens[owner]}", *(f"Bearer {t}" for u, t in tokens.items() if u != owner)]
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        report.operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            params = [p.name for p in operation.path_parameters]
            path_strategy = st.fixed_dictionaries({p: _path_value(names.get(p, ["x"])) for p in params})
            cases = path_strategy.flatmap(
                lambda pp, op=operation, how=mode: op.as_strategy(generation_mode=how, path_parameters=pp))

            @hypothesis.settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                                 suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.generate])
            @hypothesis.seed(seed_value)
            @hypothesis.given(cases, st.sampled_from(auth_choices))
            def one(case: Any, auth: str | None) -> None:
                headers = {"Authorization": auth} if auth else {}
                report.requests += 1
                label = f"{case.method} {case.formatted_path}"
                try:
                    response = case.call(base_url=url, session=session, headers=headers, timeout=30)
                except requests.RequestException as err:
                    report.failures.append(f"{label}: connection dropped ({type(err).__name__})")
                    return
                report.statuses[response.status_code] += 1
                if response.status_code >= 500:
                    report.failures.append(f"{label}: {response.status_code} {response.text[:200]}")
                elif response.status_code >= 400 and not _has_message(response):
                    report.failures.append(f"{label}: {response.status_code} without a message")

            try:
                one()
            except hypothesis.errors.Unsatisfiable:
                pass  # nothing to break in this mode (an operation without parameters or body)
    return report


def _has_message(response: requests.Response) -> bool:
    if any(k.lower() == "x-error-message" for k in response.headers):
        return True
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and bool(body.get("error") or body.get("errors") or body.get("detail"))
