"""Pacer: one 20 ms tick shared by every audio bridge and bridged RTP session on a clock.

Theory of operation
-------------------
Each 20 ms frame used to be a timer per RTP session and another per bridge, every one at its own phase: with
50 bridges, 5,000 timer callbacks and as many event-loop wake-ups a second. A :class:`Pacer` keeps one timer
for all of them, armed at ``t0 + k × 20 ms`` from the one :class:`~comms.clock.Clock` (so it does not drift),
and on each frame calls its members in *stage* order:

1. ``RECEIVE``: RTP sessions play one frame out of their jitter buffers (into the bridges' input queues);
2. ``MIX``: bridges mix (into their output queues and WebRTC tracks);
3. ``SEND``: RTP sessions send the frame the mix just produced.

So a frame received from a phone is in the mix in the same tick, and the mix is on the wire in the same tick:
the gateway adds no tick phase of its own between a phone leg and the mixer. If the loop stalls, up to
``max_catch_up - 1`` missed frames are run back to back; a longer stall is skipped (members see the frame
index jump, RTP timestamps keep following real time), never sent as a burst.

A pacer with no members holds no timer; the first member to join an idle pacer starts it at once. A member's
exception is logged and does not stop the others. :meth:`Pacer.of` gives the one pacer of a clock.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from enum import IntEnum
from typing import ClassVar

from comms.clock import Clock, TimerHandle

__all__ = ["FRAME_S", "Pacer", "Stage"]

log = logging.getLogger(__name__)

FRAME_S = 0.020
MAX_CATCH_UP = 5

FrameCallback = Callable[[int, float], None]
"""Called with the pacer's frame index and the tick's ``now`` (monotonic seconds)."""


class Stage(IntEnum):
    RECEIVE = 0
    MIX = 1
    SEND = 2


class Pacer:
    """One clock-driven 20 ms tick calling its members in :class:`Stage` order."""

    _by_clock: ClassVar[weakref.WeakKeyDictionary[Clock, tuple[object, Pacer]]] = weakref.WeakKeyDictionary()

    def __init__(self, clock: Clock, *, period: float = FRAME_S, max_catch_up: int = MAX_CATCH_UP) -> None:
        self.clock = clock
        self.period = period
        self.max_catch_up = max_catch_up
        self._members: dict[int, tuple[Stage, FrameCallback]] = {}
        self._order: list[FrameCallback] = []
        self._next_id = 0
        self._timer: TimerHandle | None = None
        self._t0 = 0.0
        self._k = 0  # next frame index to run
        self.ticks = 0
        self.skipped = 0

    @classmethod
    def of(cls, clock: Clock) -> Pacer:
        """The shared pacer of ``clock`` on the running event loop (made on first use).

        Keyed by the loop too: a clock that outlives its loop (a test's) must not hand out a pacer whose timer
        sits on a closed loop.
        """
        try:
            loop: object = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        known = cls._by_clock.get(clock)
        if known is not None and known[0] is loop:
            return known[1]
        pacer = cls(clock)
        cls._by_clock[clock] = (loop, pacer)
        return pacer

    @property
    def members(self) -> int:
        return len(self._members)

    @property
    def frame(self) -> int:
        """The index of the next frame to run."""
        return self._k

    def join(self, stage: Stage, callback: FrameCallback) -> Callable[[], None]:
        """Call ``callback(frame, now)`` every frame at ``stage``; returns the function that leaves."""
        member = self._next_id
        self._next_id += 1
        self._members[member] = (stage, callback)
        self._reorder()
        if self._timer is None:
            self._t0 = self.clock.monotonic()
            self._k = 0
            self._timer = self.clock.call_later(0.0, self._tick)

        def leave() -> None:
            if self._members.pop(member, None) is not None:
                self._reorder()
                if not self._members and self._timer is not None:
                    self._timer.cancel()
                    self._timer = None

        return leave

    def _reorder(self) -> None:
        # stable: members of one stage run in the order they joined
        self._order = [cb for _, (_, cb) in sorted(self._members.items(), key=lambda m: (m[1][0], m[0]))]

    def _tick(self) -> None:
        self._timer = None
        if not self._members:
            return
        now = self.clock.monotonic()
        due = int((now - self._t0) / self.period + 1e-6)  # the last frame index that is due
        if due - self._k >= self.max_catch_up:
            skipped = due - self._k
            self.skipped += skipped
            log.info("pacer stalled %.0f ms: skipping %d frames", skipped * self.period * 1000, skipped)
            self._k = due
        while self._k <= due:
            k = self._k
            self._k += 1
            self.ticks += 1
            for callback in self._order:
                try:
                    callback(k, now)
                except Exception:
                    # a timer has no caller to raise to: log loudly, keep every other member paced
                    log.exception("pacer member %r failed on frame %d", callback, k)
        if self._members:
            self._timer = self.clock.call_later(self._t0 + self._k * self.period - now, self._tick)
