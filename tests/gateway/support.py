"""Test peers for the gateway: an aiortc "room tablet" with synthetic tone and video, and audio measurements.

These are real WebRTC peers (aiortc on loopback), not mocks: the gateway answers their offers over ICE/DTLS/SRTP.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from collections import deque

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

RATE = 48000
FRAME = 960


class ToneTrack(MediaStreamTrack):
    """48 kHz mono tone, paced in real time; ``paused`` stops sending packets entirely (media loss)."""

    kind = "audio"

    def __init__(self, freq: float = 440.0, amplitude: float = 0.3) -> None:
        super().__init__()
        self.freq = freq
        self.amplitude = amplitude
        self.paused = asyncio.Event()
        self.paused.set()  # set = running
        self._n = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        await self.paused.wait()
        due = self._start + self._n * FRAME / RATE
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            # after a pause, restart the pacing instead of bursting
            self._start = time.monotonic() - self._n * FRAME / RATE
        t = (np.arange(FRAME) + self._n * FRAME) / RATE
        amp = self.amplitude * 32767 if self.amplitude else 0.0
        samples = (np.sin(2 * math.pi * self.freq * t) * amp).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._n * FRAME
        frame.time_base = fractions.Fraction(1, RATE)
        self._n += 1
        return frame


class ColourTrack(MediaStreamTrack):
    """A 160×120 test picture at 15 frames/s."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._n = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._n / 15
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        img = np.full((120, 160, 3), (self._n * 7) % 255, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = self._n * 6000
        frame.time_base = fractions.Fraction(1, 90000)
        self._n += 1
        return frame


class Listener:
    """Drains a received audio track and keeps the level of recent audio."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.frames = 0
        self.recent: deque[np.ndarray] = deque(maxlen=25)
        self.task = asyncio.get_running_loop().create_task(self._run(track))

    async def _run(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if not isinstance(frame, av.AudioFrame):
                    continue
                self.frames += 1
                self.recent.append(frame.to_ndarray().reshape(-1).astype(np.float64))
        except MediaStreamError:
            return

    def dbfs(self, frames: int = 10) -> float:
        chunks = list(self.recent)[-frames:]
        if not chunks:
            return -120.0
        x = np.concatenate(chunks)
        rms = math.sqrt(float(np.mean(x * x)))
        return -120.0 if rms <= 0 else 20 * math.log10(rms / 32768)


class AiortcRoom:
    """An aiortc peer acting as the room tablet: sends a tone and a picture, listens to what the gateway sends."""

    def __init__(self, freq: float = 440.0) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.tone = ToneTrack(freq)
        self.video = ColourTrack()
        self.listener: Listener | None = None

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self.listener = Listener(track)

    async def offer(self) -> str:
        self.pc.addTrack(self.tone)
        self.pc.addTrack(self.video)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        assert self.pc.localDescription is not None
        return self.pc.localDescription.sdp

    async def answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def close(self) -> None:
        if self.listener is not None:
            self.listener.task.cancel()
        await self.pc.close()
