"""RtpSession on loopback: two real sessions, a raw UDP peer, SIPp's captured DTMF, FakeClock pacing."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from comms.clock import FakeClock, SystemClock
from media.rtp import RtpPacket
from media.sdp import NegotiatedMedia, answer_offer, make_offer, negotiated_from_answer
from media.session import (
    DtmfReceived,
    MediaError,
    MediaEvent,
    MediaInactive,
    MediaRestored,
    MediaStarted,
    RtpSession,
)

E = TypeVar("E")


async def next_event(session: RtpSession, kind: type[E], within: float = 2.0) -> E:
    """The next event of ``kind`` (others are skipped)."""
    async with asyncio.timeout(within):
        while True:
            event = await session.events.get()
            if isinstance(event, kind):
                return event


def drain(session: RtpSession) -> list[MediaEvent]:
    out = []
    while not session.events.empty():
        out.append(session.events.get_nowait())
    return out


async def wait_for(predicate: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class Pair:
    def __init__(self, a: RtpSession, b: RtpSession, ma: NegotiatedMedia, mb: NegotiatedMedia) -> None:
        self.a, self.b, self.ma, self.mb = a, b, ma, mb


async def open_pair(clock: Any, *, inactivity: float = 5.0, codec_offer: str | None = None) -> Pair:
    a = await RtpSession.open(clock, "127.0.0.1", inactivity_timeout=inactivity)
    b = await RtpSession.open(clock, "127.0.0.1", inactivity_timeout=inactivity)
    offer = make_offer("127.0.0.1", a.local_port, session_id=1)
    if codec_offer is not None:
        offer = offer.replace(" 0 8 101", f" {codec_offer} 101")
    answer, mb = answer_offer(offer, "127.0.0.1", b.local_port, session_id=2)
    ma = negotiated_from_answer(offer, answer)
    return Pair(a, b, ma, mb)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    p = await open_pair(SystemClock(), inactivity=0.3)
    p.a.start(p.ma)
    p.b.start(p.mb)
    yield p
    await p.a.close()
    await p.b.close()


async def test_media_starts_and_silence_flows(pair: Pair) -> None:
    started = await next_event(pair.b, MediaStarted)
    assert started.utc.tzinfo is not None
    await asyncio.sleep(0.3)
    assert pair.b.energy_dbfs(0.2) == -120.0
    assert pair.a.stats.packets_sent >= 10
    assert pair.b.stats.packets_received >= 10
    assert pair.b.stats.bytes_received == 160 * pair.b.stats.packets_received
    assert pair.b.stats.lost == 0


@pytest.mark.parametrize("codec", ["0", "8"])
async def test_playing_a_prompt_raises_energy_on_the_other_side(
    tone: Callable[..., Path], tmp_path: Path, codec: str
) -> None:
    p = await open_pair(SystemClock(), codec_offer=codec)
    try:
        p.a.start(p.ma)
        p.b.start(p.mb)
        p.b.start_recording(tmp_path / "heard.wav")
        await next_event(p.b, MediaStarted)
        assert p.b.energy_dbfs(0.2) < -60  # A-law silence decodes to ±8: -72 dBFS
        started = time.monotonic()
        play = asyncio.create_task(p.a.play(tone(seconds=0.6, freq=1000, amplitude=0.5)))
        await wait_for(lambda: p.b.energy_dbfs(0.1) > -15)
        await play
        elapsed = time.monotonic() - started
        assert 0.45 <= elapsed < 1.5, elapsed  # 30 frames; a stalled loop may catch up by <= 4 frames
        await wait_for(lambda: p.b.energy_dbfs(0.1) < -60)
        p.b.stop_recording()
    finally:
        await p.a.close()
        await p.b.close()
    with wave.open(str(tmp_path / "heard.wav")) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        heard = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    loud = heard[np.abs(heard) > 1000]
    assert loud.size >= 3500  # a 1 kHz sine sampled at 8 kHz is 0 every 4th sample: 3600 of 4800
    spectrum = np.abs(np.fft.rfft(heard.astype(float)))
    assert np.argmax(spectrum) * 8000 / heard.size == pytest.approx(1000, abs=10)


async def test_dtmf_both_ways(pair: Pair) -> None:
    await pair.a.send_dtmf("5")
    assert (await next_event(pair.b, DtmfReceived)).digit == "5"
    for digit in "#9A*":
        await pair.b.send_dtmf(digit, duration_ms=60)
    got = [(await next_event(pair.a, DtmfReceived)).digit for _ in range(4)]
    assert got == ["#", "9", "A", "*"]
    await asyncio.sleep(0.1)
    assert not [e for e in drain(pair.a) + drain(pair.b) if isinstance(e, DtmfReceived)]  # exactly once each


async def test_dtmf_refused_without_telephone_event_or_before_start() -> None:
    clock = SystemClock()
    s = await RtpSession.open(clock, "127.0.0.1")
    try:
        with pytest.raises(MediaError, match="state idle"):
            await s.send_dtmf("1")
        s.start(NegotiatedMedia("127.0.0.1", 9, "PCMU", 0, None, 20, "sendrecv"))
        with pytest.raises(MediaError, match="did not negotiate telephone-event"):
            await s.send_dtmf("1")
        with pytest.raises(MediaError, match="expected idle"):
            s.start(NegotiatedMedia("127.0.0.1", 9, "PCMU", 0, None, 20, "sendrecv"))
    finally:
        await s.close()


async def test_inactivity_and_restore(pair: Pair) -> None:
    await next_event(pair.b, MediaStarted)
    pair.a.update(dataclasses.replace(pair.ma, direction="recvonly"))  # a stops sending without telling b
    inactive = await next_event(pair.b, MediaInactive)
    assert inactive.seconds >= 0.3
    pair.a.update(pair.ma)
    await next_event(pair.b, MediaRestored)


async def test_hold_and_unhold_by_reinvite(pair: Pair) -> None:
    await next_event(pair.a, MediaStarted)
    # b puts a on hold: re-offer sendonly, a answers recvonly
    hold = make_offer("127.0.0.1", pair.b.local_port, session_id=2, version=2, direction="sendonly")
    answer, a_media = answer_offer(hold, "127.0.0.1", pair.a.local_port, session_id=1, version=2)
    b_media = negotiated_from_answer(hold, answer)
    assert (a_media.direction, b_media.direction) == ("recvonly", "sendonly")
    pair.a.update(a_media)
    pair.b.update(b_media)
    await asyncio.sleep(0.05)
    sent_a, sent_b = pair.a.stats.packets_sent, pair.b.stats.packets_sent
    await asyncio.sleep(0.5)  # longer than the 0.3 s inactivity timeout
    assert pair.a.stats.packets_sent == sent_a  # held party is silent
    assert pair.b.stats.packets_sent > sent_b + 15
    assert not [e for e in drain(pair.b) if isinstance(e, MediaInactive)]  # b expects nothing while holding
    with pytest.raises(MediaError, match="recvonly"):
        await pair.a.send_dtmf("1")
    resume = make_offer("127.0.0.1", pair.b.local_port, session_id=2, version=3)
    answer, a_media = answer_offer(resume, "127.0.0.1", pair.a.local_port, session_id=1, version=3)
    pair.a.update(a_media)
    pair.b.update(negotiated_from_answer(resume, answer))
    await wait_for(lambda: pair.a.stats.packets_sent > sent_a + 10)
    await pair.a.send_dtmf("2", duration_ms=40)
    assert (await next_event(pair.b, DtmfReceived)).digit == "2"


async def test_symmetric_rtp_latches_to_the_packet_source() -> None:
    clock = SystemClock()
    p = await open_pair(clock)
    # b was told a wrong port for a (as behind a NAT): it must answer to where a's packets come from
    wrong = dataclasses.replace(p.mb, remote_port=9)
    try:
        p.a.start(p.ma)
        p.b.start(wrong)
        await next_event(p.a, MediaStarted)
        assert p.b.remote == ("127.0.0.1", p.a.local_port)
        await wait_for(lambda: p.a.stats.packets_received > 10)
    finally:
        await p.a.close()
        await p.b.close()


class Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[tuple[RtpPacket, tuple[str, int]]] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets.append((RtpPacket.parse(data), addr))


async def raw_peer() -> tuple[asyncio.DatagramTransport, Collector, int]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", 0))
    return transport, proto, transport.get_extra_info("sockname")[1]


async def test_pacing_under_fake_clock_is_exact_and_packets_are_well_formed() -> None:
    clock = FakeClock()
    transport, peer, port = await raw_peer()
    s = await RtpSession.open(clock, "127.0.0.1")
    try:
        s.start(NegotiatedMedia("127.0.0.1", port, "PCMU", 0, 101, 20, "sendrecv"))
        clock.advance(1.0)
        assert s.stats.packets_sent == 51  # frames at 0, 20, ..., 1000 ms
        for _ in range(7):
            clock.advance(0.013)  # odd steps: frames still go out on the 20 ms grid
        assert s.stats.packets_sent == 51 + 4
        await wait_for(lambda: len(peer.packets) == 55)
    finally:
        await s.close()
        transport.close()
    pkts = [p for p, _ in peer.packets]
    assert pkts[0].marker
    assert not any(p.marker for p in pkts[1:])
    assert {p.ssrc for p in pkts} == {pkts[0].ssrc}
    assert all((b.sequence_number - a.sequence_number) & 0xFFFF == 1 for a, b in itertools.pairwise(pkts))
    assert all((b.timestamp - a.timestamp) & 0xFFFFFFFF == 160 for a, b in itertools.pairwise(pkts))
    assert all(p.payload == b"\xff" * 160 for p in pkts)


class LaggyClock(FakeClock):
    """Fires one timer 150 ms late, as a stalled event loop would."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        self.calls += 1
        return super().call_later(delay + (0.15 if self.calls == 10 else 0.0), callback)


async def test_stalled_loop_skips_frames_instead_of_bursting() -> None:
    clock = LaggyClock()
    transport, peer, port = await raw_peer()
    s = await RtpSession.open(clock, "127.0.0.1")
    try:
        s.start(NegotiatedMedia("127.0.0.1", port, "PCMU", 0, None, 20, "sendrecv"))
        clock.advance(1.0)
        assert 51 - 8 <= s.stats.packets_sent < 51
        await wait_for(lambda: len(peer.packets) == s.stats.packets_sent)
    finally:
        await s.close()
        transport.close()
    stamps = [p.timestamp for p, _ in peer.packets]
    assert (stamps[-1] - stamps[0]) & 0xFFFFFFFF == 50 * 160  # timestamps keep real time across the stall


async def test_dtmf_packets_on_the_wire() -> None:
    clock = FakeClock()
    transport, peer, port = await raw_peer()
    s = await RtpSession.open(clock, "127.0.0.1")
    try:
        s.start(NegotiatedMedia("127.0.0.1", port, "PCMA", 8, 96, 20, "sendrecv"))
        clock.advance(0.05)
        task = asyncio.create_task(s.send_dtmf("7", duration_ms=80))
        await asyncio.sleep(0)
        clock.advance(0.2)
        await task
        await wait_for(lambda: len(peer.packets) == s.stats.packets_sent)
    finally:
        await s.close()
        transport.close()
    events = [p for p, _ in peer.packets if p.payload_type == 96]
    assert len(events) == 4 + 3
    assert events[0].marker
    assert not any(e.marker for e in events[1:])
    assert {e.timestamp for e in events} == {events[0].timestamp}
    durations = [int.from_bytes(e.payload[2:4], "big") for e in events]
    assert durations == [160, 320, 480, 640, 640, 640, 640]
    assert [bool(e.payload[1] & 0x80) for e in events] == [False] * 4 + [True] * 3
    audio_after = [
        p for p, _ in peer.packets if p.payload_type == 8 and p.sequence_number > events[-1].sequence_number
    ]
    assert audio_after
    assert audio_after[0].marker  # a new talkspurt after the event


async def test_inactivity_under_fake_clock_counts_from_start() -> None:
    clock = FakeClock()
    s = await RtpSession.open(clock, "127.0.0.1", inactivity_timeout=5.0)
    try:
        s.start(NegotiatedMedia("127.0.0.1", 9, "PCMU", 0, None, 20, "recvonly"))
        clock.advance(4.9)
        assert s.events.empty()
        clock.advance(0.2)
        event = s.events.get_nowait()
        assert isinstance(event, MediaInactive)
        assert event.seconds == pytest.approx(5.0, abs=0.021)
        clock.advance(10)
        assert s.events.empty()  # reported once
    finally:
        await s.close()


async def test_sipp_captured_rfc2833_packets_give_digit_one(
    sipp_capture: Callable[[str], list[tuple[float, bytes]]],
) -> None:
    packets = sipp_capture("dtmf_2833_1.pcap")
    clock = SystemClock()
    s = await RtpSession.open(clock, "127.0.0.1")
    loop = asyncio.get_running_loop()
    sender, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    try:
        s.start(NegotiatedMedia("127.0.0.1", 9, "PCMU", 0, 101, 20, "sendrecv"))
        t0 = packets[0][0]
        start = time.monotonic()
        for at, data in packets:  # replay with the captured timing
            await asyncio.sleep(max(0.0, (at - t0) - (time.monotonic() - start)))
            sender.sendto(data, ("127.0.0.1", s.local_port))
        assert (await next_event(s, DtmfReceived)).digit == "1"
        await asyncio.sleep(0.1)
        assert not [e for e in drain(s) if isinstance(e, DtmfReceived)]
        assert s.stats.packets_received == len(packets)
        assert s.remote == ("127.0.0.1", sender.get_extra_info("sockname")[1])
    finally:
        sender.close()
        await s.close()


async def test_play_is_cancel_safe_and_close_fails_pending_play(tone: Callable[..., Path]) -> None:
    clock = FakeClock()
    s = await RtpSession.open(clock, "127.0.0.1")
    try:
        s.start(NegotiatedMedia("127.0.0.1", 9, "PCMU", 0, None, 20, "sendrecv"))
        first = asyncio.create_task(s.play(tone(seconds=1.0)))
        await asyncio.sleep(0)
        clock.advance(0.1)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        second = asyncio.create_task(s.play(tone(seconds=0.2)))
        await asyncio.sleep(0)
        clock.advance(0.25)
        await asyncio.wait_for(second, 1)  # the cancelled prompt no longer holds the line
        third = asyncio.create_task(s.play(tone(seconds=1.0)))
        await asyncio.sleep(0)
    finally:
        await s.close()
    with pytest.raises(MediaError, match="closed"):
        await third
    with pytest.raises(MediaError, match="state closed"):
        await s.play(tone(seconds=0.1))


async def test_prompt_time_runs_on_hold(tone: Callable[..., Path]) -> None:
    clock = FakeClock()
    s = await RtpSession.open(clock, "127.0.0.1")
    try:
        s.start(NegotiatedMedia("127.0.0.1", 9, "PCMU", 0, None, 20, "inactive"))
        task = asyncio.create_task(s.play(tone(seconds=0.3)))
        await asyncio.sleep(0)
        clock.advance(0.4)
        await asyncio.wait_for(task, 1)
        assert s.stats.packets_sent == 0
    finally:
        await s.close()


async def test_bind_failure_is_a_media_error() -> None:
    s = await RtpSession.open(SystemClock(), "127.0.0.1")
    try:
        with pytest.raises(MediaError, match=f"127.0.0.1:{s.local_port}"):
            await RtpSession.open(SystemClock(), "127.0.0.1", s.local_port)
    finally:
        await s.close()


async def test_update_without_telephone_event_fails_queued_digits() -> None:
    clock = FakeClock()
    s = await RtpSession.open(clock, "127.0.0.1")
    media = NegotiatedMedia("127.0.0.1", 9, "PCMU", 0, 101, 20, "sendrecv")
    try:
        s.start(media)
        first = asyncio.create_task(s.send_dtmf("1"))
        second = asyncio.create_task(s.send_dtmf("2"))
        await asyncio.sleep(0)
        clock.advance(0.04)
        s.update(dataclasses.replace(media, dtmf_payload_type=None))
        for task in (first, second):
            with pytest.raises(MediaError, match="telephone-event payload type None"):
                await task
    finally:
        await s.close()


async def test_cancelled_dtmf_finishes_its_event_on_the_wire() -> None:
    clock = FakeClock()
    transport, peer, port = await raw_peer()
    s = await RtpSession.open(clock, "127.0.0.1")
    try:
        s.start(NegotiatedMedia("127.0.0.1", port, "PCMU", 0, 101, 20, "sendrecv"))
        task = asyncio.create_task(s.send_dtmf("9", duration_ms=100))
        await asyncio.sleep(0)
        clock.advance(0.03)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        clock.advance(0.3)
        await wait_for(lambda: len(peer.packets) == s.stats.packets_sent)
    finally:
        await s.close()
        transport.close()
    ends = [p for p, _ in peer.packets if p.payload_type == 101 and p.payload[1] & 0x80]
    assert len(ends) == 3  # no tone left hanging at the far end


async def test_attached_source_and_sink_carry_live_audio(pair: Pair) -> None:
    t = np.arange(160) / 8000
    frame = (np.sin(2 * np.pi * 400 * t) * 12000).astype(np.int16)
    heard: list[np.ndarray] = []
    pair.a.attach(source=lambda: frame)
    pair.b.attach(sink=heard.append)
    await wait_for(lambda: sum(1 for h in heard if np.abs(h).max() > 5000) >= 10)
    pair.a.attach()
    assert pair.b.energy_dbfs(0.1) > -20
    await wait_for(lambda: pair.b.energy_dbfs(0.1) < -60)


async def test_garbage_comfort_noise_and_rtcp_are_dropped_without_latching() -> None:
    s = await RtpSession.open(SystemClock(), "127.0.0.1")
    loop = asyncio.get_running_loop()
    stray, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    good, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    target = ("127.0.0.1", s.local_port)
    try:
        s.start(NegotiatedMedia("127.0.0.1", 9, "PCMU", 0, 101, 20, "sendrecv"))
        stray.sendto(b"\x00garbage", target)
        stray.sendto(RtpPacket(13, 1, 0, 5, b"\x40").serialize(), target)  # comfort noise
        stray.sendto(bytes.fromhex("80c80006") + bytes(24), target)  # an RTCP sender report
        await asyncio.sleep(0.1)
        assert s.stats.packets_received == 0
        assert s.remote == ("127.0.0.1", 9)
        good.sendto(RtpPacket(0, 7, 160, 6, b"\xff" * 160).serialize(), target)
        await next_event(s, MediaStarted)
        assert s.stats.packets_received == 1
        assert s.remote == ("127.0.0.1", good.get_extra_info("sockname")[1])
    finally:
        stray.close()
        good.close()
        await s.close()
