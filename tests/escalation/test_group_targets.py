"""Group (pool) targets: the pure least-recent pick, and the runner resolving ``group:<name>`` on real SQLite and
PostgreSQL with a FakeClock (legs go out through the signed webhook channel to a real receiver on loopback)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comms.clock import FakeClock
from comms.db.models import (
    CallLeg,
    ContactMethod,
    EscalationPolicy,
    Event,
    Incident,
    Person,
    PersonGroup,
    PersonGroupMember,
    PolicyTier,
    Room,
    Site,
)
from comms.db.types import Channel, ContactKind, GroupPick, IncidentState, Severity
from comms.errors import ValidationError
from escalation.oncall import pick_least_recent
from escalation.runner import EscalationRunner
from escalation.webhook_channel import WebhookChannel
from tests.engine.helpers import SECRET, Receiver, npi

UTC = dt.UTC
T0 = dt.datetime(2026, 1, 5, 14, 0, tzinfo=UTC)

# ------------------------------------------------------------------------------------------ the pure pick


def test_never_paged_first_then_oldest_page_ties_in_listed_order() -> None:
    last = {"a": T0, "b": None, "c": T0 - dt.timedelta(hours=1), "d": T0}
    assert pick_least_recent(["a", "b", "c", "d", "e"], last, 1) == ("b",)
    assert pick_least_recent(["a", "b", "c", "d", "e"], last, 3) == ("b", "e", "c")
    assert pick_least_recent(["d", "a"], last, 1) == ("d",)  # equal instants: listed order
    assert pick_least_recent(["a", "b"], last, 5) == ("b", "a")  # fewer members than size: all
    assert pick_least_recent([], last, 1) == ()


@pytest.mark.parametrize(
    ("members", "size", "message"),
    [
        (["a"], 0, "size 0: expected an integer of 1 or more"),
        (["a"], True, "size True"),
        (["a", "a"], 1, "repeat a member: expected each once"),
    ],
)
def test_pick_refuses_bad_input(members: list[str], size: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        pick_least_recent(members, {}, size)


def test_pick_refuses_a_naive_instant() -> None:
    with pytest.raises(ValidationError, match="expected an aware datetime"):
        pick_least_recent(["a"], {"a": dt.datetime(2026, 1, 5, 14, 0)}, 1)  # noqa: DTZ001


@given(
    st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=8),
    st.dictionaries(st.sampled_from("abcdefgh"), st.none() | st.integers(0, 5)),
    st.integers(1, 9),
)
def test_pick_properties(members: list[str], minutes: dict[str, int | None], size: int) -> None:
    last = {m: None if v is None else T0 + dt.timedelta(minutes=v) for m, v in minutes.items()}
    chosen = pick_least_recent(members, last, size)
    assert len(chosen) == min(size, len(members)) and len(set(chosen)) == len(chosen)
    assert set(chosen) <= set(members)

    def rank(m: str) -> tuple[bool, dt.datetime, int]:
        at = last.get(m)
        return (at is not None, at or T0, members.index(m))

    # nobody left out was paged less recently (or equally, and listed earlier) than somebody chosen
    for out in set(members) - set(chosen):
        assert all(rank(c) < rank(out) for c in chosen)
    assert list(chosen) == sorted(chosen, key=rank)


# ------------------------------------------------------------------------------------------ through the runner


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=T0)


@pytest.fixture
async def runner(
    sf: async_sessionmaker[AsyncSession], clock: FakeClock
) -> AsyncIterator[tuple[EscalationRunner, Receiver]]:
    receiver = Receiver(now=lambda: clock.now().timestamp())
    await receiver.start()
    channel = WebhookChannel(clock, secret=SECRET, url=receiver.url, kind="sip", retries=0)
    r = EscalationRunner(sf, clock, node_id="n1", channels={"sip": channel}, min_ring_s=10)
    await r.start(run=False)
    try:
        yield r, receiver
    finally:
        await r.stop()
        await channel.close()
        await receiver.stop()


async def directory(
    sf: async_sessionmaker[AsyncSession],
    tiers: list[list[str]],
    groups: dict[str, tuple[list[str], GroupPick, int]],
    *,
    people: str = "abcd",
    inactive: str = "",
    pager_only: str = "",
    rooms: int = 6,
) -> dict[str, str]:
    """One site; people ``a``..; ``groups`` by name (members, pick, size); tier *i* has targets ``tiers[i]``.
    Returns person ids by username."""
    npis = (npi(n) for n in range(1, 1000))
    ids: dict[str, str] = {}
    async with sf() as s, s.begin():
        site = Site(code="north", name="Northside Imaging", timezone="America/Chicago", us_state="IL")
        s.add(site)
        await s.flush()
        for i in range(rooms):
            token = hashlib.sha256(f"R{i}".encode()).hexdigest()
            s.add(Room(site_id=site.id, code=f"R{i}", name=f"Room {i}", device_token_hash=token))
        for username in people:
            person = Person(
                username=username,
                display_name=f"Dr {username}",
                roles="radiologist",
                npi=next(npis),
                active=username not in inactive,
            )
            s.add(person)
            await s.flush()
            ids[username] = person.id
            kind, address = (
                (ContactKind.PAGER, f"wctp:{username}")
                if username in pager_only
                else (ContactKind.SIP, f"sip:{username}@127.0.0.1")
            )
            s.add(ContactMethod(person_id=person.id, kind=kind, address=address))
        for name, (members, pick, size) in groups.items():
            s.add(
                PersonGroup(
                    site_id=site.id,
                    name=name,
                    pick=pick,
                    size=size,
                    members=[PersonGroupMember(position=i, person_id=ids[m]) for i, m in enumerate(members)],
                )
            )
        policy = EscalationPolicy(site_id=site.id, name="contrast", version=1)
        policy.tiers = [
            PolicyTier(position=i, ring_timeout_s=10, targets=targets) for i, targets in enumerate(tiers)
        ]
        s.add(policy)
    return ids


async def resolved(sf: async_sessionmaker[AsyncSession], incident_id: str) -> list[list[str]]:
    async with sf() as s:
        incident = await s.get(Incident, incident_id)
        assert incident is not None
        return [
            [p["name"].removeprefix("Dr ") for p in tier] for tier in incident.policy_snapshot["resolved"]
        ]


async def raise_and_tick(r: EscalationRunner, room: str) -> str:
    incident_id = await r.raise_incident(room_code=room, severity="moderate", source="test")
    await r.tick()
    return incident_id


async def test_least_recent_pool_spreads_pages_over_its_members(
    sf: async_sessionmaker[AsyncSession], clock: FakeClock, runner: tuple[EscalationRunner, Receiver]
) -> None:
    r, receiver = runner
    await directory(sf, [["group:pool"]], {"pool": (["a", "b", "c"], GroupPick.LEAST_RECENT, 1)})
    picked = []
    for i in range(4):
        clock.advance(1)
        picked.append((await resolved(sf, await raise_and_tick(r, f"R{i}")))[0])
    assert picked == [["a"], ["b"], ["c"], ["a"]]  # never paged first, in listed order; then the oldest page
    for _ in range(200):
        if len(receiver.pages()) >= 4:
            break
        await asyncio.sleep(0.01)
    assert [p.body["person"] for p in receiver.pages()] == ["Dr a", "Dr b", "Dr c", "Dr a"]


async def test_size_dedupe_inactive_and_unreachable_members(
    sf: async_sessionmaker[AsyncSession], clock: FakeClock, runner: tuple[EscalationRunner, Receiver]
) -> None:
    r, _ = runner
    ids = await directory(
        sf,
        [["person:b", "group:pool"], ["group:all", "person:a"]],
        {
            "pool": (["a", "b", "c", "d"], GroupPick.LEAST_RECENT, 2),
            "all": (["c", "a", "d", "b"], GroupPick.ALL, 1),
        },
        inactive="d",
        pager_only="c",  # this node has no pager channel: c cannot be reached, the pool passes over c
    )
    # a leg for "a" at another site, just now: it does not count here
    async with sf() as s, s.begin():
        other = Site(code="south", name="Southside", timezone="America/Chicago", us_state="IL")
        room = Room(site=other, code="S0", name="S0", device_token_hash="f" * 64)
        s.add_all([other, room])
        await s.flush()
        incident = Incident(
            code="OTHER1",
            site_id=other.id,
            room_id=room.id,
            severity=Severity.MILD,
            state=IncidentState.RESOLVED,
            policy_snapshot={},
            raised_at=clock.now(),
        )
        s.add(incident)
        await s.flush()
        s.add(
            CallLeg(
                incident_id=incident.id,
                tier=0,
                person_id=ids["a"],
                channel=Channel.SIP,
                address="sip:a@127.0.0.1",
                created_at=clock.now(),
            )
        )
    clock.advance(1)
    first = await raise_and_tick(r, "R0")
    # tier 0: b named, then the pool's 2 least recent of the others (c unreachable, d inactive): only a
    # tier 1: every active member of "all" in listed order (d inactive), "person:a" once
    assert await resolved(sf, first) == [["b", "a"], ["c", "a", "b"]]
    clock.advance(1)
    second = await raise_and_tick(r, "R1")
    assert await resolved(sf, second) == [["b", "a"], ["c", "a", "b"]]  # nobody else to pick


async def test_an_empty_or_missing_group_skips_its_tier_and_says_so(
    sf: async_sessionmaker[AsyncSession], clock: FakeClock, runner: tuple[EscalationRunner, Receiver]
) -> None:
    r, _ = runner
    await directory(
        sf,
        [["group:gone"], ["group:asleep"], ["group:pool"]],
        {
            "gone": (["a"], GroupPick.ALL, 1),
            "asleep": (["d"], GroupPick.LEAST_RECENT, 1),
            "pool": (["b"], GroupPick.ALL, 1),
        },
        inactive="d",
    )
    async with sf() as s, s.begin():
        group = await s.scalar(sa.select(PersonGroup).where(PersonGroup.name == "gone"))
        assert group is not None
        group.active = False
    clock.advance(1)
    incident_id = await raise_and_tick(r, "R0")
    assert await resolved(sf, incident_id) == [[], [], ["b"]]
    async with sf() as s:
        events = (
            await s.scalars(sa.select(Event).where(Event.incident_id == incident_id).order_by(Event.seq))
        ).all()
        incident = await s.get(Incident, incident_id)
    skipped = [(e.data["tier"], e.data["reason"]) for e in events if e.kind == "incident.tier_skipped"]
    assert skipped == [(0, "nobody on call"), (1, "nobody on call")]
    assert incident is not None and incident.current_tier == 2
