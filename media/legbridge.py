"""LegBridge: two phone legs' audio cross-connected (RtpSession ↔ RtpSession), e.g. a technologist who dialled
in and the radiologist who accepted.

How it runs
-----------
Both legs are G.711 :class:`~media.session.RtpSession`\\ s on the same clock. :meth:`LegBridge.start` attaches
each session with ``attach(source=, sink=)``: every 20 ms frame that session A plays out of its jitter buffer
(its ``sink``) is appended to the A→B queue, and session B's 20 ms tick takes the next frame to send from that
queue (its ``source``); the same the other way. No mixing, no resampling (both sides are 8 kHz).

Latency is bounded by design: each queue holds at most ``max_frames`` frames (60 ms by default); a frame that
arrives into a full queue pushes the oldest out (counted as ``dropped``), so a stall on one side never turns
into permanent delay. An empty queue sends silence (counted as ``underruns``) -- the two ticks are not phase
locked, so a few are normal.

Per direction the bridge counts frames and keeps the peak level; a direction is *established* at the first
frame forwarded after the source leg has received at least one RTP packet since the bridge started (so
the instant audio really crosses, not the instant we wired it). The adapter polls :meth:`LegBridge.snapshot`
to turn that into evidence. :meth:`stop` detaches both sessions (idempotent).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np

from comms.clock import Clock
from media import audio
from media.errors import MediaError
from media.session import RtpSession

__all__ = ["DirectionStats", "LegBridge"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DirectionStats:
    """What crossed the bridge in one direction (``name`` is e.g. ``"caller->radiologist"``)."""

    name: str
    frames_in: int
    frames_out: int
    dropped: int
    underruns: int
    peak_dbfs: float
    established_mono: float | None

    @property
    def established(self) -> bool:
        return self.established_mono is not None


class _Direction:
    def __init__(self, name: str, source: RtpSession, clock: Clock, max_frames: int) -> None:
        self.name = name
        self.source = source
        self.clock = clock
        self.queue: deque[audio.Samples] = deque()
        self.max_frames = max_frames
        self.frames_in = 0
        self.frames_out = 0
        self.dropped = 0
        self.underruns = 0
        self.peak = 0
        self.rx_at_start = source.stats.packets_received
        self.established_mono: float | None = None

    def push(self, samples: audio.Samples) -> None:
        """Sink of the source session (its 20 ms tick): keep the frame for the other side."""
        if len(self.queue) >= self.max_frames:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(samples)
        self.frames_in += 1
        if samples.size:
            self.peak = max(self.peak, int(np.abs(samples.astype(np.int32)).max()))
        if self.established_mono is None and self.source.stats.packets_received > self.rx_at_start:
            self.established_mono = self.clock.monotonic()

    def pop(self) -> audio.Samples | None:
        """Source of the other session (its 20 ms tick): the next frame, or None (silence) when empty."""
        if not self.queue:
            self.underruns += 1
            return None
        self.frames_out += 1
        return self.queue.popleft()

    def stats(self) -> DirectionStats:
        peak_dbfs = 20 * float(np.log10(self.peak / 32768.0)) if self.peak > 0 else audio.FLOOR_DBFS
        return DirectionStats(
            self.name,
            self.frames_in,
            self.frames_out,
            self.dropped,
            self.underruns,
            round(peak_dbfs, 1),
            self.established_mono,
        )


class LegBridge:
    """Cross-connects the audio of two RTP sessions: ``a``'s received audio is sent on ``b`` and vice versa."""

    def __init__(
        self,
        clock: Clock,
        a: RtpSession,
        b: RtpSession,
        *,
        names: tuple[str, str] = ("a", "b"),
        max_frames: int = 3,
    ) -> None:
        if a is b:
            raise MediaError("cannot bridge an RTP session to itself: expected two different legs")
        if max_frames < 1:
            raise MediaError(f"max_frames={max_frames} is not valid: expected at least 1 frame of buffer")
        self._clock = clock
        self._a, self._b = a, b
        self._names = names
        self._max_frames = max_frames
        self._ab: _Direction | None = None
        self._ba: _Direction | None = None
        self.state = "idle"
        self.started_mono: float | None = None

    def _set_state(self, state: str) -> None:
        if state != self.state:
            log.info("leg bridge %s<->%s: %s -> %s", *self._names, self.state, state)
            self.state = state

    def start(self) -> None:
        """Attach both sessions; audio flows from their next tick on."""
        if self.state != "idle":
            raise MediaError(f"cannot start a leg bridge in state {self.state}: expected idle")
        for side, session in zip(self._names, (self._a, self._b), strict=True):
            if session.state != "running":
                raise MediaError(
                    f"cannot bridge leg {side!r}: its RTP session is {session.state}, expected running"
                )
        a_name, b_name = self._names
        self._ab = ab = _Direction(f"{a_name}->{b_name}", self._a, self._clock, self._max_frames)
        self._ba = ba = _Direction(f"{b_name}->{a_name}", self._b, self._clock, self._max_frames)
        self._a.attach(source=ba.pop, sink=ab.push)
        self._b.attach(source=ab.pop, sink=ba.push)
        self.started_mono = self._clock.monotonic()
        self._set_state("bridged")

    def stop(self) -> None:
        """Detach both sessions (idempotent); the counters stay readable."""
        if self.state != "bridged":
            return
        for session in (self._a, self._b):
            session.attach()
        self._set_state("stopped")

    def snapshot(self) -> tuple[DirectionStats, DirectionStats]:
        """Counters of (a->b, b->a)."""
        if self._ab is None or self._ba is None:
            raise MediaError(f"cannot read a leg bridge in state {self.state}: expected started")
        return self._ab.stats(), self._ba.stats()

    @property
    def both_established(self) -> bool:
        return self.state != "idle" and all(d.established for d in self.snapshot())
