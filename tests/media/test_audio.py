"""G.711 tables against FFmpeg (via PyAV), WAV loading/resampling, energy."""

from __future__ import annotations

import shutil
import subprocess
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import av
import numpy as np
import pytest

from media import audio
from media.errors import MediaError

ALL = np.arange(-32768, 32768, dtype=np.int64).astype(np.int16)


def ffmpeg(codec: str, direction: Literal["r", "w"], data: np.ndarray | bytes) -> np.ndarray:
    name: Literal["pcm_mulaw", "pcm_alaw"] = "pcm_mulaw" if codec == "PCMU" else "pcm_alaw"
    ctx = av.CodecContext.create(name, direction)
    ctx.format = "s16"
    ctx.layout = "mono"
    ctx.sample_rate = 8000
    if direction == "r":
        frames = ctx.decode(av.Packet(bytes(data)))
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    frame = av.AudioFrame.from_ndarray(np.asarray(data).reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    out = b"".join(bytes(p) for p in ctx.encode(frame)) + b"".join(bytes(p) for p in ctx.encode(None))
    return np.frombuffer(out, dtype=np.uint8)


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_decode_table_equals_ffmpeg(codec: str) -> None:
    codes = bytes(range(256))
    assert np.array_equal(audio.decode(codec, codes), ffmpeg(codec, "r", codes))


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_encode_agrees_with_ffmpeg_within_one_step(codec: str) -> None:
    ours = np.frombuffer(audio.encode(codec, ALL), dtype=np.uint8)
    theirs = ffmpeg(codec, "w", ALL)
    # FFmpeg puts decision levels at the midpoint of decoded values; g711.c truncates. Both are G.711;
    # they differ only right at segment boundaries, by one code.
    differ = ours != theirs
    assert differ.mean() < 0.02
    dec = audio.decode(codec, bytes(ours))
    ref = audio.decode(codec, bytes(theirs))
    steps = np.abs(dec[differ].astype(int) - ref[differ].astype(int))
    assert steps.max() <= 1024


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_encode_decode_round_trip(codec: str) -> None:
    codes = bytes(range(256))
    assert audio.encode(codec, audio.decode(codec, codes)) == bytes(
        c if not (codec == "PCMU" and c == 0x7F) else 0xFF for c in codes
    )  # µ-law has two zeros (0x7F, 0xFF): -0 encodes as +0
    back = audio.decode(codec, audio.encode(codec, ALL)).astype(np.int64)
    rel = np.abs(back - ALL) / np.maximum(np.abs(ALL.astype(np.int64)), 256)
    assert rel.max() < 0.07


def test_silence_and_unknown_codec() -> None:
    assert audio.silence_payload("PCMU") == b"\xff" * 160
    assert audio.silence_payload("PCMA") == b"\xd5" * 160
    with pytest.raises(MediaError, match="'G729'"):
        audio.encode("G729", ALL[:10])


def test_energy_dbfs() -> None:
    full_square = np.array([32767, -32768] * 80, dtype=np.int16)
    assert audio.energy_dbfs(full_square) == pytest.approx(0.0, abs=0.01)
    sine = (np.sin(np.arange(800) / 8 * 2 * np.pi * 1) * 16384).astype(np.int16)
    assert audio.energy_dbfs(sine) == pytest.approx(-9.03, abs=0.1)  # half scale -6 dB, sine RMS -3 dB
    assert audio.energy_dbfs(np.zeros(160, dtype=np.int16)) == audio.FLOOR_DBFS
    assert audio.energy_dbfs(np.zeros(0, dtype=np.int16)) == audio.FLOOR_DBFS


def test_load_8k_mono_directly(tone: Callable[..., Path]) -> None:
    samples = audio.load_wav(tone(seconds=0.5))
    assert samples.dtype == np.int16
    assert samples.size == 4000


def test_load_resamples_other_rates_and_channels(tone: Callable[..., Path]) -> None:
    samples = audio.load_wav(tone(seconds=1.0, rate=44100, channels=2, freq=500))
    assert 7900 <= samples.size <= 8100
    spectrum = np.abs(np.fft.rfft(samples[1000:5000].astype(float)))
    assert np.argmax(spectrum) * 8000 / 4000 == pytest.approx(500, abs=5)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_load_espeak_prompt(tmp_path: Path) -> None:
    out = tmp_path / "prompt.wav"
    subprocess.run(["espeak-ng", "-w", str(out), "press one to accept"], check=True, timeout=30)
    with wave.open(str(out)) as w:
        assert w.getframerate() == 22050
    samples = audio.load_wav(out)
    assert samples.size > 4000
    assert audio.energy_dbfs(samples) > -40


def test_load_refuses_missing_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="not found"):
        audio.load_wav(tmp_path / "nope.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF????WAVEjunkjunk")
    with pytest.raises(MediaError, match=r"cannot play .*junk\.wav"):
        audio.load_wav(junk)


def test_wav_writer(tmp_path: Path) -> None:
    w = audio.WavWriter(tmp_path / "rec.wav")
    w.write(np.arange(320, dtype=np.int16))
    w.close()
    with wave.open(str(tmp_path / "rec.wav")) as r:
        assert (r.getframerate(), r.getnchannels(), r.getsampwidth(), r.getnframes()) == (8000, 1, 2, 320)
