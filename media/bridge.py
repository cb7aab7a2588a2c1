"""The audio bridge: a mix-minus conference of the room (WebRTC, Opus 48 kHz) and phone legs (G.711 8 kHz).

Theory of operation
-------------------
Every party (the room tablet, a radiologist's browser, a phone leg) is a :class:`Party` with one small
bounded input buffer (:class:`FrameQueue`) of 20 ms frames of 48 kHz mono 16-bit audio. The
:class:`Mixer` (pure: no clock, no I/O) takes one frame from every party per tick and gives each party the sum
of everybody else (mix-minus: nobody hears themselves), clipped to 16 bits. With two parties this is a plain
cross-connect; with three or more (technologist on the phone, radiologist, room) it is a conference.

:class:`AudioBridge` is the asyncio adapter: a 20 ms tick from the one :class:`~comms.clock.Clock`, scheduled
at ``t0 + k × 20 ms`` so it does not drift, skipping (not bursting) after a stall. Inputs and outputs:

* a WebRTC party is read from its aiortc track by a task (frames converted to 48 kHz mono on arrival) and
  written through a :class:`BridgeTrack`, a ``MediaStreamTrack`` that hands aiortc one mixed frame per tick;
* a phone party is an :class:`~media.session.RtpSession`: the session's own 20 ms tick pulls the next frame
  to send from us and hands us each received frame (decoded G.711, 8 kHz); :class:`Resampler` converts
  8 kHz ↔ 48 kHz with a windowed-sinc polyphase FIR in numpy (121 taps at 48 kHz, 1.25 ms group delay, no
  extra buffering), so a conversion never adds more than that.

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

from comms.clock import Clock, TimerHandle
from media import audio
from media.errors import MediaError
from media.session import RtpSession

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


def _design_lowpass(taps: int, cutoff_hz: float, rate: int) -> npt.NDArray[np.float64]:
    n = np.arange(taps) - (taps - 1) / 2.0
    h = np.sinc(2.0 * cutoff_hz / rate * n) * np.hamming(taps)
    return np.asarray(h / h.sum(), dtype=np.float64)


_FIR = _design_lowpass(121, 3600.0, WIDE_RATE)
_RATIO = WIDE_RATE // NARROW_RATE


class Resampler:
    """8 kHz ↔ 48 kHz for 20 ms frames, stateful (filter history carried across frames)."""

    def __init__(self, direction: str) -> None:
        if direction not in ("down", "up"):
            raise ValueError(f"resampler direction {direction!r}: expected 'down' or 'up'")
        self.direction = direction
        self._hist = np.zeros(_FIR.size - 1, dtype=np.float64)

    def process(self, samples: Pcm) -> Pcm:
        if self.direction == "down":
            if samples.size != WIDE_FRAME:
                raise MediaError(f"downsampling a frame of {samples.size} samples: expected {WIDE_FRAME}")
            x = samples.astype(np.float64)
        else:
            if samples.size != NARROW_FRAME:
                raise MediaError(f"upsampling a frame of {samples.size} samples: expected {NARROW_FRAME}")
            x = np.zeros(WIDE_FRAME, dtype=np.float64)
            x[::_RATIO] = samples.astype(np.float64) * _RATIO
        buf = np.concatenate([self._hist, x])
        self._hist = buf[-(_FIR.size - 1) :]
        y = np.convolve(buf, _FIR, mode="valid")  # exactly len(x) outputs
        if self.direction == "down":
            y = y[::_RATIO]
        return np.asarray(np.clip(np.rint(y), -32768, 32767), dtype=np.int16)


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
    level_dbfs: float = audio.FLOOR_DBFS
    on_mix: Callable[[Pcm], None] | None = None

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
        party.level_dbfs = audio.energy_dbfs(samples)

    def mix(self) -> dict[str, Pcm]:
        """One tick: each party's output frame (what everybody else said)."""
        inputs: dict[str, npt.NDArray[np.int32]] = {}
        for pid, party in self.parties.items():
            frame = party.queue.pop()
            if frame is not None:
                inputs[pid] = frame.astype(np.int32)
        total = np.zeros(WIDE_FRAME, dtype=np.int32)
        for frame32 in inputs.values():
            total += frame32
        out: dict[str, Pcm] = {}
        for pid in self.parties:
            mine = inputs.get(pid)
            mixed = total - mine if mine is not None else total
            out[pid] = np.clip(mixed, -32768, 32767).astype(np.int16)
        return out


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
    the encoder lagged does not become a standing delay.
    """

    kind = "audio"

    def __init__(self, max_frames: int = 3) -> None:
        super().__init__()
        self.queue = FrameQueue(max_frames=max_frames)
        self._ready = asyncio.Event()
        self._pts = 0

    def feed(self, samples: Pcm) -> None:
        self.queue.put(samples)
        self._ready.set()

    def stop(self) -> None:
        super().stop()
        self._ready.set()

    async def recv(self) -> av.AudioFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            samples = self.queue.pop() if self.queue.frames else None
            if samples is not None:
                break
            self._ready.clear()
            await self._ready.wait()
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = WIDE_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, WIDE_RATE)
        self._pts += samples.size
        return frame


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

    def __init__(self, clock: Clock, *, name: str = "bridge") -> None:
        self.clock = clock
        self.name = name
        self.mixer = Mixer()
        self._timer: TimerHandle | None = None
        self._t0 = 0.0
        self._k = 0
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tracks: dict[str, BridgeTrack] = {}
        self._detach: dict[str, Callable[[], None]] = {}
        self._rtp_packets: dict[str, tuple[RtpSession, int]] = {}
        self.ticks = 0
        self.closed = False

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._timer is not None or self.closed:
            return
        self._t0 = self.clock.monotonic()
        self._k = 0
        self._timer = self.clock.call_later(0.0, self._tick)

    async def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
        out = BridgeTrack()
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
        out = BridgeTrack()
        party.on_mix = out.feed
        self._tracks[party_id] = out
        return out

    def set_inbound(self, party_id: str, inbound: MediaStreamTrack) -> None:
        """(Re)connect the track a WebRTC party's audio comes from (after a reconnect)."""
        old = self._tasks.pop(party_id, None)
        if old is not None:
            old.cancel()
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

    def _tick(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self.clock.monotonic()
        due = int((now - self._t0) / FRAME_S + 1e-6)
        if due - self._k >= MAX_CATCH_UP:
            log.info("[%s] mixer stalled %.0f ms: skipping", self.name, (due - self._k) * FRAME_S * 1000)
            self._k = due
        try:
            while self._k <= due:
                self._k += 1
                self.ticks += 1
                for pid, samples in self.mixer.mix().items():
                    party = self.mixer.parties[pid]
                    party.frames_out += 1
                    if party.on_mix is not None:
                        party.on_mix(samples)
        except Exception:
            log.exception("[%s] mixer tick failed", self.name)
        finally:
            self._timer = self.clock.call_later(self._t0 + self._k * FRAME_S - now, self._tick)
