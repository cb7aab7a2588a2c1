"""G.711 (µ-law / A-law) with numpy tables, WAV prompts in and out, and signal level. Pure except WAV file
I/O.

The G.711 tables are computed once from the ITU-T G.711 segment rules (the classic Sun ``g711.c`` algorithm):
a 65,536-entry table maps every 16-bit sample to its code and a 256-entry table maps codes back. A lookup is a
single numpy indexing operation per 160-sample frame, and the tests check the tables against FFmpeg's
``pcm_mulaw``/``pcm_alaw`` encoders (through PyAV) so the hand-written tables are verified by an independent
codec.
"""

from __future__ import annotations

import functools
import math
import struct
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

from media.errors import MediaError

__all__ = [
    "RATE",
    "SAMPLES_PER_FRAME",
    "WavWriter",
    "decode",
    "encode",
    "energy_dbfs",
    "load_wav",
    "silence_payload",
]

RATE = 8000
SAMPLES_PER_FRAME = 160
Samples = npt.NDArray[np.int16]
FLOOR_DBFS = -120.0


_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
_ALL = np.arange(-32768, 32768, dtype=np.int64)


def _ulaw_encode_all() -> npt.NDArray[np.int64]:
    """µ-law code of every 16-bit sample, vectorised g711.c ``linear2ulaw``."""
    pcm = _ALL >> 2  # 14-bit, arithmetic shift as in g711.c
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    pcm = np.minimum(np.abs(pcm), 8159) + 0x21
    seg = np.searchsorted(_ULAW_SEG_END, pcm)  # first segment whose end >= pcm
    code = (seg << 4) | ((pcm >> np.minimum(seg + 1, 8)) & 0x0F)
    return np.asarray(np.where(seg >= 8, 0x7F, code) ^ mask, dtype=np.int64)


def _alaw_encode_all() -> npt.NDArray[np.int64]:
    """A-law code of every 16-bit sample, vectorised g711.c ``linear2alaw``."""
    pcm = _ALL >> 3  # 13-bit
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    pcm = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_ALAW_SEG_END, pcm)
    shift = np.where(seg < 2, 1, np.minimum(seg, 8))
    code = (seg << 4) | ((pcm >> shift) & 0x0F)
    return np.asarray(np.where(seg >= 8, 0x7F, code) ^ mask, dtype=np.int64)


def _ulaw_decode(code: int) -> int:
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return (0x84 - t) if u & 0x80 else (t - 0x84)


def _alaw_decode(code: int) -> int:
    a = code ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


@functools.cache
def _tables(codec: str) -> tuple[npt.NDArray[np.uint8], Samples]:
    if codec == "PCMU":
        enc, dec_f = _ulaw_encode_all(), _ulaw_decode
    elif codec == "PCMA":
        enc, dec_f = _alaw_encode_all(), _alaw_decode
    else:
        raise MediaError(f"cannot code audio as {codec!r}: expected 'PCMU' or 'PCMA'")
    # the encode table is indexed by the sample's bit pattern as uint16: reorder from -32768..32767
    by_pattern = np.roll(enc.astype(np.uint8), -32768)
    dec = np.array([dec_f(c) for c in range(256)], dtype=np.int16)
    return by_pattern, dec


def encode(codec: str, samples: Samples) -> bytes:
    """16-bit linear samples -> G.711 bytes."""
    enc, _ = _tables(codec)
    return enc[samples.astype(np.int16).view(np.uint16)].tobytes()


def decode(codec: str, payload: bytes) -> Samples:
    """G.711 bytes -> 16-bit linear samples."""
    _, dec = _tables(codec)
    return dec[np.frombuffer(payload, dtype=np.uint8)]


def silence_payload(codec: str, samples: int = SAMPLES_PER_FRAME) -> bytes:
    return encode(codec, np.zeros(samples, dtype=np.int16))


def energy_dbfs(samples: Samples) -> float:
    """RMS level relative to full scale (a full-scale square wave is 0 dBFS); -120.0 for digital silence."""
    if samples.size == 0:
        return FLOOR_DBFS
    rms = math.sqrt(float(np.mean(np.square(samples.astype(np.float64)))))
    if rms <= 0:
        return FLOOR_DBFS
    return max(FLOOR_DBFS, 20.0 * math.log10(rms / 32768.0))


def load_wav(path: Path) -> Samples:
    """Read a prompt as 8 kHz mono 16-bit samples.

    An 8 kHz mono 16-bit PCM WAV is read directly; any other rate, channel count or sample format is converted
    with PyAV's ``AudioResampler`` (FFmpeg). A file neither can read raises :class:`MediaError`.
    """
    try:
        with wave.open(str(path), "rb") as w:
            if w.getframerate() == RATE and w.getnchannels() == 1 and w.getsampwidth() == 2:
                return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
    except FileNotFoundError as exc:
        raise MediaError(f"cannot play {path}: file not found") from exc
    except (wave.Error, EOFError, RuntimeError, struct.error):
        pass  # not plain PCM: let FFmpeg try
    return _load_with_av(path)


def _load_with_av(path: Path) -> Samples:
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av comes with aiortc
        raise MediaError(f"cannot play {path}: expected an 8 kHz mono 16-bit WAV (PyAV missing)") from exc
    chunks: list[Samples] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError(f"cannot play {path}: no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1).astype(np.int16))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1).astype(np.int16))
    except MediaError:
        raise
    except Exception as exc:  # FFmpeg raises many types
        raise MediaError(
            f"cannot play {path}: {exc}; expected a WAV (8 kHz mono 16-bit, or anything FFmpeg can resample)"
        ) from exc
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


class WavWriter:
    """Appends 8 kHz mono 16-bit frames to a WAV file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._w = wave.open(str(path), "wb")  # noqa: SIM115 - closed in close()
        self._w.setnchannels(1)
        self._w.setsampwidth(2)
        self._w.setframerate(RATE)

    def write(self, samples: Samples) -> None:
        self._w.writeframes(samples.astype("<i2").tobytes())

    def close(self) -> None:
        self._w.close()
