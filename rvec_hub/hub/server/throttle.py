"""Slowing down token guessing: failed authentications lock a client and a target user out for a while.

Each key (`client:IP`, `user:NAMESPACE`) counts its recent failures. The first few are free; after
that every failure locks the key for an exponentially growing time (capped), during which requests
carrying a token are answered 429 without the token being compared at all, so a correct guess
made during a lock-out gains nothing. A success from a client clears that client's count. Keys are
kept in a bounded LRU table, so a flood of addresses cannot grow memory without limit.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass
class _Record:
    failures: int = 0
    locked_until: float = 0.0
    last_failure: float = 0.0


class AuthThrottle:
    """Exponential lock-out per key after repeated authentication failures.

    Args:
        free_failures: failures a key may make before it is locked.
        base_delay_s: lock-out after the first failure beyond the free ones; doubles with each further one.
        max_delay_s: longest lock-out; a key quiet for twice this long starts afresh.
        max_keys: keys remembered at most (least recently failed ones are forgotten first).
        clock: monotonic clock (tests pass a fake one).

    Example:
        >>> throttle = AuthThrottle(free_failures=0, base_delay_s=1.0)
        >>> throttle.failed(["client:10.0.0.1"])
        >>> throttle.retry_after(["client:10.0.0.1"]) > 0
        True
    """

    def __init__(
        self,
        *,
        free_failures: int = 5,
        base_delay_s: float = 1.0,
        max_delay_s: float = 60.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.max_keys = max_keys
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._records)

    def _fresh(self, key: str, now: float) -> _Record | None:
        record = self._records.get(key)
        if record is not None and now - record.last_failure > 2 * self.max_delay_s and now >= record.locked_until:
            del self._records[key]  # quiet long enough: forgiven
            return None
        return record

    def retry_after(self, keys: Iterable[str]) -> float:
        """Seconds until every key in `keys` may try again (0 when none is locked)."""
        now = self._clock()
        with self._lock:
            waits = [record.locked_until - now for key in keys if (record := self._fresh(key, now)) is not None]
        return max([0.0, *waits])

    def failed(self, keys: Iterable[str]) -> None:
        """Record one failed authentication against every key."""
        now = self._clock()
        with self._lock:
            for key in keys:
                record = self._fresh(key, now) or _Record()
                record.failures += 1
                record.last_failure = now
                beyond = record.failures - self.free_failures
                if beyond > 0:
                    delay = min(self.base_delay_s * 2 ** min(beyond - 1, 30), self.max_delay_s)
                    record.locked_until = now + delay
                self._records[key] = record
                self._records.move_to_end(key)
            while len(self._records) > self.max_keys:
                self._records.popitem(last=False)

    def succeeded(self, key: str) -> None:
        """Forget the failures of `key` (a client that just proved it holds a token)."""
        with self._lock:
            self._records.pop(key, None)
