"""The runner against real SQLite and PostgreSQL with a FakeClock: outbox, crash recovery, restart after a
deadline passed, claims by two nodes, a dead node's legs, PINs. Legs go out through the signed webhook
channel (relay mode) to a real aiohttp receiver on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comms.clock import FakeClock
from comms.db.events import leg_status, verify_chain
from comms.db.models import CallLeg, Event, Incident, Outbox, Person
from escalation.model import IncidentState
from escalation.runner import EscalationRunner, hash_pin
from escalation.webhook_channel import WebhookChannel
from tests.engine.helpers import SECRET, Receiver, seed_directory
from tests.support import events

CHANNELS: list[WebhookChannel] = []


@pytest.fixture
async def receiver(clock: FakeClock) -> AsyncIterator[Receiver]:
    r = Receiver(now=lambda: clock.now().timestamp())
    await r.start()
    yield r
    for channel in CHANNELS:
        await channel.close()
    CHANNELS.clear()
    await r.stop()


class Crashed(EscalationRunner):
    """A node that dies right after its commit, before sending anything (the outbox's worst moment)."""

    async def _send(self, rows):  # type: ignore[no-untyped-def]
        return None


class FirstDecisionFails(EscalationRunner):
    """A node whose decision inside the raise hits a bug (the loop's later decisions work)."""

    async def _decide(self, s, incident, now, *, fresh=False):  # type: ignore[no-untyped-def]
        if fresh:
            raise RuntimeError("bug in the first decision")
        return await super()._decide(s, incident, now, fresh=fresh)


def runner(
    sf: async_sessionmaker[AsyncSession],
    clock: FakeClock,
    receiver: Receiver,
    node: str,
    cls: type = EscalationRunner,
) -> EscalationRunner:
    channel = WebhookChannel(clock, secret=SECRET, url=receiver.url, kind="sip", retries=0)
    CHANNELS.append(channel)
    r: EscalationRunner = cls(
        sf, clock, node_id=node, channels={"sip": channel}, lease_s=5, node_dead_after_s=5, min_ring_s=10
    )
    return r


async def settle(receiver: Receiver, count: int) -> None:
    for _ in range(200):
        if len(receiver.pages()) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"receiver got {len(receiver.pages())} pages, expected {count}")


async def test_an_outbox_row_per_notification_sent_after_commit_with_its_key(
    sf: async_sessionmaker[AsyncSession], clock: FakeClock, receiver: Receiver
) -> None:
    await seed_directory(sf, [["a", "b"], ["c"]])
    r = runner(sf, clock, receiver, "n1")
    incident_id = await r.raise_incident(room_code="R0", severity="moderate", source="test")
    assert await r.tick() == 0  # the raise decided tier 0 in its own transaction and sent it
    await settle(receiver, 2)
    async with sf() as s:
        rows = (await s.scalars(sa.select(Outbox).order_by(Outbox.created_at))).all()
    assert [row.action for row in rows] == ["place", "place"]
    assert all(row.sent_at is not None and row.sends == 1 for row in rows)
    assert sorted(p.key for p in receiver.pages()) == sorted(row.key for row in rows)
    assert all(row.key.startswith(f"{incident_id}:0:") and row.key.endswith(":sip:0") for row in rows)
    assert receiver.refused == 0
    await r.stop()


async def test_the_raise_and_the_first_decision_are_one_commit(
    sf: async_sessionmaker[AsyncSession], clock: FakeClock, receiver: Receiver
) -> None:
    await seed_directory(sf, [["a"], ["b"]])
    r = runner(sf, clock, receiver, "n1")
    incident_id = await r.raise_incident(room_code="R0", severity="severe", source="test")
    await settle(receiver, 1)
    evs = await events(sf, incident_id)
    assert [e.kind for e in evs][:3] == ["incident.raised", "incident.tier_started", "leg.created"]
    assert len({e.at for e in evs[:3]}) == 1  # one transaction, one instant of the FakeClock
    async with sf() as s:
        incident = await s.get(Incident, incident_id)
    assert incident is not None and incident.state == IncidentState.PAGING and incident.current_tier == 0
    assert incident.lease_owner is None
    await r.stop()


async def test_a_failed_first_decision_still_raises_and_the_loop_decides_it(
    sf: async_sessionmaker[AsyncSession],
    clock: FakeClock,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await seed_directory(sf, [["a"], ["b"]])
    r = runner(sf, clock, receiver, "n1", FirstDecisionFails)
    incident_id = await r.raise_incident(room_code="R0", severity="moderate", source="test")
    assert "the first decision failed inside the raise" in caplog.text
    evs = await events(sf, incident_id)
    assert [e.kind for e in evs] == ["incident.raised"]  # the failed decision left nothing half-written
    assert await r.tick() == 1  # due now: the loop decides it
    await settle(receiver, 1)
    assert [p.body["person"] for p in receiver.pages()] == ["Dr a"]
    assert verify_chain(await events(sf, incident_id)) == []
    await r.stop()


async def test_crash_after_commit_before_send_is_recovered_on_restart_exactly_once(
    sf: async_sessionmaker[AsyncSession], clock: FakeClock, receiver: Receiver
) -> None:
    await seed_directory(sf, [["a"], ["b"]])
    dead = runner(sf, clock, receiver, "n1", Crashed)
    incident_id = await dead.raise_incident(room_code="R0", severity="moderate", source="test")
    await dead.tick()
    await asyncio.sleep(0.05)
    assert receiver.pages() == []  # decided and committed, never sent
    clock.advance(2)
    again = runner(sf, clock, receiver, "n1")  # kill -9 and restart of the same node
    await again.start(run=False)
    await settle(receiver, 1)
    await asyncio.sleep(0.05)
    assert [p.body["person"] for p in receiver.pages()] == ["Dr a"]
    async with sf() as s:
        (row,) = (await s.scalars(sa.select(Outbox))).all()
    assert row.sent_at is not None and row.sends == 1
    assert verify_chain(await events(sf, incident_id)) == []
    await again.stop()


async def test_a_deadline_passed_while_down_is_acted_on_at_once_from_the_old_deadline(
    sf: async_sessionmaker[AsyncSession], clock: FakeClock, receiver: Receiver
) -> None:
    await seed_directory(sf, [["a"], ["b"], ["c"]], ring_timeout_s=10)
    first = runner(sf, clock, receiver, "n1")
    incident_id = await first.raise_incident(room_code="R0", severity="moderate", source="test")
    await first.tick()
    await settle(receiver, 1)
    # kill -9: nothing is stopped cleanly; 14 s pass while the node is down (tier 0's deadline was at 10 s)
    clock.advance(14)
    second = runner(sf, clock, receiver, "n1")
    await second.start(run=False)  # ends the lost leg of tier 0 (its call died with the process)
    await second.tick()
    await settle(receiver, 2)
    evs = await events(sf, incident_id)
    started = [e for e in evs if e.kind == "incident.tier_started"]
    assert [e.data["tier"] for e in started] == [0, 1]
    lost = [e for e in evs if e.kind == "leg.ended" and "restarted" in str(e.data.get("reason"))]
    assert len(lost) == 1
    async with sf() as s:
        incident = await s.get(Incident, incident_id)
    assert incident is not None and incident.current_tier == 1
    # the tier that was due while down started from its deadline (10 s), not from the restart (14 s)
    assert (incident.tier_started_at - started[0].at).total_seconds() == pytest.approx(10, abs=0.01)
    assert [p.body["person"] for p in receiver.pages()] == ["Dr a", "Dr b"]
    await first.stop()
    await second.stop()


async def test_two_nodes_claim_each_incident_once_and_the_survivor_continues_a_dead_nodes_incidents(
    sf: async_sessionmaker[AsyncSession], clock: FakeClock, receiver: Receiver
) -> None:
    await seed_directory(sf, [["a"], ["b"]], rooms=10, ring_timeout_s=10)
    a = runner(sf, clock, receiver, "node-a")
    b = runner(sf, clock, receiver, "node-b")
    await a.start(run=False)
    await b.start(run=False)
    # raised through a controller without channels: it leaves every decision to the two paging nodes
    ctl = EscalationRunner(sf, clock, node_id="controller", channels={})
    ids = [await ctl.raise_incident(room_code=f"R{i}", severity="moderate", source="test") for i in range(10)]
    done = await asyncio.gather(a.tick(), b.tick())
    assert sum(done) == 10
    await settle(receiver, 10)
    async with sf() as s:
        legs = (await s.scalars(sa.select(CallLeg))).all()
    assert len(legs) == 10 and len({(leg.incident_id, leg.tier) for leg in legs}) == 10
    # node-a dies (kill -9: no clean stop); node-b keeps its heartbeat, node-a's goes stale
    clock.advance(6)
    await b.tick()
    clock.advance(5)  # tier 0 deadlines pass
    for _ in range(3):
        await b.tick()
    await settle(receiver, 20)
    async with sf() as s:
        incidents = (await s.scalars(sa.select(Incident).where(Incident.id.in_(ids)))).all()
        evs = (await s.scalars(sa.select(Event).where(Event.incident_id.in_(ids)).order_by(Event.seq))).all()
    assert all(i.current_tier == 1 for i in incidents)
    tier1_pages = [p for p in receiver.pages() if p.body["tier"] == 1]
    assert len(tier1_pages) == 10 and len({p.key for p in tier1_pages}) == 10
    for incident_id in ids:
        mine = [e for e in evs if e.incident_id == incident_id]
        assert verify_chain(mine) == []
    await a.stop()
    await b.stop()


async def test_pin_is_checked_against_the_argon2_hash_and_logged_without_digits(
    sf: async_sessionmaker[AsyncSession], clock: FakeClock, receiver: Receiver
) -> None:
    await seed_directory(sf, [["a"]])
    async with sf() as s, s.begin():
        person = await s.scalar(sa.select(Person).where(Person.username == "a"))
        assert person is not None
        person.pin_hash = hash_pin("4711")
    r = runner(sf, clock, receiver, "n1")
    incident_id = await r.raise_incident(room_code="R0", severity="moderate", source="test")
    await r.tick()
    await settle(receiver, 1)
    async with sf() as s:
        (leg,) = (await s.scalars(sa.select(CallLeg))).all()
        (row,) = (await s.scalars(sa.select(Outbox))).all()
    assert row.payload["require_pin"] is True
    assert await r.check_pin(leg.id, "1234") is False
    assert await r.check_pin(leg.id, "4711") is True
    result = await r.try_accept(leg.id, digits="1", method="rfc4733")
    assert result.won and result.accepted_by_name == "Dr a"
    evs = await events(sf, incident_id)
    checks = [e.data for e in evs if e.kind == "leg.pin_checked"]
    assert checks == [{"ok": False, "length": 4}, {"ok": True, "length": 4}]
    assert all(v != "4711" for e in evs for v in e.data.values())
    await r.stop()


async def test_accept_cancels_ringing_losers_across_the_outbox_and_nothing_more_is_dialled(
    sf: async_sessionmaker[AsyncSession], clock: FakeClock, receiver: Receiver
) -> None:
    await seed_directory(sf, [["a", "b", "c"], ["d"]])
    r = runner(sf, clock, receiver, "n1")
    incident_id = await r.raise_incident(room_code="R0", severity="moderate", source="test")
    await r.tick()
    await settle(receiver, 3)
    async with sf() as s:
        legs = (await s.scalars(sa.select(CallLeg).order_by(CallLeg.created_at))).all()
    one, two = await asyncio.gather(  # two presses at the same instant: exactly one wins
        r.try_accept(legs[1].id, digits="1", method="rfc4733"),
        r.try_accept(legs[0].id, digits="1", method="rfc4733"),
    )
    assert sorted([one.won, two.won]) == [False, True]
    winner, loser = (1, 0) if one.won else (0, 1)
    assert one.accepted_by_name == two.accepted_by_name == f"Dr {'ab'[winner]}"
    await r.tick()
    for _ in range(100):
        cancels = [g for g in receiver.got if g.event == "cancel"]
        if len(cancels) == 2:
            break
        await asyncio.sleep(0.01)
    assert {c.leg_id for c in cancels} == {legs[loser].id, legs[2].id}
    assert {c.body["reason"] for c in cancels} == {"cancelled-by-accept"}
    clock.advance(60)
    await r.tick()
    evs = await events(sf, incident_id)
    assert not any(e.kind == "leg.created" and e.data["tier"] == 1 for e in evs)
    for _ in range(100):
        statuses = [
            leg_status([e for e in await events(sf, incident_id) if e.leg_id == g.id]).value for g in legs
        ]
        if statuses.count("cancelled") == 2:
            break
        await asyncio.sleep(0.01)
    assert statuses[winner] == "accepted" and statuses.count("cancelled") == 2
    await r.stop()
