"""Chunked delta arithmetic: reused buffers and thread settings change nothing in the result."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from rvec_hub.arith import CHUNK_ELEMENTS, Survival, Workspace, add_rows, ordered_map, row_chunks, streaming_threads


def _rows(seed: int, shape: tuple[int, ...], scale: float, dtype: torch.dtype) -> torch.Tensor:
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n_terms", [1, 2])
def test_add_rows_in_a_workspace_matches_fresh_tensors_bit_for_bit(out_dtype: torch.dtype, n_terms: int) -> None:
    workspace = Workspace()
    for chunk, rows in enumerate((64, 48, 64)):  # a smaller chunk between two larger ones reuses buffers
        base = _rows(chunk, (rows, 32), 0.02, torch.bfloat16)
        terms = [(_rows(100 + 10 * chunk + i, (rows, 32), 1e-4, torch.float32), 1.0 - 0.5 * i) for i in range(n_terms)]
        fresh_surv, ws_surv = [Survival() for _ in terms], [Survival() for _ in terms]
        fresh = add_rows(base, terms, out_dtype, fresh_surv)
        reused = add_rows(base, terms, out_dtype, ws_surv, workspace=workspace).clone()
        assert torch.equal(fresh.view(torch.int16 if out_dtype == torch.bfloat16 else torch.int32),
                           reused.view(torch.int16 if out_dtype == torch.bfloat16 else torch.int32))
        assert [s.err_sq for s in fresh_surv] == [s.err_sq for s in ws_surv]
        assert [s.norm_sq for s in fresh_surv] == [s.norm_sq for s in ws_surv]


def test_add_rows_leaves_its_inputs_untouched() -> None:
    base = _rows(0, (16, 8), 0.02, torch.bfloat16)
    delta = _rows(1, (16, 8), 1e-3, torch.float32)
    base_copy, delta_copy = base.clone(), delta.clone()
    add_rows(base, [(delta, 1.0)], torch.bfloat16, [Survival()], workspace=Workspace())
    assert torch.equal(base, base_copy) and torch.equal(delta, delta_copy)


def test_float32_output_keeps_the_whole_vector() -> None:
    survival = Survival()
    add_rows(_rows(0, (8, 8), 0.02, torch.bfloat16), [(_rows(1, (8, 8), 1e-6, torch.float32), 1.0)], torch.float32, [survival])
    assert survival.retained == 1.0


def test_row_chunks_cover_every_row_once_within_the_chunk_size() -> None:
    shape = (151936, 896)
    chunks = row_chunks(shape)
    assert chunks[0][0] == 0 and chunks[-1][1] == shape[0]
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    assert max((stop - start) * shape[1] for start, stop in chunks) <= CHUNK_ELEMENTS


def test_streaming_threads_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    with streaming_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_ordered_map_keeps_item_order_and_holds_at_most_workers_results() -> None:
    lock, started, taken, ahead = threading.Lock(), [0], [0], []

    def work(i: int) -> int:
        with lock:
            started[0] += 1
            ahead.append(started[0] - taken[0])
        time.sleep(0.002 * (i % 3))
        return i * i

    out = []
    for value in ordered_map(work, range(20), workers=2):
        taken[0] += 1
        out.append(value)
    assert out == [i * i for i in range(20)]
    assert max(ahead) <= 3  # two in flight, plus the one handed out and not yet counted


def test_ordered_map_raises_the_first_failure_in_order() -> None:
    def work(i: int) -> int:
        if i == 3:
            raise ValueError("three")
        return i

    seen = []
    with pytest.raises(ValueError, match="three"):
        for value in ordered_map(work, range(10), workers=2):
            seen.append(value)
    assert seen == [0, 1, 2]
