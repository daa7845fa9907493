"""Produce the items of an iterator on a thread, a few ahead of the consumer."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def read_ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Yield what `items` yields, computing up to `depth` items ahead on a thread.

    Reads (pread) and decodes release the GIL, so the next chunk is read while the current one is merged.
    An exception raised by `items` is raised here, at the item it failed on; closing the generator early
    (an error in the consumer) stops the thread before the next item is produced.

    Example:
        >>> list(read_ahead(iter(range(3))))
        [0, 1, 2]
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if not _put(ready, item, stop):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            _put(ready, _Failed(exc), stop)
            return
        _put(ready, _DONE, stop)

    thread = threading.Thread(target=produce, name="rvec-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _put(ready: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Queue `item` unless the consumer has gone; False when it has."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
