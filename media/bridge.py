"""The audio bridge: a mix-minus conference of the room (WebRTC, Opus 48 kHz) and phone legs (G.711 8 kHz).

Theory of operation
-------------------
Every party (the room tablet, a radiologist's browser, a phone leg) is a :class:`Party` with one small
bounded input buffer (:class:`FrameQueue`) of 20 ms frames of 48 kHz mono 16-bit audio. The
:class:`Mixer` (pure: no clock, no I/O) takes one frame from every party per tick and gives each party the sum
of everybody else (mix-minus: nobody hears themselves), clipped to 16 bits. With two parties this is a plain
cross-connect; with three or more (technologist on the phone, radiologist, room) it is a conference.

:class:`AudioBridge` is the asyncio adapter. It mixes on the shared 20 ms :class:`~media.pacer.Pacer` of its
clock (one timer for every bridge and bridged RTP session, at ``t0 + k × 20 ms`` so it does not drift,
skipping, not bursting, after a stall), in the MIX stage: after the phone legs played out their frame and
before they send. Inputs and outputs:

* a WebRTC party's Opus packets come from an :class:`~media.webrtc.EncodedAudioTap` on its aiortc receiver and
  are decoded on arrival by :class:`OpusDecoder` (mono, on the event loop: no decoder thread, no reader task);
  without a tap a task reads the decoded track. What the party hears goes out through a :class:`BridgeTrack`,
  which hands aiortc's sender one frame per tick already encoded by :class:`OpusEncoder` (``opus=True``, what
  the gateway uses) or as PCM;
* a phone party is an :class:`~media.session.RtpSession` moved onto the same pacer
  (:meth:`~media.session.RtpSession.pace_with`): it hands us each received frame (decoded G.711, 8 kHz) and
  takes the next frame to send from us; :class:`Resampler` converts 8 kHz ↔ 48 kHz with a windowed-sinc
  polyphase FIR in numpy (121 taps at 48 kHz, 1.25 ms group delay, no extra buffering), so a conversion never
  adds more than that.

Latency is bounded by design: each input buffer plays out as soon as it holds one frame (prefetch 1) and
never holds more than ``max_frames`` (the oldest frame is dropped beyond, counted as ``dropped``), so a burst
from the network is not turned into permanent delay (the failure users report for aiortc's own buffers).
Per party we keep counters and the time of the last received frame: the gateway's supervision reads them to
decide whether media flows in each direction.

The RtpSession seam: :class:`RtpSession` (``media/session.py``) has no public frame hook yet; :func:`attach_rtp`
wraps two of its methods on the instance (``_next_audio`` for what it sends, ``_record`` for what it
received). ``tests/gateway/test_bridge.py`` pins that seam so a change there fails loudly; the lead may
replace it with a public ``RtpSession.attach(port)`` later.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from comms.clock import Clock
from media import audio
from media.errors import MediaError
from media.pacer import Pacer, Stage
from media.session import RtpSession
from media.webrtc import EncodedAudioTap, encoded_audio

__all__ = [
    "FRAME_S",
    "NARROW_FRAME",
    "WIDE_FRAME",
    "WIDE_RATE",
    "AudioBridge",
    "BridgeTrack",
    "FrameQueue",
    "Mixer",
    "Party",
    "PartyStats",
    "Pcm",
    "Resampler",
    "attach_rtp",
    "frame_to_wide",
]

log = logging.getLogger(__name__)

FRAME_S = 0.020
WIDE_RATE = 48000
WIDE_FRAME = 960  # 20 ms at 48 kHz
NARROW_RATE = audio.RATE
NARROW_FRAME = audio.SAMPLES_PER_FRAME
MAX_CATCH_UP = 5
Pcm = npt.NDArray[np.int16]
_TIME_BASE = fractions.Fraction(1, WIDE_RATE)


def _design_lowpass(taps: int, cutoff_hz: float, rate: int) -> npt.NDArray[np.float64]:
    n = np.arange(taps) - (taps - 1) / 2.0
    h = np.sinc(2.0 * cutoff_hz / rate * n) * np.hamming(taps)
    return np.asarray(h / h.sum(), dtype=np.float64)


_FIR = _design_lowpass(121, 3600.0, WIDE_RATE)
_RATIO = WIDE_RATE // NARROW_RATE


def _up_matrix() -> npt.NDArray[np.float64]:
    # polyphase form of "insert 5 zeros after each sample, then filter": output 6m+p is a dot product of the
    # 21 narrow samples ending at m with every 6th tap, so no multiplications by the inserted zeros
    rev = _FIR[::-1]
    w = np.zeros((_UP_WIN, _RATIO), dtype=np.float64)
    for p in range(_RATIO):
        j0, c = (_RATIO - p) % _RATIO, 1 if p else 0
        for t in range((_FIR.size - 1 - j0) // _RATIO + 1):
            w[c + t, p] = rev[j0 + _RATIO * t] * _RATIO
    return w


_UP_WIN = (_FIR.size - 1) // _RATIO + 1  # 21 narrow samples reach one wide output
_UP = _up_matrix()
_DOWN = np.ascontiguousarray(_FIR[::-1])


class Resampler:
    """8 kHz ↔ 48 kHz for 20 ms frames, stateful (filter history carried across frames).

    Polyphase: downsampling computes only the 160 outputs kept (a 160×121 window times the taps), upsampling
    never multiplies the inserted zeros (a 160×21 window times a 21×6 matrix). One matrix product per frame.
    """

    def __init__(self, direction: str) -> None:
        if direction not in ("down", "up"):
            raise ValueError(f"resampler direction {direction!r}: expected 'down' or 'up'")
        self.direction = direction
        hist = _FIR.size - 1 if direction == "down" else _UP_WIN - 1
        self._buf = np.zeros(hist + (WIDE_FRAME if direction == "down" else NARROW_FRAME), dtype=np.float64)
        self._hist = hist
        # views on the buffer, made once (making a window view costs more than the product itself)
        if direction == "down":
            self._win = np.lib.stride_tricks.sliding_window_view(self._buf, _FIR.size)[::_RATIO]
        else:
            self._win = np.lib.stride_tricks.sliding_window_view(self._buf, _UP_WIN)
        self._out = np.empty(NARROW_FRAME if direction == "down" else WIDE_FRAME, dtype=np.float64)

    def process(self, samples: Pcm) -> Pcm:
        buf, hist = self._buf, self._hist
        if self.direction == "down":
            if samples.size != WIDE_FRAME:
                raise MediaError(f"downsampling a frame of {samples.size} samples: expected {WIDE_FRAME}")
            buf[hist:] = samples
            y = np.matmul(self._win, _DOWN, out=self._out)
        else:
            if samples.size != NARROW_FRAME:
                raise MediaError(f"upsampling a frame of {samples.size} samples: expected {NARROW_FRAME}")
            buf[hist:] = samples
            np.matmul(self._win, _UP, out=self._out.reshape(NARROW_FRAME, _RATIO))
            y = self._out
        buf[:hist] = buf[-hist:]
        np.rint(y, out=y)
        np.clip(y, -32768, 32767, out=y)
        return y.astype(np.int16)


@dataclass
class FrameQueue:
    """A small bounded jitter buffer of PCM frames.

    Plays out from the first frame; holds at most ``max_frames`` (the oldest is dropped beyond). Two clocks that
    both tick every 20 ms leave a FIFO at whatever depth a start-up burst gave it, forever: so when the queue
    never ran below one spare frame for ``trim_window`` pops (0.5 s), one frame is dropped (``trimmed``) and the
    standing delay shrinks by 20 ms. Jitter that does drain the queue resets the window, so it is absorbed.
    """

    max_frames: int = 3
    trim_window: int = 25
    frames: deque[Pcm] = field(default_factory=deque)
    received: int = 0
    played: int = 0
    dropped: int = 0
    underruns: int = 0
    trimmed: int = 0
    _started: bool = False
    _spare_pops: int = 0

    def put(self, samples: Pcm) -> None:
        self.received += 1
        self.frames.append(samples)
        while len(self.frames) > self.max_frames:
            self.frames.popleft()
            self.dropped += 1

    def pop(self) -> Pcm | None:
        if not self.frames:
            if self._started:
                self.underruns += 1
            self._spare_pops = 0
            return None
        self._started = True
        self.played += 1
        frame = self.frames.popleft()
        if self.frames:
            self._spare_pops += 1
            if self._spare_pops >= self.trim_window:
                self.frames.popleft()
                self.trimmed += 1
                self._spare_pops = 0
        else:
            self._spare_pops = 0
        return frame


@dataclass(frozen=True)
class PartyStats:
    """Counters of one party: frames in (from the party) and out (to it), the last input time and level."""

    party: str
    kind: str
    frames_in: int
    frames_out: int
    dropped: int
    underruns: int
    last_in_mono: float | None
    level_dbfs: float


@dataclass
class Party:
    """One participant of the bridge."""

    id: str
    kind: str  # "room" | "browser" | "phone" | "bench"
    queue: FrameQueue = field(default_factory=FrameQueue)
    frames_out: int = 0
    last_in_mono: float | None = None
    on_mix: Callable[[Pcm], None] | None = None
    #: the last frame received: its level is computed when asked (once a second), not for every frame
    last_frame: Pcm | None = None

    @property
    def level_dbfs(self) -> float:
        return audio.energy_dbfs(self.last_frame) if self.last_frame is not None else audio.FLOOR_DBFS

    def stats(self) -> PartyStats:
        return PartyStats(
            self.id,
            self.kind,
            self.queue.received,
            self.frames_out,
            self.queue.dropped,
            self.queue.underruns,
            self.last_in_mono,
            self.level_dbfs,
        )


_SILENCE = np.zeros(WIDE_FRAME, dtype=np.int16)
_SILENCE.flags.writeable = False


class Mixer:
    """Mix-minus of 48 kHz mono frames. Pure."""

    def __init__(self) -> None:
        self.parties: dict[str, Party] = {}

    def add(self, party: Party) -> None:
        if party.id in self.parties:
            raise MediaError(f"party {party.id!r} is already in the bridge: expected a new party id")
        self.parties[party.id] = party

    def remove(self, party_id: str) -> Party | None:
        return self.parties.pop(party_id, None)

    def push(self, party_id: str, samples: Pcm, now: float) -> None:
        party = self.parties.get(party_id)
        if party is None:
            return
        party.queue.put(samples)
        party.last_in_mono = now
        party.last_frame = samples

    def mix(self) -> dict[str, Pcm]:
        """One tick: each party's output frame (what everybody else said). Output frames are read-only."""
        parties = self.parties
        if len(parties) == 2:
            # the common case, a cross-connect: each hears the other's frame as it is (no sum, no clipping)
            (a, pa), (b, pb) = parties.items()
            fa, fb = pa.queue.pop(), pb.queue.pop()
            return {a: _SILENCE if fb is None else fb, b: _SILENCE if fa is None else fa}
        inputs: dict[str, npt.NDArray[np.int32]] = {}
        for pid, party in parties.items():
            frame = party.queue.pop()
            if frame is not None:
                inputs[pid] = frame.astype(np.int32)
        total = np.zeros(WIDE_FRAME, dtype=np.int32)
        for frame32 in inputs.values():
            total += frame32
        out: dict[str, Pcm] = {}
        for pid in parties:
            mine = inputs.get(pid)
            mixed = total - mine if mine is not None else total
            out[pid] = np.clip(mixed, -32768, 32767).astype(np.int16)
        return out


OPUS_BITRATE = 48000
OPUS_COMPLEXITY = 5  # libopus 0–10
#: CELT only ("restricted low delay"): 2.5 ms look-ahead instead of 6.5 ms, and measured here 1.5–3× cheaper
#: to encode than "voip" (SILK/hybrid) at the same complexity; fullband, ample for speech at 48 kb/s
OPUS_APPLICATION = "lowdelay"


class OpusEncoder:
    """Mono 48 kHz Opus, 20 ms per packet, encoded on the event loop.

    aiortc's own sender encodes in a thread pool (one ``run_in_executor`` per frame) from stereo after a
    resampler; we hand it the encoded packet instead (its ``pack()`` path), which saves the thread hop, the
    stereo encode and the audio-level scan.
    """

    def __init__(
        self,
        bitrate: int = OPUS_BITRATE,
        complexity: int = OPUS_COMPLEXITY,
        application: str = OPUS_APPLICATION,
    ) -> None:
        codec: Any = av.CodecContext.create("libopus", "w")
        codec.bit_rate = bitrate
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = WIDE_RATE
        codec.time_base = _TIME_BASE
        codec.options = {"application": application, "compression_level": str(complexity)}
        self._codec = codec
        self._pts = 0

    def encode(self, samples: Pcm) -> list[bytes]:
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = WIDE_RATE
        frame.pts = self._pts
        frame.time_base = _TIME_BASE
        self._pts += samples.size
        return [bytes(p) for p in self._codec.encode(frame)]


class OpusDecoder:
    """Opus packets to 48 kHz mono 20 ms frames, decoded on the event loop (see :class:`EncodedAudioTap`)."""

    def __init__(self) -> None:
        codec: Any = av.CodecContext.create("libopus", "r")
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = WIDE_RATE
        self._codec = codec
        self._pending: Pcm | None = None
        self.errors = 0

    def decode(self, data: bytes) -> list[Pcm]:
        try:
            frames = self._codec.decode(av.Packet(data))
        except av.FFmpegError as exc:
            self.errors += 1
            if self.errors == 1:
                log.info("undecodable Opus packet (%d bytes): %s", len(data), exc)
            return []
        if len(frames) == 1 and self._pending is None:
            samples: Pcm = frames[0].to_ndarray().reshape(-1)
            if samples.size == WIDE_FRAME:
                return [samples]
        else:
            samples = (
                np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
                if frames
                else np.zeros(0, dtype=np.int16)
            )
        # packets of another duration (10, 40, 60 ms): re-cut into 20 ms frames
        if self._pending is not None:
            samples = np.concatenate([self._pending, samples])
        n = samples.size // WIDE_FRAME
        self._pending = samples[n * WIDE_FRAME :] if samples.size % WIDE_FRAME else None
        return [samples[i * WIDE_FRAME : (i + 1) * WIDE_FRAME] for i in range(n)]


def frame_to_wide(frame: av.AudioFrame, resampler: list[av.AudioResampler]) -> list[Pcm]:
    """An aiortc/PyAV audio frame as 48 kHz mono 16-bit 20 ms chunks (usually exactly one)."""
    if frame.sample_rate == WIDE_RATE and frame.format.name == "s16":
        arr = frame.to_ndarray().reshape(-1)
        channels = len(frame.layout.channels)
        mono = arr if channels == 1 else arr.reshape(-1, channels).mean(axis=1)
        samples = np.asarray(mono, dtype=np.int16)
    else:
        if not resampler:
            resampler.append(av.AudioResampler(format="s16", layout="mono", rate=WIDE_RATE))
        parts = [f.to_ndarray().reshape(-1) for f in resampler[0].resample(frame)]
        samples = np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, dtype=np.int16)
    if samples.size == WIDE_FRAME:
        return [samples]
    return [samples[i : i + WIDE_FRAME] for i in range(0, samples.size - WIDE_FRAME + 1, WIDE_FRAME)]


class BridgeTrack(MediaStreamTrack):
    """An audio track aiortc sends: one mixed 20 ms frame per bridge tick.

    Between the mixer's tick and aiortc's sender sits a :class:`FrameQueue` (bounded, trimmed), so a moment when
    the encoder lagged does not become a standing delay. With ``encode=True`` (what the gateway uses; the
    connection must negotiate Opus, see :func:`media.webrtc.prefer_opus`) ``recv()`` returns the frame already
    Opus-encoded as an ``av.Packet``, which aiortc's sender packetises as it is; otherwise an ``AudioFrame``.
    """

    kind = "audio"

    def __init__(self, max_frames: int = 3, *, encode: bool = False) -> None:
        super().__init__()
        self.queue = FrameQueue(max_frames=max_frames)
        self._ready = asyncio.Event()
        self._pts = 0
        self._encoder = OpusEncoder() if encode else None
        self._packets: deque[bytes] = deque()

    def feed(self, samples: Pcm) -> None:
        self.queue.put(samples)
        if not self._ready.is_set():
            self._ready.set()

    def stop(self) -> None:
        super().stop()
        self._ready.set()

    async def recv(self) -> Any:
        while not self._packets:
            if self.readyState != "live":
                raise MediaStreamError
            samples = self.queue.pop() if self.queue.frames else None
            if samples is None:
                self._ready.clear()
                await self._ready.wait()
                continue
            if self._encoder is None:
                frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
                frame.sample_rate = WIDE_RATE
                frame.pts = self._pts
                frame.time_base = _TIME_BASE
                self._pts += samples.size
                return frame
            self._packets.extend(self._encoder.encode(samples))
        packet = av.Packet(self._packets.popleft())
        packet.pts = self._pts
        packet.time_base = _TIME_BASE
        self._pts += WIDE_FRAME
        return packet


def attach_rtp(
    session: RtpSession,
    on_received: Callable[[Pcm], None],
    next_to_send: Callable[[], Pcm | None],
) -> Callable[[], None]:
    """Hook a running RtpSession's 20 ms tick: ``on_received`` gets each received 8 kHz frame, ``next_to_send``
    supplies what to send (mixed over prompts the session plays). Returns the detach function."""
    for name in ("_next_audio", "_record"):
        if not callable(getattr(session, name, None)):
            raise MediaError(
                f"RtpSession has no {name}(): the bridge seam moved (see media/bridge.py); expected aiortc-era "
                "media/session.py with _next_audio() and _record(samples)"
            )
    original_next: Callable[[], Pcm] = session._next_audio
    original_record: Callable[[Pcm], None] = session._record

    def next_audio() -> Pcm:
        own = original_next()
        extra = next_to_send()
        if extra is None:
            return own
        mixed: Pcm = np.clip(own.astype(np.int32) + extra, -32768, 32767).astype(np.int16)
        return mixed

    def record(samples: Pcm) -> None:
        original_record(samples)
        on_received(samples)

    inst: Any = session
    inst._next_audio = next_audio
    inst._record = record

    def detach() -> None:
        inst._next_audio = original_next
        inst._record = original_record

    return detach


class _PhonePort:
    """Glue between a Party and an RtpSession: resampling and a one-frame-ahead output slot."""

    def __init__(self, bridge: AudioBridge, party: Party, session: RtpSession) -> None:
        self.bridge = bridge
        self.party = party
        self.session = session
        self._down = Resampler("down")
        self._up = Resampler("up")
        self._out = FrameQueue(max_frames=3)
        self._silent_rx = True

    def on_received(self, samples: Pcm) -> None:
        media = self.session.media
        if media is None or not media.receives:
            return
        # the session hands us silence for gaps too: only real packets count as media in (see stats)
        self.bridge._push(self.party.id, self._up.process(samples))

    def on_mix(self, wide: Pcm) -> None:
        self._out.put(self._down.process(wide))

    def next_to_send(self) -> Pcm | None:
        return self._out.pop()


class AudioBridge:
    """Runs the mixer every 20 ms and moves audio between aiortc tracks, RTP sessions and the mixer."""

    def __init__(self, clock: Clock, *, name: str = "bridge", opus: bool = False) -> None:
        self.clock = clock
        self.name = name
        #: WebRTC outputs are Opus-encoded by us (the connections must negotiate Opus only)
        self.opus = opus
        self._taps: dict[str, EncodedAudioTap] = {}
        self.mixer = Mixer()
        #: the shared 20 ms tick (media.pacer): phone legs joined here play out before and send after the mix
        self.pacer = Pacer.of(clock)
        self._leave: Callable[[], None] | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tracks: dict[str, BridgeTrack] = {}
        self._detach: dict[str, Callable[[], None]] = {}
        self._rtp_packets: dict[str, tuple[RtpSession, int]] = {}
        self.ticks = 0
        self.closed = False

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._leave is not None or self.closed:
            return
        self._leave = self.pacer.join(Stage.MIX, self._mix_frame)

    async def close(self) -> None:
        self.closed = True
        if self._leave is not None:
            self._leave()
            self._leave = None
        for pid in list(self.mixer.parties):
            self.remove(pid)
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, MediaStreamError):
                await task

    # --- parties -----------------------------------------------------------------------------------------------
    def add_webrtc(self, party_id: str, kind: str, inbound: MediaStreamTrack | None) -> BridgeTrack:
        """Add a WebRTC party: ``inbound`` (their microphone) is read into the mix; send the returned track."""
        out = BridgeTrack(encode=self.opus)
        party = Party(party_id, kind, on_mix=out.feed)
        self.mixer.add(party)
        self._tracks[party_id] = out
        if inbound is not None:
            self.set_inbound(party_id, inbound)
        self.start()
        return out

    def new_output(self, party_id: str) -> BridgeTrack:
        """A fresh outbound track for a WebRTC party that reconnected (aiortc stops a track with its sender)."""
        party = self.mixer.parties.get(party_id)
        if party is None:
            raise MediaError(f"cannot give party {party_id!r} a new output: not in the bridge")
        old = self._tracks.get(party_id)
        if old is not None:
            old.stop()
        out = BridgeTrack(encode=self.opus)
        party.on_mix = out.feed
        self._tracks[party_id] = out
        return out

    def set_inbound(self, party_id: str, inbound: MediaStreamTrack) -> None:
        """(Re)connect the track a WebRTC party's audio comes from (after a reconnect).

        When the track's receiver has an :class:`~media.webrtc.EncodedAudioTap`, its Opus packets are decoded
        here as they arrive (no decoder thread, no task per party); otherwise a task reads the decoded track.
        """
        old = self._tasks.pop(party_id, None)
        if old is not None:
            old.cancel()
        old_tap = self._taps.pop(party_id, None)
        if old_tap is not None:
            old_tap.sink = None
        tap = encoded_audio(inbound)
        if tap is not None:
            decoder = OpusDecoder()

            def sink(data: bytes) -> None:
                for chunk in decoder.decode(data):
                    self._push(party_id, chunk)

            tap.sink = sink
            self._taps[party_id] = tap
            return
        self._tasks[party_id] = asyncio.get_running_loop().create_task(
            self._read(party_id, inbound), name=f"{self.name}:{party_id}"
        )

    def add_phone(self, party_id: str, session: RtpSession) -> None:
        """Add a phone leg whose RtpSession is running (a sip.ua Call's ``media``)."""
        party = Party(party_id, "phone")
        port = _PhonePort(self, party, session)
        party.on_mix = port.on_mix
        self.mixer.add(party)
        self._detach[party_id] = attach_rtp(session, port.on_received, port.next_to_send)
        self._rtp_packets[party_id] = (session, session.stats.packets_received)
        self.start()
        session.pace_with(self.pacer)

    def add_pcm(self, party_id: str, on_mix: Callable[[Pcm], None]) -> None:
        """A party fed by :meth:`push_pcm` and heard through ``on_mix`` (benches and tests)."""
        self.mixer.add(Party(party_id, "bench", on_mix=on_mix))
        self.start()

    def push_pcm(self, party_id: str, samples: Pcm) -> None:
        self._push(party_id, samples)

    def remove(self, party_id: str) -> None:
        self.mixer.remove(party_id)
        task = self._tasks.pop(party_id, None)
        if task is not None:
            task.cancel()
        tap = self._taps.pop(party_id, None)
        if tap is not None:
            tap.sink = None
        track = self._tracks.pop(party_id, None)
        if track is not None:
            track.stop()
        detach = self._detach.pop(party_id, None)
        if detach is not None:
            detach()
        self._rtp_packets.pop(party_id, None)

    def stats(self) -> dict[str, PartyStats]:
        return {pid: p.stats() for pid, p in self.mixer.parties.items()}

    # --- internals ---------------------------------------------------------------------------------------------
    def _push(self, party_id: str, samples: Pcm) -> None:
        if party_id in self._rtp_packets:
            # a phone's session hands us a frame every tick, silence included: count only real RTP arrivals
            session, seen = self._rtp_packets[party_id]
            now_seen = session.stats.packets_received
            if now_seen == seen:
                party = self.mixer.parties.get(party_id)
                if party is not None:
                    party.queue.put(samples)  # keep the timing; not media evidence
                return
            self._rtp_packets[party_id] = (session, now_seen)
        self.mixer.push(party_id, samples, self.clock.monotonic())

    async def _read(self, party_id: str, track: MediaStreamTrack) -> None:
        resampler: list[av.AudioResampler] = []
        try:
            while party_id in self.mixer.parties:
                frame = await track.recv()
                if not isinstance(frame, av.AudioFrame):
                    continue
                for chunk in frame_to_wide(frame, resampler):
                    self._push(party_id, chunk)
        except MediaStreamError:
            log.info("[%s] audio track of %s ended", self.name, party_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("[%s] reading audio of %s failed", self.name, party_id)

    def _mix_frame(self, frame: int, now: float) -> None:
        if self.closed:
            return
        self.ticks += 1
        parties = self.mixer.parties
        for pid, samples in self.mixer.mix().items():
            party = parties[pid]
            party.frames_out += 1
            if party.on_mix is not None:
                party.on_mix(samples)
