"""G.711 per-frame cost: our numpy tables vs aiortc's PyAV-based PcmuEncoder/PcmuDecoder, and RtpSession tick cost.

Run: uv run python bench/media_g711.py
"""

from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
from aiortc.codecs.g711 import PcmuDecoder, PcmuEncoder
from aiortc.jitterbuffer import JitterFrame

from comms.clock import FakeClock
from media import audio
from media.sdp import NegotiatedMedia
from media.session import RtpSession

N = 20000


def per_frame(label: str, fn: object) -> None:
    assert callable(fn)
    fn()
    t = time.perf_counter()
    for _ in range(N):
        fn()
    print(f"{label:<40} {(time.perf_counter() - t) / N * 1e6:8.1f} µs/frame")


def main() -> None:
    samples = (np.sin(np.arange(160) / 8000 * 2 * np.pi * 440) * 8000).astype(np.int16)
    payload = audio.encode("PCMU", samples)
    per_frame("numpy table encode (ours)", lambda: audio.encode("PCMU", samples))
    per_frame("numpy table decode (ours)", lambda: audio.decode("PCMU", payload))

    enc, dec = PcmuEncoder(), PcmuDecoder()
    pts = [0]

    def aiortc_encode() -> None:
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 8000
        frame.pts = pts[0]
        frame.time_base = fractions.Fraction(1, 8000)
        pts[0] += 160
        enc.encode(frame)

    per_frame("aiortc PcmuEncoder.encode (PyAV)", aiortc_encode)
    per_frame(
        "aiortc PcmuDecoder.decode (PyAV)",
        lambda: [f.to_ndarray() for f in dec.decode(JitterFrame(data=payload, timestamp=0))],  # type: ignore[attr-defined]
    )
    asyncio.run(ticks())


async def ticks() -> None:
    """Cost of one 20 ms tick (send a frame, pop the jitter buffer) for 100 sessions under a FakeClock."""
    clock = FakeClock()
    sessions = [await RtpSession.open(clock, "127.0.0.1") for _ in range(100)]
    sink = await RtpSession.open(clock, "127.0.0.1")
    for s in sessions:
        s.start(NegotiatedMedia("127.0.0.1", sink.local_port, "PCMU", 0, 101, 20, "sendrecv"))
    t = time.perf_counter()
    clock.advance(10.0)  # 500 ticks each
    elapsed = time.perf_counter() - t
    print(f"{'RtpSession tick (send+pop), 100 sessions':<40} {elapsed / (100 * 501) * 1e6:8.1f} µs/frame")
    print(f"{'  = share of one core per call':<40} {elapsed / (100 * 10.0) * 100:8.2f} %")
    for s in [*sessions, sink]:
        await s.close()


if __name__ == "__main__":
    main()
