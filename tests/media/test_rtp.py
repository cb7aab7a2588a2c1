"""RTP packet codec and RFC 3550 reception statistics."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.errors import RtpParseError
from media.rtp import ReceptionStats, RtpPacket, RtpSender, seq_diff


@given(
    pt=st.integers(0, 127),
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=200),
    marker=st.booleans(),
    csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    ext=st.none()
    | st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=12).map(lambda b: b + bytes(-len(b) % 4))),
    padding=st.integers(0, 20),
)
def test_parse_serialize_round_trip(
    pt: int,
    seq: int,
    ts: int,
    ssrc: int,
    payload: bytes,
    marker: bool,
    csrc: tuple[int, ...],
    ext: tuple[int, bytes] | None,
    padding: int,
) -> None:
    pkt = RtpPacket(pt, seq, ts, ssrc, payload, marker, csrc, ext, padding)
    assert RtpPacket.parse(pkt.serialize()) == pkt


def test_header_bytes_match_rfc3550_layout() -> None:
    data = RtpPacket(0, 0x1234, 0xDEADBEEF, 0x01020304, b"\xff" * 160, marker=True).serialize()
    assert data[:12] == bytes.fromhex("8080 1234 deadbeef 01020304")
    assert len(data) == 172


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\x80\x00", "expected at least 12"),
        (bytes([0x40]) + bytes(11), "version 1"),
        (bytes([0x82]) + bytes(11), "too short for 2 CSRCs"),
        (bytes([0x90]) + bytes(11), "no extension header"),
        (bytes([0x90]) + bytes(11) + b"\x00\x00\x00\x05", "runs past"),
        (bytes([0xA0]) + bytes(11) + b"\x00", "padding count 0"),
        (bytes([0xA0]) + bytes(11) + b"\x09", "padding count 9"),
    ],
)
def test_bad_packets_are_named(data: bytes, fragment: str) -> None:
    with pytest.raises(RtpParseError, match=fragment):
        RtpPacket.parse(data)


def test_seq_diff_wraps() -> None:
    assert seq_diff(2, 65534) == 4
    assert seq_diff(65534, 2) == -4
    assert seq_diff(100, 100) == 0


def test_sender_numbers_packets() -> None:
    sender = RtpSender(random.Random(1))
    first = RtpPacket.parse(sender.packet(0, 0, b"a" * 160, marker=True))
    second = RtpPacket.parse(sender.packet(0, 160, b"b" * 160))
    assert second.sequence_number == (first.sequence_number + 1) & 0xFFFF
    assert (second.timestamp - first.timestamp) & 0xFFFFFFFF == 160
    assert first.ssrc == second.ssrc == sender.ssrc
    assert first.marker
    assert not second.marker
    assert (sender.packets, sender.octets) == (2, 320)


def _feed(
    stats: ReceptionStats, seqs: list[int], *, ssrc: int = 7, jitter: list[float] | None = None
) -> None:
    for i, seq in enumerate(seqs):
        arrival = i * 0.02 + (jitter[i] if jitter else 0.0)
        stats.update(RtpPacket(0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc, bytes(160)), 100.0 + arrival)


def test_loss_counted_across_sequence_wrap() -> None:
    stats = ReceptionStats()
    seqs = [s for s in range(65530, 65546) if s not in (65534, 65537)]
    _feed(stats, seqs)
    assert stats.expected == 16
    assert stats.received == 14
    assert stats.lost == 2
    assert stats.extended_max == 65545


def test_reordered_and_duplicated_packets_do_not_count_as_loss() -> None:
    stats = ReceptionStats()
    _feed(stats, [10, 12, 11, 13, 13, 14])
    assert stats.lost == 0
    assert stats.expected == 5


def test_jitter_zero_for_perfect_pacing_and_grows_with_variation() -> None:
    steady = ReceptionStats()
    _feed(steady, list(range(100)))
    assert steady.jitter_ms == pytest.approx(0.0, abs=1e-6)
    noisy = ReceptionStats()
    rng = random.Random(3)
    _feed(noisy, list(range(200)), jitter=[rng.uniform(0, 0.03) for _ in range(200)])
    assert 4.0 < noisy.jitter_ms < 20.0


def test_new_ssrc_restarts_statistics() -> None:
    stats = ReceptionStats()
    _feed(stats, [1, 2, 5])
    assert stats.lost == 2
    _feed(stats, [900, 901], ssrc=8)
    assert (stats.ssrc, stats.lost, stats.received) == (8, 0, 2)


def test_big_jump_resyncs_after_two_sequential_packets() -> None:
    stats = ReceptionStats()
    _feed(stats, [1, 2, 3])
    assert not stats.update(RtpPacket(0, 20000, 0, 7, b""), 1.0)
    assert stats.update(RtpPacket(0, 20001, 160, 7, b""), 1.02)
    assert stats.expected == 1
    assert stats.received == 1


@given(st.binary(max_size=64))
def test_parser_raises_only_rtp_parse_error(data: bytes) -> None:
    try:
        pkt = RtpPacket.parse(data)
    except RtpParseError:
        return
    assert len(data) >= 12
    assert len(pkt.payload) <= len(data) - 12
