"""FFmpeg's own RTP muxer and demuxer (through PyAV) as an independent RTP/G.711 peer, both directions."""

from __future__ import annotations

import asyncio
import socket
import threading
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from comms.clock import SystemClock
from media.sdp import NegotiatedMedia
from media.session import MediaStarted, RtpSession


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(float)))
    return float(np.argmax(spectrum) * 8000 / samples.size)


def free_even_port() -> int:
    """An even UDP port with port+1 free too (FFmpeg's RTP demuxer binds both)."""
    for _ in range(50):
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a.bind(("127.0.0.1", 0))
        port: int = a.getsockname()[1]
        if port % 2 == 0 and port < 65535:
            b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                a.close()
                continue
            a.close()
            b.close()
            return port
        a.close()
    raise AssertionError("no free even port pair")


@pytest.mark.parametrize(("codec", "pt", "ffcodec"), [("PCMU", 0, "pcm_mulaw"), ("PCMA", 8, "pcm_alaw")])
async def test_ffmpeg_sends_we_hear(codec: str, pt: int, ffcodec: str, tmp_path: Path) -> None:
    session = await RtpSession.open(SystemClock(), "127.0.0.1")
    session.start(NegotiatedMedia("127.0.0.1", 9, codec, pt, None, 20, "sendrecv"))
    session.start_recording(tmp_path / "heard.wav")
    out = av.open(f"rtp://127.0.0.1:{session.local_port}", "w", format="rtp")
    try:
        stream: Any = out.add_stream(ffcodec, rate=8000, layout="mono")
        tone = (np.sin(2 * np.pi * 600 * np.arange(8000) / 8000) * 16000).astype(np.int16)
        for i in range(0, tone.size, 160):
            frame = av.AudioFrame.from_ndarray(tone[i : i + 160].reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = 8000
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
            await asyncio.sleep(0.02)
        assert isinstance(await asyncio.wait_for(session.events.get(), 1), MediaStarted)
        assert session.energy_dbfs(0.3) > -15
    finally:
        out.close()
        await session.close()
    stats = session.stats
    assert stats.packets_received == 50
    assert stats.lost == 0
    assert session.remote is not None
    assert session.remote[1] != 9  # latched to FFmpeg's source port
    with wave.open(str(tmp_path / "heard.wav")) as w:
        heard = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert dominant_hz(heard) == pytest.approx(600, abs=10)


@pytest.mark.parametrize(("codec", "pt"), [("PCMU", 0), ("PCMA", 8)])
async def test_we_send_ffmpeg_hears(codec: str, pt: int, tone: Callable[..., Path], tmp_path: Path) -> None:
    port = free_even_port()
    sdp = tmp_path / "peer.sdp"
    sdp.write_text(
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP {pt}\r\na=rtpmap:{pt} {codec}/8000\r\n"
    )
    heard: list[np.ndarray] = []

    def ffmpeg_reader() -> None:
        options = {"protocol_whitelist": "file,udp,rtp", "reorder_queue_size": "0"}
        with av.open(str(sdp), format="sdp", options=options, timeout=3) as container:
            loud = 0
            for frame in container.decode(audio=0):
                chunk = frame.to_ndarray().reshape(-1)
                heard.append(chunk)
                loud += int(np.count_nonzero(np.abs(chunk) > 1000))
                if loud >= 4000:
                    break

    reader = threading.Thread(target=ffmpeg_reader, daemon=True)
    reader.start()
    session = await RtpSession.open(SystemClock(), "127.0.0.1")
    try:
        session.start(NegotiatedMedia("127.0.0.1", port, codec, pt, None, 20, "sendrecv"))
        await session.play(tone(seconds=1.0, freq=700))
        await asyncio.to_thread(reader.join, 5)
    finally:
        await session.close()
    assert not reader.is_alive()
    samples = np.concatenate(heard)
    samples = samples[np.argmax(np.abs(samples) > 1000) :]  # from the start of the tone
    assert dominant_hz(samples) == pytest.approx(700, abs=10)
