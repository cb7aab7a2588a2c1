"""Fixtures for the dial-in tests: a whole node on loopback (SQLite, our SIP stack, espeak-ng prompts) with the
dial-in tuned for test speed, and a directory with two rooms and one tier of radiologists."""

from __future__ import annotations

import math
import wave
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from escalation.dialin import DialInSettings
from tests.dialin.support import Rad, add_dialin_site, started_node, tone_seconds_in
from tests.peers.fixtures import sipp, softphone  # noqa: F401  (fixtures)
from tests.slice.conftest import Node, Radiologist, prompt_cache  # noqa: F401  (fixture)

FALLBACK = "555 0100"
SETTINGS = DialInSettings(
    fallback_number=FALLBACK,
    status_interval_s=4.0,
    ivr_timeout_s=4.0,
    inter_digit_timeout_s=1.5,
    retries=1,
    poll_s=0.2,
    accept_wait_s=15.0,
)
ROOM_PHONE = "sip:phone@127.0.0.1"
"""The softphone's From is ``sip:phone@127.0.0.1:<port>``: room CT2's phone (caller ID ignores the port)."""


class DialInNode(Node):
    async def dialin_directory(self, tier: Sequence[Radiologist], *, ring_timeout_s: int = 20) -> None:
        """Site north: room MR4 (dial code 674, no phone) and CT2 (its phone is the softphone); one tier."""
        rads = [Rad(r.username, r.name, sip=r.uri) for r in tier]
        await add_dialin_site(
            self.sessions, rads, room_phones={"MR4": None, "CT2": ROOM_PHONE}, ring_timeout_s=ring_timeout_s
        )

    @property
    def extension(self) -> str:
        assert self.app.ua is not None
        host, port = self.app.ua.address("UDP")
        return f"{host}:{port}"


@pytest.fixture
async def node(
    tmp_path: Path,
    prompt_cache: Path,  # noqa: F811
) -> AsyncIterator[DialInNode]:
    async with started_node(tmp_path, prompt_cache, ivr_timeout_s=6.0, dialin=SETTINGS) as app:
        yield DialInNode(app)


def write_tone(path: Path, hz: float, seconds: float, level: float = 0.3) -> Path:
    """An 8 kHz mono 16-bit WAV of a pure tone."""
    t = np.arange(int(8000 * seconds)) / 8000.0
    samples = (level * 32767 * np.sin(2 * math.pi * hz * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(samples.tobytes())
    return path


def tone_seconds(path: Path, hz: float, *, window_s: float = 0.25, min_dbfs: float = -45.0) -> float:
    """How many seconds of ``path`` are dominated (> 60 % of the energy within ±25 Hz) by a tone at ``hz``."""
    with wave.open(str(path), "rb") as w:
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        if w.getnchannels() > 1:
            data = data.reshape(-1, w.getnchannels())[:, 0]
    return tone_seconds_in(data, rate, hz, window=int(rate * window_s), min_dbfs=min_dbfs)
