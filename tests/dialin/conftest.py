"""Fixtures for the dial-in tests: a whole node on loopback (SQLite, our SIP stack, espeak-ng prompts) with the
dial-in tuned for test speed, and a directory with two rooms and one tier of radiologists."""

from __future__ import annotations

import hashlib
import math
import wave
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from comms.app import AppConfig, CommsApp
from comms.clock import SystemClock
from comms.db.engine import sqlite_url
from comms.db.models import ContactMethod, EscalationPolicy, Person, PolicyTier, Room, Site
from comms.db.types import ContactKind
from escalation.dialin import DialInSettings
from tests.peers.fixtures import sipp, softphone  # noqa: F401  (fixtures)
from tests.slice.conftest import Node, Radiologist

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


@pytest.fixture(scope="session")
def prompt_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prompts")


class DialInNode(Node):
    async def dialin_directory(self, tier: Sequence[Radiologist], *, ring_timeout_s: int = 20) -> None:
        """Site north: room MR4 (dial code 674, no phone) and CT2 (its phone is the softphone); one tier."""
        async with self.sessions() as s, s.begin():
            site = Site(code="north", name="Northside Imaging", timezone="America/Chicago", us_state="IL")
            s.add(site)
            await s.flush()
            for code, phone in (("MR4", None), ("CT2", ROOM_PHONE)):
                s.add(
                    Room(
                        site_id=site.id,
                        code=code,
                        name=code,
                        device_token_hash=hashlib.sha256(code.encode()).hexdigest(),
                        sip_phone_uri=phone,
                    )
                )
            policy = EscalationPolicy(site_id=site.id, name="contrast", version=1)
            s.add(policy)
            await s.flush()
            npi = iter(["1234567893", "1245319599"])
            for rad in tier:
                person = Person(
                    username=rad.username, display_name=rad.name, roles="radiologist", npi=next(npi)
                )
                s.add(person)
                await s.flush()
                s.add(ContactMethod(person_id=person.id, kind=ContactKind.SIP, address=rad.uri))
            s.add(
                PolicyTier(
                    policy_id=policy.id,
                    position=1,
                    ring_timeout_s=ring_timeout_s,
                    targets=[f"person:{r.username}" for r in tier],
                )
            )

    @property
    def extension(self) -> str:
        assert self.app.ua is not None
        host, port = self.app.ua.address("UDP")
        return f"{host}:{port}"


@pytest.fixture
async def node(tmp_path: Path, prompt_cache: Path) -> AsyncIterator[DialInNode]:
    config = AppConfig(
        database_url=sqlite_url(tmp_path / "comms.db"),
        data_dir=tmp_path,
        http_port=0,
        sip_udp_port=0,
        sip_tcp_port=None,
        prompt_cache_dir=prompt_cache,
        ivr_timeout_s=6.0,
        dialin=SETTINGS,
    )
    app = CommsApp(config, SystemClock())
    await app.start()
    try:
        yield DialInNode(app)
    finally:
        await app.stop()


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
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
        if w.getnchannels() > 1:
            data = data.reshape(-1, w.getnchannels())[:, 0]
    n = int(rate * window_s)
    found = 0
    for start in range(0, len(data) - n + 1, n):
        x = data[start : start + n]
        rms = math.sqrt(float(np.mean(x * x))) / 32768.0
        if rms <= 0 or 20 * math.log10(rms) < min_dbfs:
            continue
        spectrum = np.abs(np.fft.rfft(x * np.hanning(n))) ** 2
        freqs = np.fft.rfftfreq(n, 1.0 / rate)
        band = spectrum[(freqs > hz - 25) & (freqs < hz + 25)].sum()
        if band / spectrum.sum() > 0.6:
            found += 1
    return found * window_s
