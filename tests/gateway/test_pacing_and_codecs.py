"""The capacity work: one shared 20 ms pacer (stage order, catch-up, skip), RTP sessions moved onto it without a
timestamp gap, the polyphase resampler against the plain filter it replaces, Opus on the event loop, the
two-party mixer fast path and the aiortc seam the encoded-audio tap depends on."""

from __future__ import annotations

import asyncio
import itertools
import queue

import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpTransceiver

from comms.clock import FakeClock
from media import audio
from media.bridge import (
    _FIR,
    NARROW_FRAME,
    WIDE_FRAME,
    AudioBridge,
    BridgeTrack,
    Mixer,
    OpusDecoder,
    OpusEncoder,
    Party,
    Resampler,
)
from media.pacer import Pacer, Stage
from media.rtp import RtpPacket
from media.sdp import NegotiatedMedia
from media.session import RtpSession
from media.webrtc import EncodedAudioTap, encoded_audio, prefer_opus, tap_encoded_audio


def test_pacer_runs_members_in_stage_order_on_one_grid() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    seen: list[tuple[str, int]] = []
    leave_send = pacer.join(Stage.SEND, lambda k, now: seen.append(("send", k)))
    pacer.join(Stage.MIX, lambda k, now: seen.append(("mix", k)))
    pacer.join(Stage.RECEIVE, lambda k, now: seen.append(("rx", k)))
    clock.advance(0.0)
    assert seen == [("rx", 0), ("mix", 0), ("send", 0)]
    clock.advance(0.013)
    assert len(seen) == 3  # nothing due before 20 ms
    clock.advance(0.007)
    assert seen[3:] == [("rx", 1), ("mix", 1), ("send", 1)]
    leave_send()
    leave_send()  # idempotent
    clock.advance(0.020)
    assert seen[6:] == [("rx", 2), ("mix", 2)]
    assert pacer.members == 2 and pacer.ticks == 3


def test_a_failing_member_does_not_stop_the_others() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    seen: list[int] = []

    def boom(k: int, now: float) -> None:
        raise RuntimeError("member failed")

    pacer.join(Stage.RECEIVE, boom)
    pacer.join(Stage.SEND, lambda k, now: seen.append(k))
    clock.advance(0.040)
    assert seen == [0, 1, 2]


class StallingClock(FakeClock):
    """Timers fire ``lag`` late once (a stalled event loop)."""

    lag = 0.0

    def call_later(self, delay: float, callback):  # type: ignore[no-untyped-def]
        lag, self.lag = self.lag, 0.0
        return super().call_later(delay + lag, callback)


def test_pacer_catches_up_a_short_stall_and_skips_a_long_one() -> None:
    clock = StallingClock()
    pacer = Pacer(clock)
    frames: list[int] = []
    pacer.join(Stage.MIX, lambda k, now: frames.append(k))
    clock.lag = 0.060  # the tick after frame 0 fires 60 ms late: frames 1-4 then run back to back
    clock.advance(0.0)
    clock.advance(0.080)
    assert frames == [0, 1, 2, 3, 4]
    clock.lag = 0.200  # the tick after frame 5 fires 200 ms late: skipped, never a burst of 10 frames
    clock.advance(0.020)
    clock.advance(0.220)
    assert frames[5:] == [5, 16] and pacer.skipped == 10
    clock.advance(0.020)
    assert frames[-1] == 17


def test_last_member_leaving_stops_the_timer_and_a_new_one_restarts_it() -> None:
    clock = FakeClock()
    pacer = Pacer.of(clock)
    assert Pacer.of(clock) is pacer and Pacer.of(FakeClock()) is not pacer
    frames: list[int] = []
    leave = pacer.join(Stage.MIX, lambda k, now: frames.append(k))
    clock.advance(0.030)
    leave()
    clock.advance(1.0)
    assert frames == [0, 1]
    pacer.join(Stage.MIX, lambda k, now: frames.append(k))
    clock.advance(0.0)
    assert frames == [0, 1, 0]  # a fresh grid from now


class Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets.append(RtpPacket.parse(data))


async def test_rtp_session_moves_onto_the_pacer_without_a_timestamp_gap() -> None:
    clock = FakeClock()
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    s = await RtpSession.open(clock, "127.0.0.1")
    pacer = Pacer(clock)
    order: list[str] = []
    try:
        s.start(NegotiatedMedia("127.0.0.1", port, "PCMU", 0, 101, 20, "sendrecv"))
        clock.advance(0.105)  # frames 0-5 on its own timer
        pacer.join(Stage.MIX, lambda k, now: order.append("mix"))
        clock.advance(0.003)

        def source() -> None:
            order.append("send")

        s.attach(source=source, sink=lambda x: order.append("rx"))
        s.pace_with(pacer)
        s.pace_with(pacer)  # idempotent
        clock.advance(0.200)
        assert s.stats.packets_sent == 6 + 10
        # on the shared tick: played out before the mix, sent after it
        assert order[-3:] == ["rx", "mix", "send"] and order.count("send") == 10
        for _ in range(50):
            if len(peer.packets) == 16:
                break
            await asyncio.sleep(0.01)
    finally:
        await s.close()
        transport.close()
    assert pacer.members == 1  # closing the session left the pacer
    ts = [p.timestamp for p in peer.packets]
    assert len(ts) == 16
    assert all((b - a) & 0xFFFFFFFF == 160 for a, b in itertools.pairwise(ts))


def test_polyphase_resampler_equals_the_plain_fir() -> None:
    """The matrix forms compute exactly what zero-stuffing + convolution (and convolution + decimation) do."""
    rng = np.random.default_rng(1)
    up, down = Resampler("up"), Resampler("down")
    narrow = rng.integers(-12000, 12000, NARROW_FRAME * 6).astype(np.int16)
    wide = rng.integers(-12000, 12000, WIDE_FRAME * 6).astype(np.int16)
    got_up = np.concatenate([up.process(narrow[i : i + 160]) for i in range(0, narrow.size, 160)])
    got_down = np.concatenate([down.process(wide[i : i + 960]) for i in range(0, wide.size, 960)])
    stuffed = np.zeros(narrow.size * 6)
    stuffed[::6] = narrow * 6.0
    ref_up = np.convolve(stuffed, _FIR)[: stuffed.size]
    ref_down = np.convolve(wide.astype(np.float64), _FIR)[: wide.size : 6]
    assert np.max(np.abs(got_up - np.clip(np.rint(ref_up), -32768, 32767))) <= 1
    assert np.max(np.abs(got_down - np.clip(np.rint(ref_down), -32768, 32767))) <= 1


def test_opus_round_trip_on_the_loop_keeps_the_tone_and_recuts_long_packets() -> None:
    t = np.arange(WIDE_FRAME * 10) / 48000
    tone = (np.sin(2 * np.pi * 1000 * t) * 0.4 * 32767).astype(np.int16)
    enc, dec = OpusEncoder(), OpusDecoder()
    out = []
    for i in range(10):
        (packet,) = enc.encode(tone[i * WIDE_FRAME : (i + 1) * WIDE_FRAME])
        assert 20 < len(packet) < 400
        out += dec.decode(packet)
    assert [f.size for f in out] == [WIDE_FRAME] * 10
    level = audio.energy_dbfs(np.concatenate(out[3:]))
    assert level == pytest.approx(audio.energy_dbfs(tone), abs=1.5)
    # a 40 ms packet (another sender's ptime) comes out as two 20 ms frames
    import av

    codec = av.CodecContext.create("libopus", "w")
    codec.format, codec.layout, codec.sample_rate, codec.bit_rate = "s16", "mono", 48000, 48000
    codec.options = {"frame_duration": "40"}
    frame = av.AudioFrame.from_ndarray(np.concatenate([tone, tone])[: 1920 * 2].reshape(1, -1), layout="mono")
    frame.sample_rate = 48000
    long_packets = [bytes(p) for p in codec.encode(frame)]
    assert long_packets
    frames = [f for p in long_packets for f in OpusDecoder().decode(p)]
    assert frames and all(f.size == WIDE_FRAME for f in frames)
    assert OpusDecoder().decode(b"\xff\xff\xff") == []  # undecodable: counted, nothing pushed


async def test_bridge_track_hands_aiortc_encoded_opus() -> None:
    track = BridgeTrack(encode=True)
    track.feed(np.zeros(WIDE_FRAME, dtype=np.int16))
    track.feed(np.zeros(WIDE_FRAME, dtype=np.int16))
    first, second = await track.recv(), await track.recv()
    assert bytes(first) and (first.pts, second.pts) == (0, WIDE_FRAME)
    track.stop()


def test_two_party_mix_is_a_plain_cross_connect() -> None:
    m = Mixer()
    m.add(Party("room", "room"))
    m.add(Party("phone", "phone"))
    frame = np.full(WIDE_FRAME, 1234, dtype=np.int16)
    m.push("room", frame, 1.0)
    out = m.mix()
    assert out["phone"] is frame and not out["room"].any()
    assert m.parties["room"].stats().level_dbfs == pytest.approx(audio.energy_dbfs(frame))


async def offered_audio() -> tuple[RTCPeerConnection, RTCPeerConnection, list[RTCRtpTransceiver]]:
    """``b`` takes ``a``'s audio offer; its transceivers whose receiver got a track (taps installed on them)."""
    a, b = RTCPeerConnection(), RTCPeerConnection()
    a.addTransceiver("audio", direction="sendonly")
    await a.setLocalDescription(await a.createOffer())
    got: list[RTCRtpTransceiver] = []

    @b.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        for transceiver in b.getTransceivers():
            if transceiver.receiver.track is track:
                assert isinstance(transceiver.receiver._RTCRtpReceiver__decoder_queue, queue.Queue)  # type: ignore[attr-defined]
                got.append(transceiver)
                assert tap_encoded_audio(transceiver.receiver) is not None

    assert a.localDescription is not None
    await b.setRemoteDescription(a.localDescription)
    return a, b, got


async def test_aiortc_audio_decoder_queue_seam_is_where_we_expect() -> None:
    """The tap replaces aiortc 1.16's private per-receiver decoder queue when the track appears (before the
    receiver's decoder thread starts); an upgrade that moves it fails here."""
    a, b, got = await offered_audio()
    try:
        (transceiver,) = got
        receiver = transceiver.receiver
        tap = encoded_audio(receiver.track)
        assert isinstance(tap, EncodedAudioTap)
        assert receiver._RTCRtpReceiver__decoder_queue is tap  # type: ignore[attr-defined]
        received: list[bytes] = []
        tap.sink = received.append

        class Codec:
            name = "opus"

        class Frame:
            data = b"opus-bytes"

        tap.put((Codec(), Frame()))
        tap.put(None)  # the end marker still reaches aiortc's decoder thread
        assert received == [b"opus-bytes"] and tap.get_nowait() is None
        prefer_opus(transceiver)
        assert [c.mimeType for c in transceiver._preferred_codecs] == ["audio/opus"]
    finally:
        await a.close()
        await b.close()


async def test_bridge_decodes_a_tapped_track_without_a_reader_task() -> None:
    a, b, got = await offered_audio()
    bridge = AudioBridge(FakeClock(), opus=True)
    try:
        track = got[0].receiver.track
        tap = encoded_audio(track)
        assert tap is not None
        bridge.add_webrtc("room", "room", track)
        assert tap.sink is not None and not bridge._tasks
        (packet,) = OpusEncoder().encode(np.full(WIDE_FRAME, 3000, dtype=np.int16))
        tap.sink(packet)
        assert bridge.stats()["room"].frames_in == 1
        bridge.remove("room")
        assert tap.sink is None
    finally:
        await bridge.close()
        await a.close()
        await b.close()
