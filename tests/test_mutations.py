"""Property-based: valid vectors mutated (shapes, offsets, dtypes, indexes, values, manifest fields) and re-hashed.

Every mutated vector goes through the real CLI twice, `rvec check VEC` and `rvec apply VEC`. Each run must end
in a clean one-line error with a non-zero exit and nothing written, or in exit 0 with the output an
independent reference computes; `check` must call a vector sound exactly when the reference finds its
payload sound. The reference below re-implements every encoding's meaning from the format description,
reading the payload with `safetensors.torch.load_file`, so it shares no decoding code with rvec.

RVEC_MUTATIONS sets how many vectors are tried (default 100, under a minute on an idle machine); RVEC_MUTATION_REPORT names a
JSON file that receives the counts, e.g. for the larger run by hand that README's Reliability section reports.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import struct
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from rvec_hub.cli._errors import run_cli
from rvec_hub.cli.main import cli
from rvec_hub.encodings import ENCODINGS
from rvec_hub.errors import FormatError
from rvec_hub.manifest import config_signature, fingerprint, parse_manifest
from rvec_hub.vector import sha256_file
from vector_edit import rewrite_vector

EXAMPLES = int(os.environ.get("RVEC_MUTATIONS", "100"))
# Record failures instead of stopping at the first (to count what an older rvec got wrong).
COUNT_ONLY = os.environ.get("RVEC_MUTATION_COUNT_ONLY") == "1"
PAYLOAD = "vector.safetensors"
# One source vector holding every encoding whose meaning the reference knows.
RE_ENCODE = {
    "model.layers.0.mlp.up_proj.weight": ("sparse", {"layout": "bitmask"}),
    "model.layers.0.mlp.gate_proj.weight": ("sparse", {"layout": "gaps"}),
    "model.layers.1.self_attn.q_proj.bias": ("sparse", {"layout": "bitmask"}),
    "model.layers.1.mlp.down_proj.weight": ("lowrank", {"rank": 4}),
    "model.layers.0.self_attn.k_proj.weight": ("lowrank", {"rank": 2}),
}
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int32, torch.int64, torch.uint8, torch.int8]
SPECIAL = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e38, -3e38, 65504.0, 1e-40, 1e-3, -1e-3, 2.0]
COUNTS: Counter = Counter()
FAILURES: list[str] = []
REFUSED_SOUND: list[str] = []  # clean refusals of vectors the reference would apply, with rvec's reason


class _Invalid(Exception):
    """The reference's verdict: the mutated vector's payload breaks the format."""


# The source vector -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_vector(vector_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dense vector with some tensors sparse (both layouts) and low-rank; most columns zeroed so gaps carry fillers."""
    encoded = {}

    def payload(t):
        for name, (encoding, options) in RE_ENCODE.items():
            delta = t.pop(name).float()
            if delta.ndim == 2:
                delta[:, 8:] = 0
            else:
                delta[::3] = 0
            enc = ENCODINGS[encoding].encode(delta, dtype=torch.bfloat16, **options)
            encoded[name] = enc
            t.update({f"{name}.{role}": v.contiguous() for role, v in enc.stored.items()})

    def manifest(m):
        for entry in m["tensors"]:
            if entry["name"] in encoded:
                enc = encoded[entry["name"]]
                entry.update(encoding=enc.encoding, keys={r: f"{entry['name']}.{r}" for r in enc.stored}, params=enc.params)

    return rewrite_vector(vector_dir, tmp_path_factory.mktemp("mixed") / "mixed", payload, manifest)


@pytest.fixture(scope="module")
def base_weights(family: dict[str, Path]) -> dict[str, torch.Tensor]:
    return load_file(family["instruct"] / "model.safetensors")


@pytest.fixture(scope="module")
def base_config(family: dict[str, Path]) -> dict:
    return json.loads((family["instruct"] / "config.json").read_text())


# The reference ----------------------------------------------------------------------------------


def _rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) <= 1:
        return 1, math.prod(shape) if shape else 1
    return shape[0], math.prod(shape[1:])


def _need(cond: bool, why: str) -> None:
    if not cond:
        raise _Invalid(why)


def _decode_reference(entry, stored: dict[str, torch.Tensor]) -> torch.Tensor:
    """The float32 delta an entry describes, or _Invalid; written from docs/format.md, not from rvec's decoders."""
    shape, roles = tuple(entry.shape), set(entry.keys)
    _need(all(d >= 0 for d in shape), "negative dimension")
    for key in entry.keys.values():
        _need(key in stored, f"missing key {key}")
    get = {role: stored[key] for role, key in entry.keys.items()}
    storage = getattr(torch, entry.dtype, None)
    _need(entry.dtype in ("float32", "bfloat16", "float16", "float64"), "storage dtype")
    if entry.encoding == "zero":
        _need(not roles, "zero stores nothing")
        return torch.zeros(shape)
    if entry.encoding == "dense":
        _need(roles == {"delta"}, "dense roles")
        d = get["delta"]
        _need(tuple(d.shape) == shape and d.dtype == storage, "dense shape/dtype")
        return d.float()
    if entry.encoding == "lowrank":
        _need(roles == {"A", "B"} and len(shape) >= 2, "lowrank roles/shape")
        a, b = get["A"], get["B"]
        rank = entry.params.get("rank")
        out, inp = shape[0], math.prod(shape[1:])
        _need(type(rank) is int and 1 <= rank <= min(out, inp), "rank")
        _need(a.dtype.is_floating_point and b.dtype.is_floating_point, "factor dtype")
        _need(tuple(b.shape) == (out, rank) and tuple(a.shape) == (rank, inp), "factor shapes")
        product = b @ a if a.dtype == b.dtype == torch.bfloat16 else b.float() @ a.float()  # docs/format.md
        return product.float().reshape(shape)
    if entry.encoding == "sparse":
        layout = entry.params.get("layout")
        rows, cols = _rows_cols(shape)
        index = {"bitmask": "mask", "gaps": "gaps"}.get(layout)
        _need(index is not None and roles == {"rowptr", "values", index}, "sparse roles")
        ptr, values = get["rowptr"], get["values"]
        _need(ptr.dtype in (torch.int32, torch.int64) and tuple(ptr.shape) == (rows + 1,), "rowptr")
        _need(values.dtype == storage and values.ndim == 1, "values")
        ptr = ptr.tolist()
        _need(ptr[0] == 0 and ptr[-1] == values.numel() and all(a <= b for a, b in zip(ptr, ptr[1:])), "rowptr order")
        out = torch.zeros(rows, cols)
        if layout == "bitmask":
            mask = get["mask"]
            _need(mask.dtype == torch.uint8 and tuple(mask.shape) == (rows, (cols + 7) // 8), "mask shape")
            for r in range(rows):
                bits = [(int(byte) >> (7 - k)) & 1 for byte in mask[r].tolist() for k in range(8)][:cols]
                where = [c for c, bit in enumerate(bits) if bit]
                _need(len(where) == ptr[r + 1] - ptr[r], "mask count")
                for c, v in zip(where, values[ptr[r]:ptr[r + 1]].float().tolist()):
                    out[r, c] = v
        else:
            gaps = get["gaps"]
            _need(gaps.dtype == torch.uint8 and tuple(gaps.shape) == tuple(values.shape), "gaps shape")
            for r in range(rows):
                col = -1
                for g, v in zip(gaps[ptr[r]:ptr[r + 1]].tolist(), values[ptr[r]:ptr[r + 1]].float().tolist()):
                    _need(g >= 1, "gap 0")
                    col += g
                    _need(col < cols, "past the row")
                    out[r, col] = v
        return out.reshape(shape)
    raise _Invalid(f"encoding {entry.encoding}")


def _reference(vec: Path, base: dict[str, torch.Tensor], base_config: dict) -> tuple[bool, dict | None, float]:
    """(payload sound, expected merged tensors or None when apply must refuse, alpha)."""
    try:
        manifest = parse_manifest((vec / "rvec.json").read_text())
    except FormatError:
        return False, None, 0.0
    try:
        stored = {}
        for f in manifest.files:
            path = vec / f.path
            _need(path.is_file() and path.stat().st_size == f.size and sha256_file(path) == f.sha256, "checksum")
            if f.path.endswith(".safetensors"):
                try:
                    stored.update(load_file(path))
                except Exception as exc:  # the reference's own reader refuses the header
                    raise _Invalid(f"safetensors: {exc}") from None
        deltas = {}
        for entry in manifest.tensors:
            delta = _decode_reference(entry, stored)
            _need(bool(torch.isfinite(delta).all()), "non-finite delta")
            deltas[entry.name] = delta
    except _Invalid:
        return False, None, manifest.default_alpha
    alpha = manifest.default_alpha
    touched = {e.name: tuple(e.shape) for e in manifest.tensors if e.encoding != "zero"}
    if any(n not in base or tuple(base[n].shape) != s for n, s in touched.items()):
        return True, None, alpha
    if fingerprint(config_signature(base_config), touched) != manifest.base.fingerprint:
        return True, None, alpha
    expected = {}
    for name in touched:
        scaled = alpha * deltas[name] if alpha != 0.0 else torch.zeros_like(deltas[name])
        merged = base[name].float() + scaled
        if not bool(torch.isfinite(merged).all()):
            return True, None, alpha
        # float32 rounding of α·Δ and of the sum, relative to the terms (base and α·Δ may nearly cancel).
        expected[name] = (merged, 1e-6 * (base[name].float().abs() + scaled.abs()))
    return True, expected, alpha


# Mutations ----------------------------------------------------------------------------------------


def _rewrite_header(path: Path, change) -> None:
    """Edit a safetensors file's header JSON (offsets, shapes, dtypes) and keep its data bytes as they are."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def _mutate_payload(data: st.DataObject, tensors: dict[str, torch.Tensor]) -> str:
    key = data.draw(st.sampled_from(sorted(tensors)), label="key")
    t = tensors[key]
    kind = data.draw(st.sampled_from(["shape", "dtype", "value", "index", "drop", "add"]), label="payload kind")
    if kind == "shape":
        how = data.draw(st.sampled_from(["cut", "grow", "flatten", "transpose", "unsqueeze"]), label="how")
        if how == "cut" and t.shape[0] > 1:
            tensors[key] = t[: data.draw(st.integers(0, t.shape[0] - 1))].contiguous()
        elif how == "grow":
            tensors[key] = torch.cat([t, t[:1]]).contiguous()
        elif how == "flatten":
            tensors[key] = t.reshape(-1).contiguous()
        elif how == "transpose" and t.ndim == 2:
            tensors[key] = t.T.contiguous()
        else:
            tensors[key] = t.unsqueeze(-1).contiguous()
    elif kind == "dtype":
        tensors[key] = t.to(data.draw(st.sampled_from([d for d in DTYPES if d != t.dtype]), label="dtype"))
    elif kind in ("value", "index") and t.numel():
        flat = t.reshape(-1).clone()
        i = data.draw(st.integers(0, flat.numel() - 1), label="at")
        if t.dtype.is_floating_point:
            flat[i] = data.draw(st.sampled_from(SPECIAL) | st.floats(-1e3, 1e3, width=32), label="value")
        else:
            info = torch.iinfo(t.dtype)
            flat[i] = data.draw(st.integers(info.min, info.max) | st.integers(max(info.min, -3), min(info.max, 300)), label="int")
        tensors[key] = flat.reshape(t.shape)
    elif kind == "drop":
        del tensors[key]
    else:
        tensors[key + ".extra"] = torch.zeros(3)
    return f"payload:{kind}"


def _mutate_manifest(data: st.DataObject, m: dict) -> str:
    entry = data.draw(st.sampled_from(m["tensors"]), label="entry")
    kind = data.draw(st.sampled_from(["shape", "dtype", "encoding", "keys", "params", "alpha", "tensors", "name"]), label="manifest kind")
    if kind == "shape":
        shape = list(entry["shape"])
        how = data.draw(st.sampled_from(["dim", "drop", "add", "negative"]), label="how")
        if how == "dim" and shape:
            i = data.draw(st.integers(0, len(shape) - 1))
            shape[i] = data.draw(st.integers(0, shape[i] * 2 + 1))
        elif how == "drop" and shape:
            shape.pop()
        elif how == "add":
            shape.append(1)
        else:
            shape = [-1, *shape[1:]]
        entry["shape"] = shape
    elif kind == "dtype":
        entry["dtype"] = data.draw(st.sampled_from(["float32", "bfloat16", "float16", "int8", "complex64"]))
    elif kind == "encoding":
        entry["encoding"] = data.draw(st.sampled_from(["zero", "dense", "sparse", "lowrank"]))
    elif kind == "keys":
        keys = dict(entry["keys"])
        others = [k for e in m["tensors"] for k in e["keys"].values()]
        how = data.draw(st.sampled_from(["drop", "rename", "steal", "ghost"]), label="how")
        if keys and how == "drop":
            keys.pop(data.draw(st.sampled_from(sorted(keys))))
        elif keys and how == "rename":
            role = data.draw(st.sampled_from(sorted(keys)))
            keys[role + "x"] = keys.pop(role)
        elif keys and how == "steal" and others:
            keys[data.draw(st.sampled_from(sorted(keys)))] = data.draw(st.sampled_from(others))
        else:
            keys["delta"] = "no.such.key"
        entry["keys"] = keys
    elif kind == "params":
        params = dict(entry["params"])
        params[data.draw(st.sampled_from(["layout", "rank"]))] = data.draw(
            st.sampled_from(["bitmask", "gaps", "csr", 0, 1, 3, 5, -1, 10**6, None, "4", 2.5])
        )
        entry["params"] = params
    elif kind == "alpha":
        m["default_alpha"] = data.draw(st.sampled_from(SPECIAL + [1e39, -1e39]) | st.floats(-4, 4))
    elif kind == "tensors":
        if data.draw(st.booleans(), label="duplicate"):
            m["tensors"].append(dict(entry))
        else:
            m["tensors"].remove(entry)
    else:
        m["name"] = data.draw(st.text(max_size=20))
    return f"manifest:{kind}"


def _mutate_offsets(data: st.DataObject, header: dict) -> None:
    names = sorted(k for k in header if k != "__metadata__")
    a = data.draw(st.sampled_from(names), label="tensor")
    how = data.draw(st.sampled_from(["swap", "shift", "overlap", "shape", "dtype"]), label="header how")
    if how == "swap":
        b = data.draw(st.sampled_from(names), label="other")
        header[a]["data_offsets"], header[b]["data_offsets"] = header[b]["data_offsets"], header[a]["data_offsets"]
    elif how == "shift":
        delta = data.draw(st.sampled_from([-2, -1, 1, 2, 8, 10**9]))
        header[a]["data_offsets"] = [x + delta for x in header[a]["data_offsets"]]
    elif how == "overlap":
        header[a]["data_offsets"] = [0, header[a]["data_offsets"][1] - header[a]["data_offsets"][0]]
    elif how == "shape":
        header[a]["shape"] = list(reversed(header[a]["shape"]))
    else:
        header[a]["dtype"] = data.draw(st.sampled_from(["F32", "BF16", "F16", "I32", "U8", "I64", "F8_E4M3"]))


def _make(data: st.DataObject, src: Path, dst: Path) -> str:
    """A mutated, re-hashed copy of `src`; returns the mutation's kind."""
    target = data.draw(st.sampled_from(["payload", "payload", "manifest", "offsets", "files"]), label="target")
    kind = target
    if target == "payload":
        kinds = []
        rewrite_vector(src, dst, payload=lambda t: kinds.append(_mutate_payload(data, t)))
        kind = kinds[0]
    elif target == "manifest":
        kinds = []
        rewrite_vector(src, dst, manifest=lambda m: kinds.append(_mutate_manifest(data, m)))
        kind = kinds[0]
    else:
        rewrite_vector(src, dst)
        m = json.loads((dst / "rvec.json").read_text())
        if target == "offsets":
            _rewrite_header(dst / PAYLOAD, lambda h: _mutate_offsets(data, h))
            for f in m["files"]:
                f["sha256"], f["size"] = sha256_file(dst / f["path"]), (dst / f["path"]).stat().st_size
        else:
            how = data.draw(st.sampled_from(["drop", "size", "path", "hash"]), label="files how")
            f = m["files"][data.draw(st.integers(0, len(m["files"]) - 1))]
            if how == "drop":
                m["files"].remove(f)
            elif how == "size":
                f["size"] += 1
            elif how == "path":
                f["path"] = data.draw(st.sampled_from(["../x.safetensors", "/etc/passwd", "missing.safetensors", "a//b", "README.md"]))
            else:
                f["sha256"] = "0" * 64
            kind = f"files:{how}"
        (dst / "rvec.json").write_text(json.dumps(m))
    return kind


# The property ---------------------------------------------------------------------------------------


def _cli(*args: str) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = run_cli(cli, list(args))  # anything but an RvecError or OSError escapes here: a traceback
    return code, buf.getvalue()


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    path = os.environ.get("RVEC_MUTATION_REPORT")
    if path:
        report = {"examples": EXAMPLES, "count_only": COUNT_ONLY, "counts": dict(sorted(COUNTS.items())), "failures": FAILURES, "refused_sound": REFUSED_SOUND}
        Path(path).write_text(json.dumps(report, indent=2) + "\n")


def test_the_unmutated_source_vector_applies_exactly(mixed_vector, family, base_weights, tmp_path):
    sound, expected, alpha = _reference(mixed_vector, base_weights, json.loads((family["instruct"] / "config.json").read_text()))
    assert sound and expected is not None and alpha == 1.0
    code, out = _cli("apply", str(mixed_vector), "--base", str(family["instruct"]), "-o", str(tmp_path / "out"), "-q", "--out-dtype", "fp32")
    assert code == 0, out
    merged = load_file(tmp_path / "out" / "model.safetensors")
    assert all(torch.equal(merged[n], t) for n, (t, _) in expected.items())
    assert {e for e, _ in RE_ENCODE.values()} <= {e["encoding"] for e in json.loads((mixed_vector / "rvec.json").read_text())["tensors"]}


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_a_mutated_vector_ends_in_a_clean_error_or_the_right_output(mixed_vector, family, base_weights, base_config, data):
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        kind = _make(data, mixed_vector, work / "vec")
        COUNTS["tried"] += 1
        COUNTS[f"mutation {kind}"] += 1
        failures = _outcome(work, kind, family["instruct"], base_weights, base_config)
        for failure in failures:
            COUNTS[f"failed: {failure.split(':')[0]}"] += 1
            if len(FAILURES) < 50:
                FAILURES.append(f"{kind}: {failure}")
        if not COUNT_ONLY:
            assert not failures, f"{kind}: {failures}"


def _outcome(work: Path, kind: str, base: Path, base_weights: dict, base_config: dict) -> list[str]:
    """What went wrong with one mutated vector under `check` and `apply` (empty: a clean error or the right output)."""
    vec, merged = work / "vec", work / "out"
    sound, expected, _ = _reference(vec, base_weights, base_config)
    failures = []
    try:
        code, out = _cli("check", str(vec), "-q")
        if "Traceback" in out:
            failures.append(f"traceback: check {out[-300:]}")
        elif (code == 0) != sound:
            failures.append(f"check verdict: exit {code}, reference {'sound' if sound else 'broken'}: {out[-300:]}")
    except Exception as exc:  # an exception run_cli let through: the user would see a traceback
        failures.append(f"traceback: check {type(exc).__name__}: {exc}")
    try:
        code, out = _cli("apply", str(vec), "--base", str(base), "-o", str(merged), "-q", "--out-dtype", "fp32")
    except Exception as exc:
        return [*failures, f"traceback: apply {type(exc).__name__}: {exc}"]
    if code != 0:
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        if "Traceback" in out or len(errors) != 1:
            failures.append(f"unclear error: {out[-300:]}")
        if merged.exists() or sorted(p.name for p in work.iterdir()) != ["vec"]:
            failures.append("leftovers: output or temporary directory after a refusal")
        COUNTS["refused" if expected is None else "refused, reference would apply"] += 1
        if expected is not None and len(REFUSED_SOUND) < 20:
            REFUSED_SOUND.append(f"{kind}: {errors[0] if errors else out[-200:]}")
        return failures
    if expected is None:
        return [*failures, f"wrong output: apply exit 0 on a vector the reference refuses ({kind})"]
    result = load_file(merged / "model.safetensors")
    for name, tensor in base_weights.items():
        want, tolerance = expected.get(name, (tensor.float(), torch.zeros(())))
        if not bool(((result[name] - want).abs() <= tolerance).all()):
            return [*failures, f"wrong output: {name} differs from the reference ({kind})"]
    COUNTS["applied, output matches"] += 1
    return failures
