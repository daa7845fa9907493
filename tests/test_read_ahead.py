"""Reading ahead on a thread: order, errors, and an early stop by the consumer."""

from __future__ import annotations

import threading
import time

import pytest

from rvec_hub.io.read_ahead import read_ahead


def _recorded(n: int, produced: list[int]):
    """0 .. n-1, each noted in `produced` when the producer makes it."""
    for i in range(n):
        produced.append(i)
        yield i


def test_items_arrive_in_order_and_ahead_of_the_consumer() -> None:
    produced: list[int] = []
    seen = []
    for item in read_ahead(_recorded(6, produced), depth=2):
        time.sleep(0.05)  # the producer runs ahead while the consumer works
        seen.append((item, len(produced)))
    assert [i for i, _ in seen] == list(range(6))
    assert seen[0][1] >= 2


def test_a_failure_in_the_producer_is_raised_at_that_item() -> None:
    def items():
        yield 1
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in read_ahead(items()):
            got.append(item)
    assert got == [1]


def test_a_consumer_that_stops_early_stops_the_producer() -> None:
    produced: list[int] = []
    before = threading.active_count()
    with pytest.raises(RuntimeError):
        for item in read_ahead(_recorded(1000, produced), depth=2):
            if item == 3:
                raise RuntimeError("write failed")
    deadline = time.monotonic() + 30  # the producer notices at its next put; a busy machine may take a while
    while threading.active_count() != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before
    assert len(produced) <= 3 + 2 + 2
