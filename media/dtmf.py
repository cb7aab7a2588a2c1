"""RFC 4733 telephone-events (DTMF): payload codec, sender plan, receiver. Pure: no I/O.

Theory of operation
-------------------
Payload (§2.3): event (8 bits), E (end), R, volume (6 bits, -dBm0), duration (16 bits, timestamp units).
Events 0-15 are the DTMF keys ``0-9 * # A-D`` (§3.2).

Sending (:func:`plan_digit`): one event is a run of packets that all carry the timestamp of the event start;
the first has the RTP marker bit set, each following packet (one per packet time) carries the duration so far,
and the end packet is sent three times with the final duration (§2.5.1.4).

Receiving (:class:`DtmfReceiver`): a digit is reported on the **first packet of a new event**, whatever its
position in the run, so losing the first packets (or all end packets) still reports the digit once. A new
event is a timestamp not seen among the recent events; repeats and the three end packets carry the same
timestamp and are dropped. A packet with a new timestamp, the same event code as the previous unfinished event
and no marker is a long-event continuation segment (§2.5.1.3) and is not a new digit. We act on the start
rather than the end because a caller pressing and holding a key expects the prompt to react at once, and a
lost end packet must not lose a digit.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from media.errors import MediaError

__all__ = [
    "DIGITS",
    "DtmfPayload",
    "DtmfReceiver",
    "PlannedPacket",
    "digit_to_event",
    "event_to_digit",
    "plan_digit",
]

DIGITS = "0123456789*#ABCD"
_PAYLOAD = struct.Struct("!BBH")


def digit_to_event(digit: str) -> int:
    """``'0'..'9', '*', '#', 'A'..'D'`` -> event code 0-15."""
    d = digit.upper()
    if len(d) != 1 or d not in DIGITS:
        raise MediaError(f"cannot send DTMF digit {digit!r}: expected one of {DIGITS}")
    return DIGITS.index(d)


def event_to_digit(event: int) -> str | None:
    """Event code -> digit, or None for non-DTMF events (flash, tones...)."""
    return DIGITS[event] if 0 <= event < len(DIGITS) else None


@dataclass(frozen=True)
class DtmfPayload:
    event: int
    end: bool
    volume: int
    duration: int

    def encode(self) -> bytes:
        return _PAYLOAD.pack(
            self.event, (0x80 if self.end else 0) | (self.volume & 0x3F), min(self.duration, 0xFFFF)
        )

    @classmethod
    def decode(cls, data: bytes) -> DtmfPayload:
        if len(data) < 4:
            raise MediaError(f"telephone-event payload of {len(data)} bytes: expected at least 4")
        event, flags, duration = _PAYLOAD.unpack_from(data)
        return cls(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)


@dataclass(frozen=True)
class PlannedPacket:
    """One packet of an event; all share the event's start timestamp."""

    payload: bytes
    marker: bool
    end: bool


def plan_digit(
    digit: str, duration_ms: int = 160, *, packet_ms: int = 20, volume: int = 10
) -> list[PlannedPacket]:
    """The packets of one digit: growing duration, marker on the first, the end packet three times."""
    event = digit_to_event(digit)
    if duration_ms <= 0:
        raise MediaError(f"cannot send DTMF for {duration_ms} ms: expected a positive duration")
    step = packet_ms * 8
    count = max(1, -(-duration_ms // packet_ms))
    out = [
        PlannedPacket(DtmfPayload(event, False, volume, i * step).encode(), marker=(i == 1), end=False)
        for i in range(1, count + 1)
    ]
    final = DtmfPayload(event, True, volume, count * step).encode()
    out += [PlannedPacket(final, marker=False, end=True)] * 3
    return out


class DtmfReceiver:
    """Turns a stream of telephone-event packets into digits, once per event."""

    def __init__(self, memory: int = 16) -> None:
        self._seen: deque[int] = deque(maxlen=memory)
        self._last_event: int | None = None
        self._last_ended = True

    def receive(self, payload: bytes, timestamp: int, marker: bool) -> str | None:
        """Feed one packet; returns the digit when this packet starts a new DTMF event, else None."""
        info = DtmfPayload.decode(payload)
        if timestamp in self._seen:
            if timestamp == self._seen[-1] and info.end:
                self._last_ended = True
            return None
        continuation = not marker and not self._last_ended and info.event == self._last_event
        self._seen.append(timestamp)
        self._last_event = info.event
        self._last_ended = info.end
        if continuation:
            return None
        return event_to_digit(info.event)
