"""What the whole-node tests share (tests/slice, tests/engine, tests/dialin, tests/twilio, tests/pager,
tests/chaos): a started node on loopback, a directory seeded straight into its database, reads of the evidence
and waits on it, and the tone measurement of recorded audio."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from comms.app import AppConfig, CommsApp
from comms.clock import SystemClock
from comms.db.engine import sqlite_url
from comms.db.models import (
    CallLeg,
    ContactMethod,
    EscalationPolicy,
    Event,
    Incident,
    Person,
    PolicyTier,
    Room,
    Site,
)
from comms.db.types import ContactKind, Direction
from escalation.runner import hash_pin

NPIS = ("1234567893", "1245319599", "1003000126", "1629071301")
"""Valid test NPIs, handed out in order to the radiologists :func:`seed_site` adds."""


@pytest.fixture(scope="session")
def prompt_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One espeak-ng prompt cache for the whole run (rendering the prompts is the slow part of a node start)."""
    return tmp_path_factory.mktemp("prompts")


# -- a node ------------------------------------------------------------------------------------------------------


async def start_node(data_dir: Path, prompt_cache: Path, **config: Any) -> CommsApp:
    """A started whole node on loopback (SQLite in ``data_dir``, SIP over UDP on a port from the OS, HTTP on
    port 0), ``config`` overriding or adding :class:`~comms.app.AppConfig` fields; the caller stops it."""
    app = CommsApp(
        AppConfig(
            database_url=sqlite_url(data_dir / "comms.db"),
            data_dir=data_dir,
            http_port=0,
            sip_udp_port=0,
            sip_tcp_port=None,
            prompt_cache_dir=prompt_cache,
            **config,
        ),
        SystemClock(),
    )
    await app.start()
    return app


@contextlib.asynccontextmanager
async def started_node(data_dir: Path, prompt_cache: Path, **config: Any) -> AsyncIterator[CommsApp]:
    """:func:`start_node`, stopped on exit."""
    app = await start_node(data_dir, prompt_cache, **config)
    try:
        yield app
    finally:
        await app.stop()


# -- a directory -------------------------------------------------------------------------------------------------


@dataclass
class Rad:
    """A radiologist of a test directory: reached on a Twilio number, on a SIP URI, by SMS, on a pager
    (``wctp:``/``snpp:``/``mailto:``); an optional PIN."""

    username: str
    name: str
    voice: str | None = None
    sip: str | None = None
    sms: str | None = None
    pin: str | None = None
    pager: str | None = None


@dataclass(frozen=True)
class RoomSpec:
    """A room of a test directory: its device token (the code unless given) and optional ``sip_phone_uri``."""

    code: str
    name: str | None = None
    token: str | None = None
    phone: str | None = None


async def seed_site(
    sessions: Any, tiers: Sequence[Sequence[Rad]], *, rooms: Sequence[RoomSpec], ring_timeout_s: int
) -> dict[str, str]:
    """Site north with ``rooms`` and policy "contrast" whose tier *i* (position *i* + 1) pages ``tiers[i]``.
    Returns the person ids by username."""
    ids: dict[str, str] = {}
    npis = iter(NPIS)
    async with sessions() as s, s.begin():
        site = Site(code="north", name="Northside Imaging", timezone="America/Chicago", us_state="IL")
        s.add(site)
        await s.flush()
        for room in rooms:
            token = room.code if room.token is None else room.token
            s.add(
                Room(
                    site_id=site.id,
                    code=room.code,
                    name=room.name or room.code,
                    device_token_hash=hashlib.sha256(token.encode()).hexdigest(),
                    sip_phone_uri=room.phone,
                )
            )
        policy = EscalationPolicy(site_id=site.id, name="contrast", version=1)
        s.add(policy)
        await s.flush()
        for position, tier in enumerate(tiers, start=1):
            for rad in tier:
                person = Person(
                    username=rad.username,
                    display_name=rad.name,
                    roles="radiologist",
                    npi=next(npis),
                    pin_hash=hash_pin(rad.pin) if rad.pin else None,
                )
                s.add(person)
                await s.flush()
                ids[rad.username] = person.id
                contacts = [
                    ContactMethod(kind=ContactKind.PSTN_VOICE, address=rad.voice) if rad.voice else None,
                    ContactMethod(kind=ContactKind.SIP, address=rad.sip) if rad.sip else None,
                    ContactMethod(kind=ContactKind.SMS, address=rad.sms, priority=1) if rad.sms else None,
                    ContactMethod(kind=ContactKind.PAGER, address=rad.pager, label="pager")
                    if rad.pager
                    else None,
                ]
                for contact in contacts:
                    if contact is not None:
                        contact.person_id = person.id
                        s.add(contact)
            s.add(
                PolicyTier(
                    policy_id=policy.id,
                    position=position,
                    ring_timeout_s=ring_timeout_s,
                    targets=[f"person:{r.username}" for r in tier],
                )
            )
    return ids


# -- the evidence and waits on it ----------------------------------------------------------------------------------


async def wait_for(
    predicate: Callable[[], Awaitable[Any]],
    timeout: float = 20.0,
    what: str = "condition",
    every: float = 0.05,
) -> Any:
    """Await ``predicate()`` until it is truthy (returned) or ``timeout`` passes (AssertionError)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(every)


async def until(
    check: Callable[[], object], within: float = 10.0, step: float = 0.05, what: str = "condition"
) -> None:
    """Wait (real time) until ``check()`` is truthy; background tasks run on the loop meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not met within {within} s")
        await asyncio.sleep(step)


async def events(sessions: Any, incident_id: str | None) -> list[Event]:
    """An incident's events in ``seq`` order (None: the global chain)."""
    where = Event.incident_id.is_(None) if incident_id is None else Event.incident_id == incident_id
    async with sessions() as s:
        return list((await s.scalars(sa.select(Event).where(where).order_by(Event.seq))).all())


async def wait_event(
    sessions: Any, incident_id: str, kind: str, count: int = 1, timeout: float = 20.0
) -> list[Event]:
    """At least ``count`` events of ``kind`` (all of them, in order)."""

    async def check() -> list[Event] | None:
        found = [e for e in await events(sessions, incident_id) if e.kind == kind]
        return found if len(found) >= count else None

    result: list[Event] = await wait_for(check, timeout, f"{count} x {kind}")
    return result


async def dialin_incident(sessions: Any) -> str:
    """The incident a dial-in raised (the one with an inbound leg), or ``""`` while there is none."""
    async with sessions() as s:
        ids = (
            await s.scalars(sa.select(CallLeg.incident_id).where(CallLeg.direction == Direction.INBOUND))
        ).all()
    return ids[0] if ids else ""


class EvidenceReads:
    """Reads of a node's evidence for tests; the class using it provides ``sessions`` (a session factory) and
    may change the default timeouts of the waits."""

    sessions: Any
    event_timeout = 20.0
    state_timeout = 20.0

    async def events(self, incident_id: str | None) -> list[Event]:
        """An incident's events in ``seq`` order (None: the global chain)."""
        return await events(self.sessions, incident_id)

    async def legs(self, incident_id: str) -> list[CallLeg]:
        async with self.sessions() as s:
            return list(
                (
                    await s.scalars(
                        sa.select(CallLeg)
                        .where(CallLeg.incident_id == incident_id)
                        .order_by(CallLeg.created_at)
                    )
                ).all()
            )

    async def incident(self, incident_id: str) -> Incident:
        async with self.sessions() as s:
            incident = await s.get(Incident, incident_id)
            assert incident is not None
            return incident

    async def person_id(self, username: str) -> str:
        async with self.sessions() as s:
            pid = await s.scalar(sa.select(Person.id).where(Person.username == username))
            assert pid is not None
            return pid

    async def dialin_incident(self) -> str:
        return await dialin_incident(self.sessions)

    async def wait_for(self, predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
        return await wait_for(predicate, timeout, what)

    async def wait_event(
        self, incident_id: str, kind: str, count: int = 1, timeout: float | None = None
    ) -> list[Event]:
        """At least ``count`` events of ``kind`` (all of them, in order)."""
        return await wait_event(
            self.sessions, incident_id, kind, count, self.event_timeout if timeout is None else timeout
        )

    async def wait_state(self, incident_id: str, states: set[str], timeout: float | None = None) -> Incident:
        """The incident once its state is one of ``states``."""

        async def check() -> Incident | None:
            incident = await self.incident(incident_id)
            return incident if incident.state.value in states else None

        wait = self.state_timeout if timeout is None else timeout
        result: Incident = await wait_for(check, wait, f"incident state in {sorted(states)}")
        return result


class NodeReads(EvidenceReads):
    """:class:`EvidenceReads` of a started whole node ``app``."""

    app: CommsApp

    @property  # type: ignore[override]
    def sessions(self) -> Any:
        assert self.app.sessions is not None
        return self.app.sessions

    @property
    def extension(self) -> str:
        """``host:port`` of the node's SIP UDP listener (the SIP dial-in answers ``sip:reaction@`` there)."""
        assert self.app.ua is not None
        host, port = self.app.ua.address("UDP")
        return f"{host}:{port}"


# -- audio -------------------------------------------------------------------------------------------------------


def write_tone(
    path: Path,
    *,
    seconds: float,
    freq: float = 1000.0,
    rate: int = 8000,
    channels: int = 1,
    amplitude: float = 0.5,
) -> Path:
    """A 16-bit WAV of a pure tone (the same on every channel)."""
    t = np.arange(int(seconds * rate)) / rate
    mono = (np.sin(2 * np.pi * freq * t) * amplitude * 32767).astype("<i2")
    data = np.repeat(mono, channels) if channels > 1 else mono
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())
    return path


def wav_tone_seconds(path: Path, hz: float, *, window_s: float = 0.25, min_dbfs: float = -45.0) -> float:
    """How many seconds of WAV ``path`` (its first channel) are dominated by a tone at ``hz``
    (:func:`tone_seconds_in`)."""
    with wave.open(str(path), "rb") as w:
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        if w.getnchannels() > 1:
            data = data.reshape(-1, w.getnchannels())[:, 0]
    return tone_seconds_in(data, rate, hz, window=int(rate * window_s), min_dbfs=min_dbfs)


def tone_seconds_in(samples: Any, rate: int, hz: float, *, window: int, min_dbfs: float) -> float:
    """Seconds of mono PCM ``samples`` at ``rate`` dominated (> 60 % of the energy within ±25 Hz) by a tone at
    ``hz``, counted in windows of ``window`` samples quieter than ``min_dbfs`` left out."""
    data = np.asarray(samples, dtype=np.float64)
    found = 0
    for start in range(0, len(data) - window + 1, window):
        x = data[start : start + window]
        rms = math.sqrt(float(np.mean(x * x))) / 32768.0
        if rms <= 0 or 20 * math.log10(rms) < min_dbfs:
            continue
        spectrum = np.abs(np.fft.rfft(x * np.hanning(window))) ** 2
        freqs = np.fft.rfftfreq(window, 1.0 / rate)
        if spectrum[(freqs > hz - 25) & (freqs < hz + 25)].sum() / spectrum.sum() > 0.6:
            found += 1
    return found * window / rate
