"""The bridge's pure parts (resampler, frame queue, mix-minus), the supervision core under controlled time, and
the two private seams we depend on (aiortc's receiver buffer, RtpSession's frame hooks)."""

from __future__ import annotations

import queue

import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer

from media import audio
from media.bridge import WIDE_FRAME, FrameQueue, Mixer, Party, Resampler
from media.errors import MediaError
from media.supervision import Alarm, PartySample, Record, Sample, Supervision
from media.webrtc import (
    EncodedVideoTap,
    IceServer,
    PassThroughAudioBuffer,
    _is_vp8_keyframe,
    low_latency_audio,
    rtc_configuration,
)


def tone(rate: int, n: int, freq: float, amp: float = 0.5, start: int = 0) -> np.ndarray:
    t = (np.arange(n) + start) / rate
    return (np.sin(2 * np.pi * freq * t) * amp * 32767).astype(np.int16)


def test_resampler_keeps_speech_band_and_removes_what_8k_cannot_carry() -> None:
    down = Resampler("down")
    out_1k = np.concatenate(
        [down.process(tone(48000, WIDE_FRAME, 1000, start=i * WIDE_FRAME)) for i in range(10)]
    )
    assert out_1k.size == 1600
    assert audio.energy_dbfs(out_1k[400:]) == pytest.approx(
        audio.energy_dbfs(tone(8000, 1200, 1000)), abs=0.5
    )
    down = Resampler("down")
    out_10k = np.concatenate(
        [down.process(tone(48000, WIDE_FRAME, 10000, start=i * WIDE_FRAME)) for i in range(10)]
    )
    assert audio.energy_dbfs(out_10k[400:]) < -50.0  # aliased energy suppressed
    up = Resampler("up")
    wide = np.concatenate([up.process(tone(8000, 160, 700, start=i * 160)) for i in range(10)])
    assert wide.size == 9600
    assert audio.energy_dbfs(wide[2400:]) == pytest.approx(audio.energy_dbfs(tone(48000, 7200, 700)), abs=0.5)
    with pytest.raises(MediaError, match="expected 960"):
        Resampler("down").process(np.zeros(100, dtype=np.int16))


def test_frame_queue_is_bounded_and_trims_a_standing_delay() -> None:
    q = FrameQueue(max_frames=3, trim_window=5)
    assert q.pop() is None and q.underruns == 0  # not started: buffering is not an underrun
    for i in range(5):
        q.put(np.full(4, i, dtype=np.int16))
    assert q.dropped == 2 and len(q.frames) == 3
    # steady state: one in, one out, but two frames stand in the queue -> trimmed after 5 pops
    for i in range(5, 11):
        q.put(np.full(4, i, dtype=np.int16))
        q.pop()
    assert q.trimmed == 1 and len(q.frames) == 1
    q.pop()
    assert q.pop() is None and q.underruns == 1


def test_mixer_is_mix_minus_and_clips() -> None:
    m = Mixer()
    for pid in ("room", "phone", "browser"):
        m.add(Party(pid, "x"))
    with pytest.raises(MediaError, match="already in the bridge"):
        m.add(Party("room", "x"))
    m.push("room", np.full(WIDE_FRAME, 1000, dtype=np.int16), 1.0)
    m.push("phone", np.full(WIDE_FRAME, 30000, dtype=np.int16), 1.0)
    out = m.mix()
    assert out["room"][0] == 30000  # hears the phone, not itself
    assert out["phone"][0] == 1000
    assert out["browser"][0] == 31000  # hears both
    m.push("room", np.full(WIDE_FRAME, 10000, dtype=np.int16), 1.0)
    m.push("phone", np.full(WIDE_FRAME, 30000, dtype=np.int16), 1.0)
    assert m.mix()["browser"][0] == 32767  # clipped, not wrapped


def sample(now: float, room_last: float | None, phone_last: float | None, video: float | None) -> Sample:
    return Sample(
        PartySample("room", "room", room_last, delivering_audio=True),
        video,
        (PartySample("phone:1", "phone", phone_last, delivering_audio=True, leg_id="L1"),),
    )


def test_supervision_records_levels_losses_and_restores() -> None:
    sup = Supervision("inc", started=100.0, loss_after=3.0)
    acts = sup.observe(101.0, sample(101.0, 100.9, 100.9, None))
    kinds = [a.kind for a in acts]
    assert kinds.count("media.established") == 2
    level = next(a for a in acts if isinstance(a, Record) and a.kind == "media.supervision")
    assert level.data["level"] == "audio_only" and level.data["second"] == 1
    assert sup.observe(102.0, sample(102.0, 101.9, 101.9, None)) == []  # unchanged: no record
    # the phone goes quiet: after > 3 s an alarm (and the level drops); the call is the adapter's business
    acts = []
    for t in (103.0, 104.0, 105.0, 106.0):
        acts += sup.observe(t, sample(t, t - 0.1, 101.9, None))
    alarms = [a for a in acts if isinstance(a, Alarm)]
    assert [(a.kind, a.data["party"], a.leg_id) for a in alarms] == [("media.lost", "phone:1", "L1")]
    assert sup.lost_parties() == ["phone:1"]
    acts = sup.observe(107.0, sample(107.0, 106.9, 106.9, None))
    restored = [a for a in acts if a.kind == "media.restored"]
    assert restored and restored[0].data["gap_s"] == pytest.approx(5.0)
    assert sup.lost_parties() == []
    assert sup.summary()["audio_only_seconds"] >= 3


def test_ice_servers_are_explicit_and_checked() -> None:
    assert rtc_configuration([]).iceServers == []  # never aiortc's default Google STUN
    conf = rtc_configuration([IceServer(("turn:turn.example.org:3478",), "u", "p")])
    assert conf.iceServers is not None and conf.iceServers[0].username == "u"
    with pytest.raises(MediaError, match="needs a username"):
        IceServer(("turn:turn.example.org",))
    with pytest.raises(MediaError, match="expected stun:"):
        IceServer(("http://x",))


async def test_aiortc_receiver_buffer_seam_is_where_we_expect() -> None:
    """aiortc 1.16 keeps a 4-frame prefetch buffer in the audio receiver; an upgrade that moves it fails here."""
    pc = RTCPeerConnection()
    try:
        transceiver = pc.addTransceiver("audio")
        receiver: RTCRtpReceiver = transceiver.receiver
        original = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
        assert isinstance(original, JitterBuffer) and original._prefetch == 4
        assert low_latency_audio(receiver)
        assert isinstance(receiver._RTCRtpReceiver__jitter_buffer, PassThroughAudioBuffer)  # type: ignore[attr-defined]
    finally:
        await pc.close()


async def test_aiortc_decoder_queue_seam_is_where_we_expect() -> None:
    """The encoded-video tap replaces aiortc 1.16's private receiver → decoder queue; an upgrade that moves it fails."""
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("video").receiver
        assert isinstance(receiver._RTCRtpReceiver__decoder_queue, queue.Queue)  # type: ignore[attr-defined]
        tap = EncodedVideoTap(receiver)
        assert tap.installed
    finally:
        await pc.close()


def test_vp8_key_frames_are_recognised() -> None:
    assert _is_vp8_keyframe(bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]))  # P bit 0: key frame
    assert not _is_vp8_keyframe(bytes([0x31, 0x02, 0x00]))
    assert not _is_vp8_keyframe(b"")


def test_rtp_session_frame_seam_exists() -> None:
    from media.session import RtpSession

    assert callable(RtpSession._next_audio) and callable(RtpSession._record)
