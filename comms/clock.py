"""The one clock.

This is the only module that reads system time. Everything else receives a :class:`Clock` (or a ``now`` value
taken from one) so that tests can run the same code under a :class:`FakeClock`, where minutes pass in
microseconds and callbacks fire in deadline order.

Two readings exist:

* ``now()`` -- wall time, an aware UTC :class:`datetime.datetime` (stored with millisecond precision);
* ``monotonic()`` -- seconds from an arbitrary origin that never goes backwards; SIP timers and the RTP pacing
  run on it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

UTC = dt.UTC


def to_ms(value: dt.datetime) -> dt.datetime:
    """Return ``value`` as aware UTC truncated to whole milliseconds; a naive value is refused."""
    if value.tzinfo is None:
        raise ValueError(f"expected an aware datetime, got naive {value.isoformat()}")
    value = value.astimezone(UTC)
    return value.replace(microsecond=(value.microsecond // 1000) * 1000)


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What every adapter needs from time."""

    def now(self) -> dt.datetime:
        """Aware UTC wall time."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds`` of this clock's time."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` after ``delay`` seconds of this clock's time."""
        ...


class SystemClock:
    """The real clock: wall time from the OS, timers on the running asyncio loop."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)


@dataclass(order=True)
class _Scheduled:
    when: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock for tests: time moves only through :meth:`advance`, which runs due callbacks in order."""

    def __init__(self, start: dt.datetime | None = None, monotonic_start: float = 1000.0) -> None:
        self._wall0 = to_ms(start or dt.datetime(2026, 1, 5, 14, 0, tzinfo=UTC))
        self._mono0 = monotonic_start
        self._mono = monotonic_start
        self._queue: list[_Scheduled] = []
        self._seq = itertools.count()

    def now(self) -> dt.datetime:
        return self._wall0 + dt.timedelta(seconds=self._mono - self._mono0)

    def monotonic(self) -> float:
        return self._mono

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        item = _Scheduled(self._mono + max(0.0, delay), next(self._seq), callback)
        heapq.heappush(self._queue, item)
        return item

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        self.call_later(seconds, wake)
        await fut

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, running every callback that falls due, in deadline order."""
        if seconds < 0:
            raise ValueError(f"cannot move a FakeClock backwards: advance({seconds})")
        target = self._mono + seconds
        while self._queue and self._queue[0].when <= target:
            item = heapq.heappop(self._queue)
            if item.cancelled:
                continue
            self._mono = max(self._mono, item.when)
            item.callback()
        self._mono = target

    def next_deadline(self) -> float | None:
        live = [i.when for i in self._queue if not i.cancelled]
        return min(live) if live else None
