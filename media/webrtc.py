"""WebRTC room sessions and radiologist consoles on the server side (aiortc).

Theory of operation
-------------------
The room tablet's page publishes its camera and microphone: it sends an SDP offer (ICE gathered, no trickle)
and :class:`RoomSession` answers it with one aiortc ``RTCPeerConnection`` built from the configured ICE
servers (STUN/TURN; tests pass none). A new offer from the same room (the page reconnecting after a network
loss or a reload) replaces the old connection; consoles already watching switch to the new tracks without
renegotiating, because they are fed through :class:`SwitchableVideoTrack`.

The room's video is held through an aiortc ``MediaRelay``: one unbuffered subscription feeds the
:class:`VideoMonitor` (frame count, resolution, last frame time: what supervision needs, and it keeps
aiortc's decoded-frame queue from growing when nobody watches), one more per console. The room's audio goes
into the room's :class:`~media.bridge.AudioBridge`; what the room hears is the bridge's mix-minus, sent back
on the same connection.

A :class:`ConsoleSession` is a radiologist's browser: it receives the room's video and the bridge's mix (room
and any phone legs) and sends its microphone and, when it has one, its camera (shown in the room through the
room connection's ``video_back`` track). The room's video is *forwarded, not transcoded*: both connections
negotiate VP8, an :class:`EncodedVideoTap` on the room's receiver hands each encoded frame to every console's
:class:`PassThroughVideoTrack` (aiortc's sender packetises an ``av.Packet`` as it is), key frames are asked of
the room by RTCP PLI when a console joins or reports picture loss. The frames still reach aiortc's decoder once
per room, for the :class:`VideoMonitor` that supervision reads. (``passthrough=False`` re-encodes per console.)

Latency seam: aiortc 1.16 builds ``JitterBuffer(capacity=16, prefetch=4)`` inside ``RTCRtpReceiver`` for
audio, which holds four 20 ms frames before releasing one and stalls up to 16 packets behind a lost one.
:func:`low_latency_audio` swaps that private buffer for :class:`PassThroughAudioBuffer` (each Opus packet is
a whole frame: released at once, late ones dropped); the bridge's own small bounded buffer absorbs jitter.
:class:`EncodedAudioTap` then takes the encoded Opus frames before aiortc's per-receiver decoder thread, so
the bridge decodes them on the loop (mono), and the bridge sends Opus it encoded itself: both connections
negotiate Opus only (:func:`prefer_opus`). See docs/decisions/0042-gateway-capacity.md.
``tests/gateway/test_webrtc_seam.py`` pins the aiortc version's attribute so an upgrade that moves it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import queue
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket

from comms.clock import Clock
from media.errors import MediaError

__all__ = [
    "ConsoleSession",
    "EncodedAudioTap",
    "IceServer",
    "PassThroughAudioBuffer",
    "RoomSession",
    "SwitchableVideoTrack",
    "VideoMonitor",
    "encoded_audio",
    "low_latency_audio",
    "prefer_opus",
    "rtc_configuration",
    "tap_encoded_audio",
]

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90000
_JB_ATTR = "_RTCRtpReceiver__jitter_buffer"


@dataclass(frozen=True)
class IceServer:
    """One STUN or TURN server for ICE (``turn:`` needs ``username`` and ``credential``)."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def __post_init__(self) -> None:
        for url in self.urls:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise MediaError(f"ICE server URL {url!r}: expected stun:, turn: or turns:")
            if url.startswith(("turn:", "turns:")) and (self.username is None or self.credential is None):
                raise MediaError(f"TURN server {url!r} needs a username and a credential: got none")


def rtc_configuration(servers: Sequence[IceServer]) -> RTCConfiguration:
    """An explicit configuration: an empty list means host candidates only (aiortc's default is Google STUN)."""
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential) for s in servers
        ]
    )


class PassThroughAudioBuffer(JitterBuffer):
    """aiortc's receiver buffer interface, releasing each audio packet at once (late/duplicate ones dropped)."""

    def __init__(self) -> None:
        super().__init__(capacity=16)
        self._last: int | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._last is not None:
            diff = ((seq - self._last + 0x8000) & 0xFFFF) - 0x8000
            if 0 >= diff > -1000:
                return False, None  # late or duplicate
        self._last = seq
        data: bytes = getattr(packet, "_data", packet.payload)
        return False, JitterFrame(data=data, timestamp=packet.timestamp)


def low_latency_audio(receiver: RTCRtpReceiver) -> bool:
    """Replace an audio receiver's private aiortc jitter buffer (see the module docstring). False if absent."""
    current = getattr(receiver, _JB_ATTR, None)
    if not isinstance(current, JitterBuffer):
        log.warning("aiortc receiver has no %s: audio keeps aiortc's own buffer (+80 ms)", _JB_ATTR)
        return False
    setattr(receiver, _JB_ATTR, PassThroughAudioBuffer())
    return True


_DQ_ATTR = "_RTCRtpReceiver__decoder_queue"


class EncodedAudioTap(queue.Queue[Any]):
    """An audio receiver's encoded Opus frames, handed to ``sink`` on the event loop instead of aiortc's decoder.

    aiortc 1.16 decodes every received audio packet in a thread per receiver (stereo), and posts each decoded
    frame back to the loop with ``run_coroutine_threadsafe``: per 20 ms frame a thread hop, a coroutine, a
    future and a track task wake-up. The bridge decodes mono on the loop instead (:class:`media.bridge.
    OpusDecoder`). Installed in place of the receiver's private ``__decoder_queue`` before the receiver starts
    (pinned by a test); with no ``sink`` (or another codec) the frame goes to aiortc's decoder as before, and
    the end marker (None) always does, so the decoder thread still stops.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sink: Callable[[bytes], None] | None = None
        self.frames = 0

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        sink = self.sink
        if item is not None and sink is not None and item[0].name == "opus":
            self.frames += 1
            sink(item[1].data)
            return
        super().put(item, block, timeout)


_AUDIO_TAPS: weakref.WeakKeyDictionary[MediaStreamTrack, EncodedAudioTap] = weakref.WeakKeyDictionary()


def tap_encoded_audio(receiver: RTCRtpReceiver) -> EncodedAudioTap | None:
    """Install an :class:`EncodedAudioTap` on an audio receiver that has not started; None if the seam moved."""
    current = getattr(receiver, _DQ_ATTR, None)
    if not (isinstance(current, queue.Queue) and current.empty() and receiver.track is not None):
        log.warning("aiortc receiver has no empty %s: audio is decoded by aiortc's thread", _DQ_ATTR)
        return None
    tap = EncodedAudioTap()
    setattr(receiver, _DQ_ATTR, tap)
    _AUDIO_TAPS[receiver.track] = tap
    return tap


def encoded_audio(track: MediaStreamTrack) -> EncodedAudioTap | None:
    """The tap installed on the receiver of ``track`` (a received audio track), if any."""
    return _AUDIO_TAPS.get(track)


def prefer_opus(transceiver: RTCRtpTransceiver) -> None:
    """Negotiate Opus only on an audio transceiver (the bridge sends Opus it encoded itself)."""
    codecs = RTCRtpSender.getCapabilities("audio").codecs
    transceiver.setCodecPreferences([c for c in codecs if c.mimeType == "audio/opus"])


def _is_vp8_keyframe(data: bytes) -> bool:
    # RFC 6386 §9.1: the frame tag's lowest bit is 0 for a key frame
    return bool(data) and not data[0] & 0x01


class _TeeQueue(queue.Queue[Any]):
    """aiortc's receiver → decoder-thread queue, also handing each encoded frame to the tap (event-loop thread)."""

    def __init__(self, tap: EncodedVideoTap) -> None:
        super().__init__()
        self._tap = tap

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is not None:
            codec, frame = item
            self._tap._frame(str(codec.name), frame.data, frame.timestamp)
        super().put(item, block, timeout)


class EncodedVideoTap:
    """The room camera's *encoded* VP8 frames, forwarded to consoles without decoding or re-encoding.

    Installed on the room's video receiver (aiortc 1.16 private ``__decoder_queue``, pinned by a test); the
    frames still reach aiortc's decoder for the supervision monitor (one decode per room, no encode per console).
    A new subscriber waits for a key frame; the tap asks the room for one with an RTCP PLI (and again every
    second until it comes), and a console's own PLI is passed on to the room.
    """

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        self.receiver = receiver
        self.subscribers: set[PassThroughVideoTrack] = set()
        self.frames = 0
        self.codec = ""
        self._pli_pending = False
        self.installed = False
        current = getattr(receiver, _DQ_ATTR, None)
        if isinstance(current, queue.Queue) and current.empty():
            setattr(receiver, _DQ_ATTR, _TeeQueue(self))
            self.installed = True
        else:
            log.warning("aiortc receiver has no empty %s: consoles get re-encoded video", _DQ_ATTR)

    def request_keyframe(self) -> None:
        if self._pli_pending:
            return
        self._pli_pending = True
        asyncio.get_running_loop().create_task(self._send_pli())

    async def _send_pli(self) -> None:
        try:
            for source in self.receiver.getSynchronizationSources():
                await self.receiver._send_rtcp_pli(source.source)
        except Exception as exc:  # a closing transport: the next request retries
            log.info("could not ask the room for a key frame: %s", exc)
        finally:
            self._pli_pending = False

    def _frame(self, codec: str, data: bytes, timestamp: int) -> None:
        self.frames += 1
        self.codec = codec
        key = codec == "VP8" and _is_vp8_keyframe(data)
        for track in list(self.subscribers):
            track._offer(data, timestamp, key)

    def unsubscribe(self, track: PassThroughVideoTrack) -> None:
        self.subscribers.discard(track)


def prefer_vp8(transceiver: RTCRtpTransceiver) -> None:
    """Negotiate VP8 on a video transceiver, so that encoded frames pass between room and consoles unchanged."""
    codecs = RTCRtpSender.getCapabilities("video").codecs
    transceiver.setCodecPreferences([c for c in codecs if c.mimeType in ("video/VP8", "video/rtx")])


class PassThroughVideoTrack(MediaStreamTrack):
    """Encoded frames from an :class:`EncodedVideoTap` as ``av.Packet`` (aiortc's sender packs them as they are).

    ``rebind()`` moves it to the tap of a new room connection; it then waits for a key frame again.
    """

    kind = "video"
    MAX_QUEUED = 30

    def __init__(self, clock: Clock, tap: EncodedVideoTap | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.tap: EncodedVideoTap | None = None
        self._queue: deque[tuple[bytes, int]] = deque()
        self._ready = asyncio.Event()
        self._keyed = False
        self._asked = 0.0
        self.frames_sent = 0
        self.last_sent_mono: float | None = None
        self.rebind(tap)

    def rebind(self, tap: EncodedVideoTap | None) -> None:
        if self.tap is not None:
            self.tap.unsubscribe(self)
        self.tap = tap
        self._keyed = False
        self._queue.clear()
        if tap is not None:
            tap.subscribers.add(self)
            tap.request_keyframe()

    def _offer(self, data: bytes, timestamp: int, key: bool) -> None:
        if not self._keyed:
            if not key:
                now = self.clock.monotonic()
                if now - self._asked > 1.0 and self.tap is not None:
                    self._asked = now
                    self.tap.request_keyframe()
                return
            self._keyed = True
        if len(self._queue) >= self.MAX_QUEUED:
            # the sender fell far behind: drop the backlog and restart from a key frame
            self._queue.clear()
            self._keyed = False
            return
        self._queue.append((data, timestamp))
        self._ready.set()

    def key_needed(self) -> None:
        """The console reported picture loss (PLI/FIR): ask the room for a key frame."""
        if self.tap is not None:
            self.tap.request_keyframe()

    async def recv(self) -> av.Packet[Any]:
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        data, timestamp = self._queue.popleft()
        packet = av.Packet(data)
        packet.pts = timestamp
        packet.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.frames_sent += 1
        self.last_sent_mono = self.clock.monotonic()
        return packet

    def switch(self, source: EncodedVideoTap | None) -> None:
        self.rebind(source)

    def stop(self) -> None:
        if self.tap is not None:
            self.tap.unsubscribe(self)
        super().stop()
        self._ready.set()


class VideoMonitor:
    """Reads a video track to its end, counting frames: the evidence that video flows."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.frames = 0
        self.width = 0
        self.height = 0
        self.last_frame_mono: float | None = None
        self._task: asyncio.Task[None] | None = None

    def watch(self, track: MediaStreamTrack) -> None:
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._run(track), name="video-monitor")

    async def _run(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, av.VideoFrame):
                    self.frames += 1
                    self.width, self.height = frame.width, frame.height
                    self.last_frame_mono = self.clock.monotonic()
        except MediaStreamError:
            log.info("room video track ended after %d frames", self.frames)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class SwitchableVideoTrack(MediaStreamTrack):
    """A video track whose source can change (the room reconnected) without renegotiating the console."""

    kind = "video"

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self._source: MediaStreamTrack | None = None
        self._changed = asyncio.Event()
        self._t0 = clock.monotonic()
        self.frames_sent = 0
        self.last_sent_mono: float | None = None

    def switch(self, source: MediaStreamTrack | None) -> None:
        old, self._source = self._source, source
        if old is not None and old is not source:
            old.stop()
        self._changed.set()

    async def recv(self) -> av.VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            source = self._source
            if source is None:
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                frame = await source.recv()
            except MediaStreamError:
                if self._source is source:
                    self._source = None
                continue
            if not isinstance(frame, av.VideoFrame):
                continue
            # restamp: the source's clock restarts with every room connection
            now = self.clock.monotonic()
            frame.pts = int((now - self._t0) * VIDEO_CLOCK)
            frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
            self.frames_sent += 1
            self.last_sent_mono = now
            return frame

    def stop(self) -> None:
        if self._source is not None:
            self._source.stop()
            self._source = None
        super().stop()
        self._changed.set()


async def sample_stats(pc: RTCPeerConnection) -> dict[str, Any]:
    """The health figures of one connection: per kind packets/lost/jitter/bytes in, RTT, connection state."""
    out: dict[str, Any] = {"state": pc.connectionState}
    try:
        report = await pc.getStats()
    except Exception as exc:  # aiortc raises assorted errors on a closing connection
        out["error"] = str(exc)
        return out
    for stat in report.values():
        kind = getattr(stat, "kind", None)
        match stat.type:
            case "inbound-rtp":
                out[f"{kind}_packets_in"] = stat.packetsReceived
                out[f"{kind}_lost"] = stat.packetsLost
                out[f"{kind}_jitter"] = stat.jitter
            case "remote-inbound-rtp":
                if stat.roundTripTime is not None:
                    out[f"{kind}_rtt_ms"] = round(stat.roundTripTime * 1000, 1)
            case "transport":
                out["bytes_in"] = stat.bytesReceived
                out["bytes_out"] = stat.bytesSent
            case _:
                pass
    return out


def _audio_seams(transceiver: RTCRtpTransceiver) -> None:
    # our receive buffer and decoder on the way in, our Opus encoder on the way out (see media.bridge)
    low_latency_audio(transceiver.receiver)
    tap_encoded_audio(transceiver.receiver)
    prefer_opus(transceiver)


class RoomSession:
    """The server side of one room tablet's WebRTC session (replaced connection by connection)."""

    def __init__(
        self,
        room_code: str,
        clock: Clock,
        ice_servers: Sequence[IceServer],
        *,
        on_audio: Callable[[MediaStreamTrack], MediaStreamTrack],
        on_video: Callable[[MediaStreamTrack], None],
        on_state: Callable[[str], None],
    ) -> None:
        self.room_code = room_code
        self.clock = clock
        self.ice_servers = tuple(ice_servers)
        self.relay = MediaRelay()
        self.monitor = VideoMonitor(clock)
        self.pc: RTCPeerConnection | None = None
        self.audio_in: MediaStreamTrack | None = None
        self.video_in: MediaStreamTrack | None = None
        #: the room camera's encoded frames (None before the first connection, or if the seam moved)
        self.tap: EncodedVideoTap | None = None
        self.connected_mono: float | None = None
        self.connections = 0
        #: what the room sees: the camera of a radiologist console (nothing is sent while there is none);
        #: a new track per connection, fed from ``camera()`` (aiortc stops a track with its sender)
        self.video_back = SwitchableVideoTrack(clock)
        self.camera: Callable[[], MediaStreamTrack | None] = lambda: None
        self._on_audio = on_audio  # takes the room's microphone, returns the track the room should hear
        self._on_video = on_video
        self._on_state = on_state

    @property
    def state(self) -> str:
        return self.pc.connectionState if self.pc is not None else "new"

    async def accept_offer(self, offer_sdp: str) -> str:
        """Answer the tablet's offer; an earlier connection of this room is closed."""
        old, self.pc = self.pc, RTCPeerConnection(rtc_configuration(self.ice_servers))
        if old is not None:
            await old.close()
        pc = self.pc
        self.connections += 1
        self.audio_in = self.video_in = None
        outbound: list[MediaStreamTrack] = []

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                for transceiver in pc.getTransceivers():
                    if transceiver.receiver.track is track:
                        _audio_seams(transceiver)
                self.audio_in = track
                outbound.append(self._on_audio(track))
            elif track.kind == "video":
                self.video_in = track
                for transceiver in pc.getTransceivers():
                    if transceiver.receiver.track is track:
                        prefer_vp8(transceiver)
                        tap = EncodedVideoTap(transceiver.receiver)
                        self.tap = tap if tap.installed else None
                self.monitor.watch(self.relay.subscribe(track, buffered=False))
                self._on_video(track)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc is not self.pc:
                return
            log.info("[room=%s] WebRTC %s", self.room_code, pc.connectionState)
            if pc.connectionState == "connected":
                self.connected_mono = self.clock.monotonic()
            self._on_state(pc.connectionState)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        for track in outbound:
            pc.addTrack(track)
        if self.video_in is not None:
            self.video_back.stop()
            self.video_back = SwitchableVideoTrack(self.clock)
            self.video_back.switch(self.camera())
            pc.addTrack(self.video_back)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        local = pc.localDescription
        assert local is not None
        return str(local.sdp)

    def subscribe_video(self) -> MediaStreamTrack | None:
        return self.relay.subscribe(self.video_in, buffered=False) if self.video_in is not None else None

    async def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = await sample_stats(self.pc) if self.pc is not None else {"state": "new"}
        out.update(
            video_frames=self.monitor.frames,
            width=self.monitor.width,
            height=self.monitor.height,
            connections=self.connections,
        )
        return out

    async def close(self) -> None:
        await self.monitor.close()
        self.video_back.stop()
        if self.pc is not None:
            await self.pc.close()


class ConsoleSession:
    """A radiologist's browser: room video and the bridge's mix out, their microphone in."""

    def __init__(
        self,
        console_id: str,
        person_id: str,
        clock: Clock,
        ice_servers: Sequence[IceServer],
        *,
        passthrough: bool = True,
    ) -> None:
        self.id = console_id
        self.person_id = person_id
        self.clock = clock
        self.pc = RTCPeerConnection(rtc_configuration(ice_servers))
        #: the room's video: its encoded VP8 frames passed through, or (``passthrough=False``) re-encoded
        self.video_out: PassThroughVideoTrack | SwitchableVideoTrack = (
            PassThroughVideoTrack(clock) if passthrough else SwitchableVideoTrack(clock)
        )
        self.audio_in: MediaStreamTrack | None = None
        self.video_in: MediaStreamTrack | None = None
        self.connected_mono: float | None = None
        self.relay = MediaRelay()
        self.camera = VideoMonitor(clock)

    def subscribe_camera(self) -> MediaStreamTrack | None:
        """The radiologist's camera, for the room (None when the console sends no video)."""
        return self.relay.subscribe(self.video_in, buffered=False) if self.video_in is not None else None

    async def accept_offer(
        self,
        offer_sdp: str,
        audio_out: MediaStreamTrack,
        on_audio: Callable[[MediaStreamTrack], None],
        on_state: Callable[[str], None],
    ) -> str:
        pc = self.pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                for transceiver in pc.getTransceivers():
                    if transceiver.receiver.track is track:
                        _audio_seams(transceiver)
                self.audio_in = track
                on_audio(track)
            else:
                # the radiologist's camera: always drained by the monitor, so aiortc's queue stays bounded
                self.video_in = track
                self.camera.watch(self.relay.subscribe(track, buffered=False))

        @pc.on("connectionstatechange")
        def on_conn() -> None:
            if pc.connectionState == "connected":
                self.connected_mono = self.clock.monotonic()
            on_state(pc.connectionState)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        pc.addTrack(audio_out)
        sender = pc.addTrack(self.video_out)
        if isinstance(self.video_out, PassThroughVideoTrack):
            for transceiver in pc.getTransceivers():
                if transceiver.sender is sender:
                    prefer_vp8(transceiver)
            # aiortc answers a console's PLI by forcing a key frame in its encoder; we have none: ask the room
            setattr(sender, "_send_keyframe", self.video_out.key_needed)  # noqa: B010 - instance override
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        local = pc.localDescription
        assert local is not None
        return str(local.sdp)

    @property
    def state(self) -> str:
        return self.pc.connectionState

    async def close(self) -> None:
        self.video_out.stop()
        await self.camera.close()
        await self.pc.close()
