"""Small builders of valid rows for tests (real rows in a real database, nothing mocked)."""

from __future__ import annotations

import hashlib
import itertools

from sqlalchemy.ext.asyncio import AsyncSession

from comms.clock import Clock
from comms.db.models import CallLeg, EscalationPolicy, Incident, Person, PolicyTier, Room, Site
from comms.db.types import Channel, Severity

_n = itertools.count(1)


async def make_site_room(session: AsyncSession) -> tuple[Site, Room]:
    n = next(_n)
    site = Site(code=f"S{n}", name=f"Site {n}", timezone="America/Chicago", us_state="IL")
    room = Room(
        site=site,
        code=f"R{n}",
        name=f"Room {n}",
        device_token_hash=hashlib.sha256(f"token-{n}".encode()).hexdigest(),
    )
    session.add_all([site, room])
    await session.flush()
    return site, room


async def make_policy(session: AsyncSession, site: Site) -> EscalationPolicy:
    policy = EscalationPolicy(site_id=site.id, name=f"policy-{next(_n)}", version=1)
    policy.tiers = [
        PolicyTier(position=0, ring_timeout_s=30, targets=["rotation:primary"]),
        PolicyTier(position=1, ring_timeout_s=30, targets=["rotation:backup"]),
    ]
    session.add(policy)
    await session.flush()
    return policy


async def make_incident(session: AsyncSession, clock: Clock) -> Incident:
    site, room = await make_site_room(session)
    policy = await make_policy(session, site)
    incident = Incident(
        code=f"C{next(_n):05d}",
        site_id=site.id,
        room_id=room.id,
        severity=Severity.MODERATE,
        policy_snapshot=policy.snapshot(),
        raised_at=clock.now(),
    )
    session.add(incident)
    await session.flush()
    return incident


async def make_person(session: AsyncSession, *, radiologist: bool = True) -> Person:
    n = next(_n)
    person = Person(
        username=f"doc{n}",
        display_name=f"Dr {n}",
        roles="radiologist" if radiologist else "technologist",
        npi="1234567893" if radiologist else None,
    )
    session.add(person)
    await session.flush()
    return person


async def make_leg(session: AsyncSession, incident: Incident, clock: Clock) -> CallLeg:
    person = await make_person(session)
    leg = CallLeg(
        incident_id=incident.id,
        tier=0,
        person_id=person.id,
        channel=Channel.SIP,
        address=f"sip:{person.username}@127.0.0.1",
        created_at=clock.now(),
    )
    session.add(leg)
    await session.flush()
    return leg
