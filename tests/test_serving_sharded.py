"""Lazily merged weights: a rank's slice, or a parameter copied from one, equals the same part of the whole merge."""

from __future__ import annotations

import pytest
import torch

from rvec_hub import Vector, compress, open_checkpoint
from rvec_hub.arith import Survival
from rvec_serving.merge import merge_tensor
from rvec_serving.sharded import MergeOnNarrow, lazily_merged_weights
from rvec_serving.spec import OpenedVector


@pytest.fixture(scope="module")
def opened(vector_dir, tmp_path_factory) -> list[OpenedVector]:
    lowrank = tmp_path_factory.mktemp("sharded") / "lowrank"
    compress(Vector.open(vector_dir), lowrank, method="lowrank", rank=4, quiet=True)
    return [OpenedVector("dense", Vector.open(vector_dir), 0.7), OpenedVector("lowrank", Vector.open(lowrank), -1.5)]


def _base_weights(family):
    base = open_checkpoint(family["instruct"])
    return [(name, base.read_rows(name)) for name in base.tensors]


@pytest.mark.parametrize("dim", [0, 1])
def test_each_rank_slice_equals_the_same_slice_of_the_whole_merge(family, opened, dim) -> None:
    seconds = [0.0]
    checked = 0
    for name, lazy in lazily_merged_weights(_base_weights(family), opened, torch.bfloat16, [Survival(), Survival()], seconds):
        if not isinstance(lazy, MergeOnNarrow) or lazy.dim() <= dim:
            continue
        whole = merge_tensor(name, lazy.as_subclass(torch.Tensor), opened, torch.bfloat16, [Survival(), Survival()])
        size = lazy.shape[dim] // 2
        for rank in range(2):
            part = lazy.narrow(dim, rank * size, size)
            # Along dim 0 the slice stays lazy until the loader copies it into its parameter.
            assert type(part) is (MergeOnNarrow if dim == 0 else torch.Tensor)
            param = torch.empty(part.shape, dtype=torch.bfloat16)
            param.copy_(part)
            assert torch.equal(param, whole.narrow(dim, rank * size, size)), (name, rank)
        checked += 1
    assert checked >= 8 and seconds[0] > 0


def test_any_other_use_sees_the_whole_merged_tensor(family, opened) -> None:
    weights = dict(_base_weights(family))
    for name, lazy in lazily_merged_weights(list(weights.items()), opened, torch.bfloat16, [Survival(), Survival()], [0.0]):
        if isinstance(lazy, MergeOnNarrow):
            target = torch.empty(lazy.shape, dtype=torch.bfloat16)
            target.copy_(lazy)
            assert lazy.shape == weights[name].shape and lazy.dtype == weights[name].dtype
            assert torch.equal(target, merge_tensor(name, weights[name], opened, torch.bfloat16, [Survival(), Survival()]))
            assert not torch.equal(target, weights[name].to(torch.bfloat16))
            return
    pytest.fail("no tensor was touched by the vectors")


# How a weight loader cuts what it copies into its parameter: a column-parallel rank's rows, or a
# row-parallel layer at one rank, which narrows dim 1 over its whole extent.
_CUTS = {
    "rows of rank 1 of 2": lambda t: (t.shape[0] // 2, lambda x: x.narrow(0, x.shape[0] // 2, x.shape[0] // 2)),
    "all columns, one rank": lambda t: (0, lambda x: x.narrow(1, 0, x.shape[1])),
}


def _one_vector_counting_kernel_calls(vector_dir, tmp_path, monkeypatch, method: str) -> tuple[list[OpenedVector], list]:
    """The vector compressed with `method` (dense: as it is) at α 0.7, and a list that gets (rows' address,
    first row, last row + 1) of each `fused.add_in_place` call."""
    from rvec_hub import fused

    path = vector_dir
    if method != "dense":
        path = tmp_path / method
        compress(Vector.open(vector_dir), path, method=method, quiet=True, **({"bits": 2} if method == "quantized" else {}))
    calls = []
    add_in_place = fused.add_in_place
    monkeypatch.setattr(fused, "add_in_place", lambda rows, vector, source, start, stop, *a, **k: (
        calls.append((rows.data_ptr(), start, stop)), add_in_place(rows, vector, source, start, stop, *a, **k))[1])
    return [OpenedVector(method, Vector.open(path), 0.7)], calls


@pytest.mark.parametrize("cut", list(_CUTS))
@pytest.mark.parametrize("method", ["dense", "auto", "quantized"])
def test_one_vector_into_bf16_is_added_in_the_parameter_itself_by_the_fused_kernels(family, vector_dir, tmp_path, monkeypatch, method, cut) -> None:
    one, calls = _one_vector_counting_kernel_calls(vector_dir, tmp_path, monkeypatch, method)
    checked = 0
    for name, lazy in lazily_merged_weights(_base_weights(family), one, torch.bfloat16, [Survival()], [0.0]):
        if not isinstance(lazy, MergeOnNarrow) or lazy.dim() != 2 or lazy.shape[0] < 2:
            continue
        whole = merge_tensor(name, lazy.as_subclass(torch.Tensor), one, torch.bfloat16, [Survival()])
        first, narrow = _CUTS[cut](lazy)
        expected = narrow(whole)
        calls.clear()
        param = torch.full(expected.shape, float("nan"), dtype=torch.bfloat16)
        param.copy_(narrow(lazy))  # a weight loader: narrow, then copy into the parameter
        assert calls and calls[0][1] == first and calls[-1][2] == first + expected.shape[0], (name, calls)
        inside = range(param.data_ptr(), param.data_ptr() + param.nbytes)
        assert all(ptr in inside for ptr, _, _ in calls), "the kernels added into a copy, not into the parameter"
        assert torch.equal(param, expected), name
        checked += 1
    assert checked >= 8


def test_a_parameter_of_another_dtype_or_layout_gets_the_merged_tensor_copied_in(family, vector_dir) -> None:
    one = [OpenedVector("dense", Vector.open(vector_dir), 1.0)]
    for name, lazy in lazily_merged_weights(_base_weights(family), one, torch.bfloat16, [Survival()], [0.0]):
        if isinstance(lazy, MergeOnNarrow) and lazy.dim() == 2:
            whole = merge_tensor(name, lazy.as_subclass(torch.Tensor), one, torch.bfloat16, [Survival()])
            wide = torch.empty(lazy.shape, dtype=torch.float32)
            wide.copy_(lazy)
            assert torch.equal(wide, whole.float())
            transposed = torch.empty(tuple(reversed(lazy.shape)), dtype=torch.bfloat16).t()  # not contiguous
            transposed.copy_(lazy)
            assert torch.equal(transposed, whole)
            assert torch.equal(torch.cat([lazy, lazy]), torch.cat([whole, whole]))  # lazies inside a list
            return
    pytest.fail("no tensor was touched by the vectors")


@pytest.mark.parametrize("method", ["dense", "auto", "quantized"])
def test_a_row_parallel_rank_slice_of_one_vector_is_merged_by_the_fused_kernels(family, vector_dir, tmp_path, monkeypatch, method) -> None:
    one, calls = _one_vector_counting_kernel_calls(vector_dir, tmp_path, monkeypatch, method)
    checked = 0
    for name, lazy in lazily_merged_weights(_base_weights(family), one, torch.bfloat16, [Survival()], [0.0]):
        if not isinstance(lazy, MergeOnNarrow) or lazy.dim() != 2 or lazy.shape[1] < 2:
            continue
        whole = merge_tensor(name, lazy.as_subclass(torch.Tensor), one, torch.bfloat16, [Survival()])
        size = lazy.shape[1] // 2
        calls.clear()
        param = torch.full((lazy.shape[0], size), float("nan"), dtype=torch.bfloat16)
        param.copy_(lazy.narrow(1, size, size))  # rank 1 of 2 of a row-parallel layer
        assert calls and calls[0][1] == 0 and calls[-1][2] == lazy.shape[0], (name, calls)
        assert torch.equal(param, whole.narrow(1, size, size)), name
        checked += 1
    assert checked >= 8


@pytest.mark.parametrize("iterator", ["lazily_merged_weights", "merged_weights"])
def test_the_threads_of_a_load_serve_all_its_tensors_and_are_joined_when_it_ends(family, vector_dir, tmp_path, monkeypatch, iterator) -> None:
    import threading

    from rvec_hub import arith, fused
    from rvec_serving.merge import merged_weights

    monkeypatch.setattr(arith, "CHUNK_ELEMENTS", 1024)  # a few rows a chunk: every matrix spreads over the threads
    one, _ = _one_vector_counting_kernel_calls(vector_dir, tmp_path, monkeypatch, "quantized")
    adders: set[threading.Thread] = set()
    add_in_place = fused.add_in_place
    monkeypatch.setattr(fused, "add_in_place", lambda *a, **k: (adders.add(threading.current_thread()), add_in_place(*a, **k))[1])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        if iterator == "merged_weights":
            merged = dict(merged_weights(_base_weights(family), one, torch.bfloat16, [Survival()]))
        else:
            merged = {}
            for name, lazy in lazily_merged_weights(_base_weights(family), one, torch.bfloat16, [Survival()], [0.0]):
                merged[name] = torch.empty(lazy.shape, dtype=lazy.dtype)
                merged[name].copy_(lazy)  # a weight loader's copy into its parameter, while the load is under way
                assert all(t.is_alive() for t in adders if t.name.startswith("rvec-merge"))
    finally:
        torch.set_num_threads(threads)
    pooled = {t for t in adders if t.name.startswith("rvec-merge")}
    assert len(pooled) == 2, adders  # the same two threads for every tensor of the load
    assert not any(t.is_alive() for t in pooled), "a merge thread outlived its load"
    whole = dict((name, merge_tensor(name, tensor, one, torch.bfloat16, [Survival()])) for name, tensor in _base_weights(family))
    assert all(torch.equal(merged[name], whole[name]) for name in whole)
