"""RTP packets and reception statistics (RFC 3550). Pure: no I/O, ``now`` comes in.

Theory of operation
-------------------
:class:`RtpPacket` parses and renders the fixed header (§5.1), CSRCs, a header extension (kept opaque) and
padding.

:class:`ReceptionStats` follows the sample code of RFC 3550 Appendix A: A.1 keeps the extended highest
sequence number (16-bit wrap counted in ``cycles``; a jump of more than ``MAX_DROPOUT`` resynchronises after
two sequential packets), A.3 gives ``lost = expected - received`` (clamped at 0: duplicates may make it
negative) and A.8 the interarrival jitter ``J += (|D| - J) / 16`` in timestamp units. Jitter is only fed with
audio packets: RFC 4733 packets repeat one timestamp for a whole event and would read as huge jitter. A new
SSRC starts the statistics of a new source (the totals of the session are kept by the adapter).

:class:`RtpSender` numbers outgoing packets: a random SSRC, random initial sequence number and timestamp
(§5.1), sequence +1 per packet, timestamp supplied by the caller (it advances with the sampling clock, not per
packet).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from media.errors import RtpParseError

__all__ = ["ReceptionStats", "RtpPacket", "RtpSender", "seq_diff"]

_HEADER = struct.Struct("!BBHII")
MAX_DROPOUT = 3000
MAX_MISORDER = 100
RTP_SEQ_MOD = 1 << 16


def seq_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` between two 16-bit sequence numbers, in [-32768, 32767]."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


@dataclass(frozen=True)
class RtpPacket:
    """One RTP packet (version 2)."""

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension: tuple[int, bytes] | None = None  # (profile-defined 16 bits, data multiple of 4 bytes)
    padding: int = 0

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse a datagram; raises :class:`RtpParseError` naming what is wrong."""
        if len(data) < 12:
            raise RtpParseError(f"RTP packet of {len(data)} bytes: expected at least 12")
        b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data)
        version = b0 >> 6
        if version != 2:
            raise RtpParseError(f"RTP version {version}: expected 2")
        cc = b0 & 0x0F
        offset = 12 + 4 * cc
        if len(data) < offset:
            raise RtpParseError(f"RTP packet of {len(data)} bytes too short for {cc} CSRCs")
        csrc = struct.unpack_from(f"!{cc}I", data, 12) if cc else ()
        extension = None
        if b0 & 0x10:
            if len(data) < offset + 4:
                raise RtpParseError("RTP header extension flag set but no extension header")
            profile, length = struct.unpack_from("!HH", data, offset)
            offset += 4
            if len(data) < offset + 4 * length:
                raise RtpParseError(f"RTP header extension of {length} words runs past the packet end")
            extension = (profile, bytes(data[offset : offset + 4 * length]))
            offset += 4 * length
        end = len(data)
        padding = 0
        if b0 & 0x20:
            padding = data[-1]
            if padding == 0 or offset + padding > end:
                raise RtpParseError(f"RTP padding count {padding} invalid for a {end}-byte packet")
            end -= padding
        return cls(
            payload_type=b1 & 0x7F,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc,
            payload=bytes(data[offset:end]),
            marker=bool(b1 & 0x80),
            csrc=tuple(csrc),
            extension=extension,
            padding=padding,
        )

    def serialize(self) -> bytes:
        """Render the packet."""
        b0 = 0x80 | len(self.csrc)
        if self.padding:
            b0 |= 0x20
        if self.extension is not None:
            b0 |= 0x10
        b1 = (0x80 if self.marker else 0) | (self.payload_type & 0x7F)
        out = bytearray(
            _HEADER.pack(b0, b1, self.sequence_number & 0xFFFF, self.timestamp & 0xFFFFFFFF, self.ssrc)
        )
        for c in self.csrc:
            out += struct.pack("!I", c)
        if self.extension is not None:
            profile, data = self.extension
            if len(data) % 4:
                raise ValueError(f"RTP extension data of {len(data)} bytes: expected a multiple of 4")
            out += struct.pack("!HH", profile, len(data) // 4) + data
        out += self.payload
        if self.padding:
            out += bytes(self.padding - 1) + bytes([self.padding])
        return bytes(out)


class RtpSender:
    """Numbers outgoing packets of one SSRC."""

    def __init__(self, rng: random.Random | None = None) -> None:
        r = rng or random.SystemRandom()
        self.ssrc = r.getrandbits(32)
        self._seq = r.getrandbits(16)
        self.timestamp_base = r.getrandbits(32)
        self.packets = 0
        self.octets = 0

    def packet(
        self, payload_type: int, timestamp_offset: int, payload: bytes, *, marker: bool = False
    ) -> bytes:
        """Render the next packet; ``timestamp_offset`` counts samples since the stream began."""
        pkt = RtpPacket(
            payload_type=payload_type,
            sequence_number=self._seq,
            timestamp=(self.timestamp_base + timestamp_offset) & 0xFFFFFFFF,
            ssrc=self.ssrc,
            payload=payload,
            marker=marker,
        )
        self._seq = (self._seq + 1) & 0xFFFF
        self.packets += 1
        self.octets += len(payload)
        return pkt.serialize()


class ReceptionStats:
    """RFC 3550 A.1/A.3/A.8 statistics for the current source."""

    def __init__(self, clock_rate: int = 8000) -> None:
        self.clock_rate = clock_rate
        self.ssrc: int | None = None
        self.received = 0
        self.octets = 0
        self._base_seq = 0
        self._max_seq = 0
        self._cycles = 0
        self._bad_seq = RTP_SEQ_MOD + 1
        self._jitter = 0.0
        self._last_transit: float | None = None

    def _init_seq(self, seq: int) -> None:
        self._base_seq = seq
        self._max_seq = seq
        self._bad_seq = RTP_SEQ_MOD + 1
        self._cycles = 0
        self.received = 0

    def update(self, packet: RtpPacket, now: float, *, audio: bool = True) -> bool:
        """Account for one packet arriving at ``now`` (monotonic s); False when judged invalid."""
        seq = packet.sequence_number
        if packet.ssrc != self.ssrc:
            self.ssrc = packet.ssrc
            self._init_seq(seq)
            self._jitter = 0.0
            self._last_transit = None
        else:
            udelta = (seq - self._max_seq) & 0xFFFF
            if udelta < MAX_DROPOUT:
                if seq < self._max_seq:
                    self._cycles += RTP_SEQ_MOD
                self._max_seq = seq
            elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
                if seq == self._bad_seq:
                    self._init_seq(seq)  # two sequential packets after a big jump: the sender restarted
                else:
                    self._bad_seq = (seq + 1) & 0xFFFF
                    return False
            # else: duplicate or reordered packet, counted below
        self.received += 1
        self.octets += len(packet.payload)
        if audio:
            arrival = now * self.clock_rate
            transit = arrival - packet.timestamp
            if self._last_transit is not None:
                d = abs(transit - self._last_transit)
                if d < 2**31:  # ignore timestamp wrap
                    self._jitter += (d - self._jitter) / 16.0
            self._last_transit = transit
        return True

    @property
    def extended_max(self) -> int:
        return self._cycles + self._max_seq

    @property
    def expected(self) -> int:
        return 0 if self.ssrc is None else self.extended_max - self._base_seq + 1

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.received)

    @property
    def jitter_ms(self) -> float:
        return self._jitter * 1000.0 / self.clock_rate
