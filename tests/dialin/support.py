"""What the dial-in tests (SIP in ``tests/dialin``, Twilio in ``tests/twilio``) share: the dial-in site (two rooms,
one tier of radiologists) and reads of the evidence with waits."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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


@dataclass
class Rad:
    """A radiologist of a test directory: reached on a Twilio number, by SMS, on a SIP URI; an optional PIN."""

    username: str
    name: str
    voice: str | None = None
    sip: str | None = None
    sms: str | None = None
    pin: str | None = None


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


@contextlib.asynccontextmanager
async def started_node(data_dir: Path, prompt_cache: Path, **config: Any) -> AsyncIterator[CommsApp]:
    """A whole node on loopback (SQLite in ``data_dir``, SIP over UDP on a port from the OS, HTTP on port 0),
    ``config`` overriding or adding :class:`~comms.app.AppConfig` fields; stopped on exit."""
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
    try:
        yield app
    finally:
        await app.stop()


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


async def dialin_incident(sessions: Any) -> str:
    """The incident a dial-in raised (the one with an inbound leg), or ``""`` while there is none."""
    async with sessions() as s:
        ids = (
            await s.scalars(sa.select(CallLeg.incident_id).where(CallLeg.direction == Direction.INBOUND))
        ).all()
    return ids[0] if ids else ""


async def add_dialin_site(
    sessions: Any, tier: Sequence[Rad], *, room_phones: Mapping[str, str | None], ring_timeout_s: int = 20
) -> None:
    """Site north with ``room_phones`` (room code -> ``sip_phone_uri``) and one tier of ``tier``."""
    async with sessions() as s, s.begin():
        site = Site(code="north", name="Northside Imaging", timezone="America/Chicago", us_state="IL")
        s.add(site)
        await s.flush()
        for code, phone in room_phones.items():
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
            person = Person(username=rad.username, display_name=rad.name, roles="radiologist", npi=next(npi))
            s.add(person)
            await s.flush()
            if rad.voice:
                s.add(ContactMethod(person_id=person.id, kind=ContactKind.PSTN_VOICE, address=rad.voice))
            if rad.sip:
                s.add(ContactMethod(person_id=person.id, kind=ContactKind.SIP, address=rad.sip))
        s.add(
            PolicyTier(
                policy_id=policy.id,
                position=1,
                ring_timeout_s=ring_timeout_s,
                targets=[f"person:{r.username}" for r in tier],
            )
        )


class EvidenceReads:
    """Reads of a node's evidence for tests; the class using it provides ``sessions`` (a session factory)."""

    sessions: Any

    async def events(self, incident_id: str | None) -> list[Event]:
        """An incident's events in ``seq`` order (None: the global chain)."""
        where = Event.incident_id.is_(None) if incident_id is None else Event.incident_id == incident_id
        async with self.sessions() as s:
            return list((await s.scalars(sa.select(Event).where(where).order_by(Event.seq))).all())

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

    async def dialin_incident(self) -> str:
        return await dialin_incident(self.sessions)

    async def wait_for(self, predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
        return await wait_for(predicate, timeout, what)

    async def wait_event(
        self, incident_id: str, kind: str, count: int = 1, timeout: float = 20.0
    ) -> list[Event]:
        """At least ``count`` events of ``kind`` (all of them, in order)."""

        async def check() -> list[Event] | None:
            found = [e for e in await self.events(incident_id) if e.kind == kind]
            return found if len(found) >= count else None

        result: list[Event] = await wait_for(check, timeout, f"{count} x {kind}")
        return result
