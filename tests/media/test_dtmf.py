"""RFC 4733 codec, sender plan and receiver; SIPp's captured RFC 2833 packets as an independent peer."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.dtmf import DIGITS, DtmfPayload, DtmfReceiver, digit_to_event, event_to_digit, plan_digit
from media.errors import MediaError
from media.rtp import RtpPacket


def test_digit_mapping_covers_0_9_star_pound_a_d() -> None:
    assert [digit_to_event(d) for d in "0123456789*#ABCD"] == list(range(16))
    assert digit_to_event("a") == 12
    assert [event_to_digit(e) for e in range(16)] == list(DIGITS)
    assert event_to_digit(16) is None  # flash: not a digit
    with pytest.raises(MediaError, match="'E'"):
        digit_to_event("E")
    with pytest.raises(MediaError, match="'12'"):
        digit_to_event("12")


def test_payload_round_trip_and_layout() -> None:
    p = DtmfPayload(event=11, end=True, volume=10, duration=1280)
    assert p.encode() == bytes([11, 0x8A, 0x05, 0x00])
    assert DtmfPayload.decode(p.encode()) == p
    with pytest.raises(MediaError, match="3 bytes"):
        DtmfPayload.decode(b"\x01\x02\x03")


def test_plan_has_marker_growing_duration_and_three_end_packets() -> None:
    plan = plan_digit("7", 100)
    payloads = [DtmfPayload.decode(p.payload) for p in plan]
    assert [p.marker for p in plan] == [True] + [False] * 7
    assert [p.duration for p in payloads] == [160, 320, 480, 640, 800, 800, 800, 800]
    assert [p.end for p in payloads] == [False] * 5 + [True] * 3
    assert {p.event for p in payloads} == {7}
    with pytest.raises(MediaError, match="0 ms"):
        plan_digit("1", 0)


def _events(digit: str, timestamp: int, ms: int = 100) -> list[tuple[bytes, int, bool]]:
    return [(p.payload, timestamp, p.marker) for p in plan_digit(digit, ms)]


def test_receiver_reports_once_per_event() -> None:
    rx = DtmfReceiver()
    got = [rx.receive(*pkt) for pkt in _events("5", 1000) + _events("5", 2600) + _events("#", 4200)]
    assert [d for d in got if d] == ["5", "5", "#"]


def test_receiver_tolerates_loss_of_first_packets_and_of_end_packets() -> None:
    rx = DtmfReceiver()
    first_lost = _events("3", 1000)[3:]
    ends_lost = _events("9", 5000)[:-3]
    got = [rx.receive(*pkt) for pkt in first_lost + ends_lost + _events("9", 9000)]
    assert [d for d in got if d] == ["3", "9", "9"]


def test_retransmitted_end_after_next_event_is_ignored() -> None:
    rx = DtmfReceiver()
    a, b = _events("1", 1000), _events("2", 3000)
    got = [rx.receive(*pkt) for pkt in [*a, *b[:2], a[-1], *b[2:]]]
    assert [d for d in got if d] == ["1", "2"]


def test_long_event_continuation_segment_is_not_a_new_digit() -> None:
    rx = DtmfReceiver()
    seg1 = [(DtmfPayload(4, False, 10, 65535).encode(), 1000, True)]
    seg2 = [(DtmfPayload(4, False, 10, 800).encode(), 1000 + 65535, False)]
    end = [(DtmfPayload(4, True, 10, 1600).encode(), 1000 + 65535, False)] * 3
    got = [rx.receive(*pkt) for pkt in seg1 + seg2 + end]
    assert [d for d in got if d] == ["4"]


def test_non_dtmf_event_is_not_a_digit() -> None:
    rx = DtmfReceiver()
    assert rx.receive(DtmfPayload(16, False, 10, 160).encode(), 1, True) is None


PCAPS = [(str(d), f"dtmf_2833_{d}.pcap") for d in range(10)] + [
    ("*", "dtmf_2833_star.pcap"),
    ("#", "dtmf_2833_pound.pcap"),
]


@pytest.mark.parametrize(("digit", "name"), PCAPS)
def test_sipp_captures_decode_to_their_digit(
    digit: str, name: str, sipp_capture: Callable[[str], list[tuple[float, bytes]]]
) -> None:
    rx = DtmfReceiver()
    got = []
    for _, data in sipp_capture(name):
        pkt = RtpPacket.parse(data)
        assert pkt.payload_type == 101
        d = rx.receive(pkt.payload, pkt.timestamp, pkt.marker)
        if d:
            got.append(d)
    assert got == [digit]


@given(st.lists(st.tuples(st.binary(min_size=4, max_size=8), st.integers(0, 50), st.booleans()), max_size=60))
def test_receiver_survives_any_packets_and_never_repeats_a_timestamp(
    packets: list[tuple[bytes, int, bool]],
) -> None:
    rx = DtmfReceiver(memory=64)
    reported: list[int] = []
    for payload, ts, marker in packets:
        digit = rx.receive(payload, ts, marker)
        if digit is not None:
            assert digit in DIGITS
            reported.append(ts)
    assert len(reported) == len(set(reported))
