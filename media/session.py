"""RtpSession: the asyncio adapter that carries one G.711 RTP stream (RFC 3550, RFC 4733) over UDP.

How it runs
-----------
``open()`` binds a UDP socket. ``start(media)`` begins a 20 ms tick driven by the :class:`~comms.clock.Clock`:
tick ``k`` is scheduled at ``t0 + k × 20 ms`` (computed from ``clock.monotonic()``, never "now + 20 ms"), so
pacing does not drift; if the loop stalls for more than 100 ms the missed frames are skipped (timestamps still
advance with real time) instead of being sent in a burst. Each tick:

* sends one packet when our direction sends: the next RFC 4733 packet if a digit is being sent, else the next
  20 ms of the prompt being played, else silence (prompt time runs on while on hold, so ``play()`` still
  returns);
* pops one frame from the :class:`~media.jitter.JitterBuffer` when our direction receives, decodes it (silence
  for a gap) and appends it to the recent-audio ring (``energy_dbfs``) and the recording;
* checks inactivity: no packet for ``inactivity_timeout`` seconds while the peer should send gives
  :class:`MediaInactive`; the next packet gives :class:`MediaRestored`.

A session joined to an audio bridge leaves its own timer for the shared :class:`~media.pacer.Pacer`
(:meth:`RtpSession.pace_with`): one timer for every session and bridge, the receive half of each frame before
the bridges mix and the send half after.

Symmetric RTP: we send to the SDP address until the first packet arrives, then to the packet's source (latched
once per remote SDP address; an update with a new address re-arms the latch). Packets from any source are
accepted.

Received RFC 4733 packets are handled on arrival (not through the jitter buffer); a digit is reported on the
first packet of a new event (see :mod:`media.dtmf`). :class:`MediaStarted` is the first RTP packet after
``start()``. Limitations: we send 20 ms packets whatever the peer's ``ptime``; received packets of another
length are played one per tick (so a 30 ms peer causes periodic underruns, not wrong audio); comfort noise (PT
13) and RTCP are dropped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from comms.clock import Clock, TimerHandle
from media import audio
from media.dtmf import DtmfReceiver, PlannedPacket, plan_digit
from media.errors import MediaError, RtpParseError
from media.jitter import JitterBuffer
from media.pacer import Pacer, Stage
from media.rtp import ReceptionStats, RtpPacket, RtpSender
from media.sdp import NegotiatedMedia

__all__ = [
    "DtmfReceived",
    "MediaError",
    "MediaEvent",
    "MediaInactive",
    "MediaRestored",
    "MediaStarted",
    "RtpSession",
    "RtpStats",
]

log = logging.getLogger(__name__)

FRAME_S = 0.020
MAX_CATCH_UP = 5  # frames; beyond this a stall is skipped, not burst
RECENT_FRAMES = 250  # 5 s of received audio for energy_dbfs


@dataclass(frozen=True)
class MediaStarted:
    """The first RTP packet arrived after start()."""

    utc: dt.datetime
    mono: float


@dataclass(frozen=True)
class DtmfReceived:
    """An RFC 4733 digit arrived (reported on the first packet of a new event)."""

    digit: str
    utc: dt.datetime
    mono: float


@dataclass(frozen=True)
class MediaInactive:
    """No RTP for ``seconds`` while the peer should be sending."""

    seconds: float
    utc: dt.datetime
    mono: float


@dataclass(frozen=True)
class MediaRestored:
    """RTP arrived again after MediaInactive."""

    utc: dt.datetime
    mono: float


MediaEvent = MediaStarted | DtmfReceived | MediaInactive | MediaRestored


@dataclass(frozen=True)
class RtpStats:
    """Counters of one session. Bytes are RTP payload octets (as in RTCP sender reports)."""

    packets_sent: int
    bytes_sent: int
    packets_received: int
    bytes_received: int
    lost: int
    jitter_ms: float


@dataclass
class _Playback:
    samples: audio.Samples
    future: asyncio.Future[None]
    pos: int = 0


@dataclass
class _DigitOut:
    digit: str
    packets: list[PlannedPacket]
    future: asyncio.Future[None]
    timestamp: int | None = None  # samples offset of the event start, fixed at the first packet
    sent: int = 0


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.session: RtpSession | None = None

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.session is not None:
            self.session._on_datagram(data, (str(addr[0]), int(addr[1])))

    errors = 0

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable comes back on every send to a gone peer: log the first, count the rest
        self.errors += 1
        port = self.session.local_port if self.session is not None else 0
        if self.errors == 1:
            log.info("RTP socket error on port %d: %s (further errors logged at DEBUG)", port, exc)
        else:
            log.debug("RTP socket error on port %d: %s (%d so far)", port, exc, self.errors)


class RtpSession:
    """One RTP stream over UDP. ``open()`` binds; ``start()`` begins 20 ms paced sending and receiving."""

    local_port: int
    events: asyncio.Queue[MediaEvent]

    def __init__(
        self,
        clock: Clock,
        transport: asyncio.DatagramTransport,
        local: tuple[str, int],
        inactivity_timeout: float,
    ) -> None:
        self._clock = clock
        self._transport = transport
        self.local_host, self.local_port = local
        self.inactivity_timeout = inactivity_timeout
        self.events = asyncio.Queue()
        self.state = "idle"
        self._media: NegotiatedMedia | None = None
        self._remote: tuple[str, int] | None = None
        self._latched = False
        self._sender = RtpSender()
        self._t0 = 0.0
        self._k = 0  # next frame index to process
        self._timer: TimerHandle | None = None
        self._paced: tuple[Callable[[], None], ...] = ()  # leave functions while on a shared Pacer
        self._pace_offset = 0
        self._marker_next = True
        self._playbacks: deque[_Playback] = deque()
        self._digits: deque[_DigitOut] = deque()
        self._rx = ReceptionStats()
        self._rx_packets = 0
        self._rx_octets = 0
        self._lost_before = 0
        self._jb = JitterBuffer()
        self._dtmf_rx = DtmfReceiver()
        self._recent: deque[audio.Samples] = deque(maxlen=RECENT_FRAMES)
        self._recorder: audio.WavWriter | None = None
        self._source: Callable[[], audio.Samples | None] | None = None
        self._sink: Callable[[audio.Samples], None] | None = None
        self._last_rx = 0.0
        self._inactive = False
        self._media_started = False

    # --- lifecycle --------------------------------------------------------------------------------------
    @classmethod
    async def open(
        cls, clock: Clock, host: str, port: int = 0, *, inactivity_timeout: float = 5.0
    ) -> RtpSession:
        """Bind a UDP socket on ``host:port`` (0: the OS picks)."""
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.create_datagram_endpoint(_Protocol, local_addr=(host, port))
        except OSError as exc:
            raise MediaError(f"cannot bind RTP socket on {host}:{port}: {exc}") from exc
        sockname = transport.get_extra_info("sockname")
        session = cls(clock, transport, (str(sockname[0]), int(sockname[1])), inactivity_timeout)
        protocol.session = session
        log.debug("RTP session bound on %s:%d", session.local_host, session.local_port)
        return session

    def _set_state(self, state: str) -> None:
        if state != self.state:
            log.info("RTP %s:%d %s -> %s", self.local_host, self.local_port, self.state, state)
            self.state = state

    def _event(self, event: MediaEvent) -> None:
        self.events.put_nowait(event)

    def start(self, media: NegotiatedMedia) -> None:
        """Begin paced sending (silence when idle) and receiving with what offer/answer agreed."""
        if self.state != "idle":
            raise MediaError(
                f"cannot start an RTP session in state {self.state}: expected idle (use update())"
            )
        self._set_state("running")
        self._apply(media)
        self._t0 = self._clock.monotonic()
        self._k = 0
        self._last_rx = self._t0
        self._schedule(0.0)

    def update(self, media: NegotiatedMedia) -> None:
        """Apply a new offer/answer (re-INVITE): new address, codec or direction (hold/unhold)."""
        if self.state != "running":
            raise MediaError(f"cannot update an RTP session in state {self.state}: expected running")
        self._apply(media)
        self._last_rx = self._clock.monotonic()

    def _apply(self, media: NegotiatedMedia) -> None:
        old = self._media
        self._media = media
        if old is None or (old.remote_host, old.remote_port) != (media.remote_host, media.remote_port):
            self._remote = (media.remote_host, media.remote_port)
            self._latched = False
        if old is not None and old.direction != media.direction:
            log.info("RTP direction %s -> %s", old.direction, media.direction)
        if not media.sends:
            self._marker_next = True
        if not media.sends or media.dtmf_payload_type is None:
            for d in self._digits:
                if not d.future.done():
                    d.future.set_exception(
                        MediaError(
                            f"DTMF {d.digit!r} dropped by a media update: direction {media.direction}, "
                            f"telephone-event payload type {media.dtmf_payload_type}"
                        )
                    )
            self._digits.clear()

    async def close(self) -> None:
        """Stop sending, close the socket, fail pending play()/send_dtmf() with MediaError."""
        if self.state == "closed":
            return
        self._set_state("closed")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for leave in self._paced:
            leave()
        self._paced = ()
        self._transport.close()
        self.stop_recording()
        futures = [p.future for p in self._playbacks] + [d.future for d in self._digits]
        for fut in futures:
            if not fut.done():
                fut.set_exception(MediaError("RTP session closed before the media was sent"))
        self._playbacks.clear()
        self._digits.clear()

    # --- sending ----------------------------------------------------------------------------------------
    def _check_running(self, what: str) -> NegotiatedMedia:
        if self.state != "running" or self._media is None:
            raise MediaError(f"cannot {what} in state {self.state}: expected running (call start() first)")
        return self._media

    async def play(self, wav_path: Path) -> None:
        """Play an 8 kHz mono 16-bit WAV (others are resampled); returns when the last frame went out.

        Cancel-safe: cancelling the caller removes the prompt. Prompts queue behind each other.
        """
        self._check_running(f"play {wav_path}")
        samples = audio.load_wav(Path(wav_path))
        item = _Playback(samples, asyncio.get_running_loop().create_future())
        if samples.size == 0:
            return
        self._playbacks.append(item)
        try:
            await item.future
        except asyncio.CancelledError:
            if item in self._playbacks:
                self._playbacks.remove(item)
            raise

    async def send_dtmf(self, digit: str, duration_ms: int = 160) -> None:
        """Send one digit as RFC 4733 events; returns after the third end packet."""
        media = self._check_running(f"send DTMF {digit!r}")
        if media.dtmf_payload_type is None:
            raise MediaError(f"cannot send DTMF {digit!r}: the peer did not negotiate telephone-event")
        if not media.sends:
            raise MediaError(f"cannot send DTMF {digit!r} while direction is {media.direction}")
        item = _DigitOut(digit, plan_digit(digit, duration_ms), asyncio.get_running_loop().create_future())
        # the caller may be cancelled while the event finishes: nobody else reads the outcome
        item.future.add_done_callback(_consume)
        self._digits.append(item)
        try:
            await asyncio.shield(item.future)
        except asyncio.CancelledError:
            if item.sent == 0 and item in self._digits:
                self._digits.remove(item)  # not begun: drop; once begun it finishes so no tone hangs
            raise

    def _schedule(self, delay: float) -> None:
        self._timer = self._clock.call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.state != "running":
            return
        now = self._clock.monotonic()
        due = int((now - self._t0) / FRAME_S + 1e-6)  # last frame index that is due
        if due - self._k >= MAX_CATCH_UP:
            skipped = due - self._k
            log.info("RTP pacing stalled %.0f ms: skipping %d frames", skipped * FRAME_S * 1000, skipped)
            self._k = due
        try:
            while self._k <= due:
                self._k += 1
                self._frame(self._k - 1, now)
        except Exception:
            # a timer callback has no caller to raise to: log loudly and keep the stream paced
            log.exception("RTP frame %d on port %d failed", self._k - 1, self.local_port)
        finally:
            self._schedule(self._t0 + self._k * FRAME_S - now)

    def pace_with(self, pacer: Pacer) -> None:
        """Run this session's 20 ms frames on a shared :class:`~media.pacer.Pacer` instead of its own timer.

        The session plays out its received frame at the pacer's ``RECEIVE`` stage (before the bridges mix) and
        sends at ``SEND`` (after), so a bridge adds no tick phase of its own. Frame numbering (RTP timestamps)
        continues; the send phase moves once by less than one frame. Idempotent.
        """
        if self.state != "running":
            raise MediaError(f"cannot pace an RTP session in state {self.state}: expected running")
        if self._paced:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        leave_rx = pacer.join(Stage.RECEIVE, self._paced_receive)
        leave_tx = pacer.join(Stage.SEND, self._paced_send)
        self._paced = (leave_rx, leave_tx)
        self._pace_offset = self._k - pacer.frame

    def _paced_receive(self, frame: int, now: float) -> None:
        if self.state == "running":
            self._receive_frame(now)

    def _paced_send(self, frame: int, now: float) -> None:
        if self.state == "running":
            k = frame + self._pace_offset
            self._k = k + 1
            self._send_frame(k)

    def _frame(self, k: int, now: float) -> None:
        self._send_frame(k)
        self._receive_frame(now)

    def _send_frame(self, k: int) -> None:
        media = self._media
        assert media is not None
        ts = k * audio.SAMPLES_PER_FRAME
        if media.sends and self._remote is not None:
            if self._digits and media.dtmf_payload_type is not None:
                self._send_digit_packet(media.dtmf_payload_type, ts)
            else:
                self._send(media.payload_type, ts, audio.encode(media.codec, self._next_audio()))
        else:
            self._next_audio()  # prompt time runs on while we may not send

    def _receive_frame(self, now: float) -> None:
        media = self._media
        assert media is not None
        if media.receives:
            payload = self._jb.pop()
            samples = (
                audio.decode(media.codec, payload)
                if payload
                else np.zeros(audio.SAMPLES_PER_FRAME, dtype=np.int16)
            )
            self._recent.append(samples)
            self._record(samples)
            if self._sink is not None:
                self._sink(samples)
            quiet = now - self._last_rx
            if not self._inactive and quiet >= self.inactivity_timeout:
                self._inactive = True
                log.info("RTP inactive for %.1f s on port %d", quiet, self.local_port)
                self._event(MediaInactive(quiet, self._clock.now(), now))
        else:
            self._record(np.zeros(audio.SAMPLES_PER_FRAME, dtype=np.int16))

    def _record(self, samples: audio.Samples) -> None:
        if self._recorder is None:
            return
        try:
            self._recorder.write(samples)
        except OSError as exc:
            log.error("recording to %s stopped: %s", self._recorder.path, exc)
            self._recorder = None

    def _next_audio(self) -> audio.Samples:
        n = audio.SAMPLES_PER_FRAME
        while self._playbacks and self._playbacks[0].future.done():
            self._playbacks.popleft()  # cancelled from outside
        if not self._playbacks:
            fed = self._source() if self._source is not None else None
            if fed is None:
                return np.zeros(n, dtype=np.int16)
            if fed.size != n:
                fed = (
                    np.resize(fed, n)
                    if fed.size > n
                    else np.concatenate([fed, np.zeros(n - fed.size, np.int16)])
                )
            return fed.astype(np.int16, copy=False)
        pb = self._playbacks[0]
        chunk = pb.samples[pb.pos : pb.pos + n]
        pb.pos += n
        if pb.pos >= pb.samples.size:
            self._playbacks.popleft()
            pb.future.set_result(None)
        if chunk.size < n:
            chunk = np.concatenate([chunk, np.zeros(n - chunk.size, dtype=np.int16)])
        return chunk

    def _send_digit_packet(self, pt: int, ts: int) -> None:
        d = self._digits[0]
        if d.timestamp is None:
            d.timestamp = ts
        planned = d.packets[d.sent]
        d.sent += 1
        self._send(pt, d.timestamp, planned.payload, marker=planned.marker)
        if d.sent == len(d.packets):
            self._digits.popleft()
            self._marker_next = True
            if not d.future.done():
                d.future.set_result(None)

    def _send(self, pt: int, ts: int, payload: bytes, *, marker: bool = False) -> None:
        assert self._remote is not None
        if pt == (self._media.payload_type if self._media else -1):
            marker, self._marker_next = self._marker_next, False
        data = self._sender.packet(pt, ts, payload, marker=marker)
        try:
            self._transport.sendto(data, self._remote)
        except OSError as exc:  # pragma: no cover - UDP sendto rarely fails synchronously
            log.info("RTP send to %s:%d failed: %s", *self._remote, exc)

    # --- receiving --------------------------------------------------------------------------------------
    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        media = self._media
        if self.state != "running" or media is None:
            return
        try:
            pkt = RtpPacket.parse(data)
        except RtpParseError as exc:
            log.debug("dropped datagram from %s:%d: %s", *addr, exc)
            return
        if pkt.payload_type not in (media.payload_type, media.dtmf_payload_type):
            log.debug("dropped RTP payload type %d from %s:%d", pkt.payload_type, *addr)
            return
        now = self._clock.monotonic()
        if not self._latched:
            if addr != self._remote:
                log.info("symmetric RTP: latching to %s:%d (SDP said %s)", *addr, self._remote)
            self._remote = addr
            self._latched = True
        if self._rx.ssrc is not None and pkt.ssrc != self._rx.ssrc:
            log.info("RTP source changed: SSRC %08x -> %08x", self._rx.ssrc, pkt.ssrc)
            self._lost_before += self._rx.lost
            self._jb = JitterBuffer()  # a new source numbers from a new random sequence
        is_dtmf = pkt.payload_type == media.dtmf_payload_type
        if self._rx.update(pkt, now, audio=not is_dtmf):
            self._rx_packets += 1
            self._rx_octets += len(pkt.payload)
        self._last_rx = now
        if not self._media_started:
            self._media_started = True
            self._event(MediaStarted(self._clock.now(), now))
        if self._inactive:
            self._inactive = False
            log.info("RTP restored on port %d", self.local_port)
            self._event(MediaRestored(self._clock.now(), now))
        if is_dtmf:
            try:
                digit = self._dtmf_rx.receive(pkt.payload, pkt.timestamp, pkt.marker)
            except MediaError as exc:
                log.info("bad telephone-event from %s:%d: %s", *addr, exc)
                return
            if digit is not None:
                self._event(DtmfReceived(digit, self._clock.now(), now))
            self._jb.put(pkt.sequence_number, pkt.timestamp, None, now)
        else:
            self._jb.put(pkt.sequence_number, pkt.timestamp, pkt.payload, now)

    # --- measuring and recording -----------------------------------------------------------------------
    def energy_dbfs(self, window_s: float = 0.5) -> float:
        """Level of the last ``window_s`` of received audio (gaps count as silence); -120.0 when none."""
        n = max(1, round(window_s / FRAME_S))
        frames = list(self._recent)[-n:]
        if not frames:
            return audio.FLOOR_DBFS
        return audio.energy_dbfs(np.concatenate(frames))

    def attach(
        self,
        *,
        source: Callable[[], audio.Samples | None] | None = None,
        sink: Callable[[audio.Samples], None] | None = None,
    ) -> None:
        """Connect live audio (a bridge or mixer): called from the 20 ms tick, so keep both cheap.

        ``source()`` gives the next 160 samples (8 kHz int16) to send, or None for silence; a prompt being played
        takes priority over it. ``sink(samples)`` gets every 20 ms frame played out of the jitter buffer (silence
        for gaps) while our direction receives. ``attach()`` with no arguments detaches both.
        """
        self._source = source
        self._sink = sink

    def start_recording(self, path: Path) -> None:
        """Record received audio (one 20 ms frame per tick, silence in gaps) to an 8 kHz mono WAV."""
        self.stop_recording()
        self._recorder = audio.WavWriter(Path(path))

    def stop_recording(self) -> None:
        if self._recorder is not None:
            self._recorder.close()
            self._recorder = None

    @property
    def stats(self) -> RtpStats:
        return RtpStats(
            packets_sent=self._sender.packets,
            bytes_sent=self._sender.octets,
            packets_received=self._rx_packets,
            bytes_received=self._rx_octets,
            lost=self._lost_before + self._rx.lost,
            jitter_ms=self._rx.jitter_ms,
        )

    @property
    def remote(self) -> tuple[str, int] | None:
        """Where we send (the SDP address, or the latched source)."""
        return self._remote

    @property
    def media(self) -> NegotiatedMedia | None:
        return self._media
