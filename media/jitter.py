"""A small adaptive jitter buffer for 20 ms audio frames. Pure: ``arrival`` times come in, frames go out.

Theory of operation
-------------------
Packets are ``put`` with their RTP sequence number, timestamp and arrival time; the player calls ``pop()``
once per frame period (20 ms) and gets the next payload, or ``None`` for a gap (the caller plays silence).

States: ``buffering`` (prefetch until ``target_frames`` packets are held) and ``playing``. While playing,
``pop`` returns the packet with the expected sequence number; if it is missing but later packets are held, it
is declared lost (counted, ``None``) and playout moves on; if the buffer is empty it is an underrun: back to
``buffering``, and the target grows by one frame for a while.

Sequence numbers are extended past the 16-bit wrap against the last extended number seen. A packet older than
the next one to play is *late* and dropped; one already held is a *duplicate* and dropped; a jump of more than
``RESYNC`` packets (the sender restarted) flushes the buffer.

The target depth adapts between ``min_ms`` and ``max_ms``: ``frame + 3 × jitter`` rounded up to whole frames,
where jitter is the RFC 3550 A.8 estimate from arrival times against RTP timestamps, plus an underrun boost
that decays after 250 frames (5 s) without an underrun. When more than two frames above the target are held
(after a burst or when the target shrank), one extra frame is dropped per pop until the depth is back, so
added latency stays bounded.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from media.rtp import seq_diff

__all__ = ["JitterBuffer", "JitterStats"]

log = logging.getLogger(__name__)
RESYNC = 1000


@dataclass
class JitterStats:
    played: int = 0
    lost: int = 0
    late: int = 0
    duplicates: int = 0
    underruns: int = 0
    trimmed: int = 0


class JitterBuffer:
    """Reorders RTP audio payloads and releases one frame per ``pop()``."""

    def __init__(
        self, *, frame_ms: int = 20, min_ms: int = 20, max_ms: int = 100, clock_rate: int = 8000
    ) -> None:
        if not 0 < min_ms <= max_ms:
            raise ValueError(f"jitter buffer bounds {min_ms}..{max_ms} ms: expected 0 < min <= max")
        self.frame_ms = frame_ms
        self.min_frames = max(1, math.ceil(min_ms / frame_ms))
        self.max_frames = max(self.min_frames, math.ceil(max_ms / frame_ms))
        self.clock_rate = clock_rate
        self.state = "buffering"
        self.stats = JitterStats()
        self._buf: dict[int, bytes | None] = {}
        self._ref: int | None = None  # last extended sequence number seen
        self._next: int | None = None  # extended sequence number to play next
        self._jitter = 0.0  # timestamp units
        self._last_transit: float | None = None
        self._boost = 0
        self._since_underrun = 0

    def _set_state(self, state: str) -> None:
        if state != self.state:
            log.debug("%s -> %s", self.state, state)
            self.state = state

    # --- input -----------------------------------------------------------------------------------------
    def put(self, seq: int, timestamp: int, payload: bytes | None, arrival: float) -> str:
        """Offer one packet; ``payload=None`` marks a non-audio packet (DTMF) that only fills its slot.

        Returns ``"ok"``, ``"late"`` or ``"duplicate"``.
        """
        ext = seq if self._ref is None else self._ref + seq_diff(seq, self._ref & 0xFFFF)
        if self._ref is not None and abs(ext - self._ref) > RESYNC:
            log.debug("sequence jump %d -> %d: flushing", self._ref, ext)
            self._buf.clear()
            self._next = None
            self._last_transit = None
            self._set_state("buffering")
        if self._ref is None or ext > self._ref or abs(ext - self._ref) > RESYNC:
            self._ref = ext
        if self._next is not None and ext < self._next:
            self.stats.late += 1
            return "late"
        if ext in self._buf:
            self.stats.duplicates += 1
            return "duplicate"
        self._buf[ext] = payload
        if payload is not None:
            transit = arrival * self.clock_rate - timestamp
            if self._last_transit is not None:
                d = abs(transit - self._last_transit)
                if d < 2**31:
                    self._jitter += (d - self._jitter) / 16.0
            self._last_transit = transit
        if len(self._buf) > 4 * self.max_frames:  # hard cap: drop the oldest
            oldest = min(self._buf)
            del self._buf[oldest]
            if self._next is not None and self._next <= oldest:
                self._next = oldest + 1
            self.stats.trimmed += 1
        return "ok"

    # --- output ----------------------------------------------------------------------------------------
    @property
    def jitter_ms(self) -> float:
        return self._jitter * 1000.0 / self.clock_rate

    @property
    def target_frames(self) -> int:
        want = math.ceil((self.frame_ms + 3 * self.jitter_ms) / self.frame_ms - 1e-6) + self._boost
        return max(self.min_frames, min(self.max_frames, want))

    @property
    def target_ms(self) -> int:
        return self.target_frames * self.frame_ms

    @property
    def depth(self) -> int:
        """Frames held."""
        return len(self._buf)

    def pop(self) -> bytes | None:
        """The next frame's payload, or None (gap, non-audio slot, buffering): call once per frame period."""
        self._since_underrun += 1
        if self._boost and self._since_underrun > 250:
            self._boost -= 1
            self._since_underrun = 0
        if self.state == "buffering":
            if len(self._buf) < self.target_frames:
                return None
            first = min(self._buf)
            if self._next is not None and first > self._next:
                self.stats.lost += first - self._next  # never arrived while we were starved
            self._next = first if self._next is None else max(self._next, first)
            self._set_state("playing")
        assert self._next is not None
        if not self._buf:
            self.stats.underruns += 1
            self._boost = min(self._boost + 1, self.max_frames)
            self._since_underrun = 0
            self._set_state("buffering")
            return None
        if len(self._buf) > self.target_frames + 2 and self._next in self._buf:
            del self._buf[self._next]  # too deep: skip a frame to cut latency
            self._next += 1
            self.stats.trimmed += 1
        key = self._next
        self._next += 1
        if key in self._buf:
            self.stats.played += 1
            return self._buf.pop(key)
        self.stats.lost += 1
        return None
