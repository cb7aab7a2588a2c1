"""The evidence log on real SQLite and PostgreSQL: chaining, append-only (ORM and triggers), concurrency."""

from __future__ import annotations

import asyncio
import itertools

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from comms.clock import FakeClock
from comms.db.events import append_event, chain_events, compute_hash, leg_statuses, verify_chain
from comms.db.models import (
    GENESIS_HASH,
    AppendOnlyError,
    Event,
    Incident,
    install_event_triggers,
    trigger_ddl,
)
from comms.db.types import LegStatus
from comms.errors import ValidationError
from tests.db.factories import make_incident, make_leg


async def _incident_with_events(
    sessions: async_sessionmaker[AsyncSession], clock: FakeClock, n: int = 4
) -> tuple[str, list[Event]]:
    async with sessions() as s:
        inc = await make_incident(s, clock)
        leg = await make_leg(s, inc, clock)
        out = [
            await append_event(
                s, incident=inc, leg_id=None, kind="incident.raised", data={}, clock=clock, source="t"
            )
        ]
        for i in range(n - 1):
            clock.advance(0.25)
            out.append(
                await append_event(
                    s,
                    incident=inc,
                    leg_id=leg.id,
                    kind="leg.ringing",
                    data={"i": i, "f": 0.1},
                    clock=clock,
                    source="t",
                )
            )
        await s.commit()
        return inc.id, out


async def test_chain_links_and_verifies(sessions: async_sessionmaker[AsyncSession], clock: FakeClock) -> None:
    iid, written = await _incident_with_events(sessions, clock, n=5)
    async with sessions() as s:
        rows = await chain_events(s, iid)
        inc = await s.get_one(Incident, iid)
    assert [e.seq for e in rows] == [1, 2, 3, 4, 5]
    assert rows[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
    assert [e.hash for e in rows] == [e.hash for e in written]
    assert inc.next_seq == 6
    t0 = rows[0].at
    assert [(e.at - t0).total_seconds() for e in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert rows[4].mono - rows[1].mono == pytest.approx(0.75)
    assert verify_chain(rows) == []


async def test_global_chain_for_events_without_incident(
    sessions: async_sessionmaker[AsyncSession], clock: FakeClock
) -> None:
    async with sessions() as s:
        a = await append_event(
            s, incident=None, leg_id=None, kind="audit.login", data={"u": "x"}, clock=clock, source="web"
        )
        b = await append_event(
            s, incident=None, leg_id=None, kind="audit.logout", data={}, clock=clock, source="web"
        )
        await s.commit()
    assert (a.seq, b.seq) == (1, 2)
    assert b.prev_hash == a.hash
    async with sessions() as s:
        assert verify_chain(await chain_events(s, None)) == []


async def test_rolled_back_append_gives_its_number_back(
    sessions: async_sessionmaker[AsyncSession], clock: FakeClock
) -> None:
    async with sessions() as s:
        iid = (await make_incident(s, clock)).id
        await s.commit()
    async with sessions() as s:
        inc = await s.get_one(Incident, iid)
        await append_event(
            s, incident=inc, leg_id=None, kind="incident.raised", data={}, clock=clock, source="t"
        )
        await s.rollback()
    async with sessions() as s:
        inc = await s.get_one(Incident, iid)
        ev = await append_event(
            s, incident=inc, leg_id=None, kind="incident.raised", data={}, clock=clock, source="t"
        )
        await s.commit()
    assert ev.seq == 1


async def test_data_must_be_plain_json_and_kind_dotted(
    sessions: async_sessionmaker[AsyncSession], clock: FakeClock
) -> None:
    async with sessions() as s:
        with pytest.raises(ValidationError, match="is not plain JSON"):
            await append_event(
                s, incident=None, leg_id=None, kind="a.b", data={"t": clock}, clock=clock, source="t"
            )
        with pytest.raises(ValidationError, match="event kind 'Ringing' is not valid"):
            await append_event(
                s, incident=None, leg_id=None, kind="Ringing", data={}, clock=clock, source="t"
            )


async def test_orm_refuses_update_and_delete(
    sessions: async_sessionmaker[AsyncSession], clock: FakeClock
) -> None:
    iid, _ = await _incident_with_events(sessions, clock, n=2)
    async with sessions() as s:
        ev = (await chain_events(s, iid))[0]
        ev.kind = "incident.forged"
        with pytest.raises(AppendOnlyError, match="append-only: expected no UPDATE"):
            await s.flush()
    async with sessions() as s:
        ev = (await chain_events(s, iid))[0]
        await s.delete(ev)
        with pytest.raises(AppendOnlyError, match="append-only: expected no DELETE"):
            await s.flush()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE event SET kind = 'incident.forged'",
        "DELETE FROM event",
        "UPDATE event SET data = '{}' WHERE seq = 2",
    ],
)
async def test_database_trigger_refuses_raw_sql(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, clock: FakeClock, statement: str
) -> None:
    iid, _ = await _incident_with_events(sessions, clock, n=3)
    async with engine.connect() as conn:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            await conn.execute(sa.text(statement))
    async with sessions() as s:
        assert verify_chain(await chain_events(s, iid)) == []
        assert len(await chain_events(s, iid)) == 3


async def test_truncate_is_refused(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, clock: FakeClock, backend: str
) -> None:
    iid, _ = await _incident_with_events(sessions, clock, n=2)
    # SQLite has no TRUNCATE; its truncate optimisation of an unqualified DELETE is disabled by the trigger.
    statement = "TRUNCATE event CASCADE" if backend == "postgresql" else "DELETE FROM event"
    async with engine.connect() as conn:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            await conn.execute(sa.text(statement))
    async with sessions() as s:
        assert len(await chain_events(s, iid)) == 2


async def _tamper(engine: AsyncEngine, statement: str, params: dict[str, str] | None = None) -> None:
    """What an attacker with DDL rights could do: drop the triggers, change history, put the triggers back."""
    async with engine.begin() as conn:
        dialect = conn.dialect.name
        for stmt in trigger_ddl(dialect, drop=True):
            await conn.exec_driver_sql(stmt)
        await conn.execute(sa.text(statement), params or {})
        await conn.run_sync(install_event_triggers)


async def test_tampered_content_is_detected(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, clock: FakeClock
) -> None:
    iid, _ = await _incident_with_events(sessions, clock, n=4)
    await _tamper(engine, "UPDATE event SET source = 'forged' WHERE seq = 3 AND incident_id IS NOT NULL")
    async with sessions() as s:
        problems = verify_chain(await chain_events(s, iid))
    assert [(p.seq, "does not match content" in p.reason) for p in problems] == [(3, True)]
    assert str(problems[0]).startswith(f"chain {iid} seq 3")


async def test_deleted_and_rehashed_rows_are_detected(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, clock: FakeClock
) -> None:
    iid, rows = await _incident_with_events(sessions, clock, n=5)
    await _tamper(engine, "DELETE FROM event WHERE seq = 2 AND incident_id IS NOT NULL")
    async with sessions() as s:
        problems = verify_chain(await chain_events(s, iid))
    reasons = [p.reason for p in problems]
    assert len(problems) == 2, reasons
    assert problems[0].seq == 3
    assert "missing seq 2..2" in reasons[0]
    assert "prev_hash" in reasons[1]

    # A forger who recomputes the row's own hash still breaks the link to the next row.
    forged = rows[3]
    async with sessions() as s:
        target = (await chain_events(s, iid))[2]  # seq 4
        assert target.seq == 4
        new_data = {"i": 99, "f": 0.1}
        clone = Event(
            incident_id=target.incident_id, leg_id=target.leg_id, seq=target.seq, kind=target.kind, at=target.at,
            mono=target.mono, source=target.source, data=new_data, prev_hash=target.prev_hash,
        )  # fmt: skip
        new_hash = compute_hash(clone)
    await _tamper(
        engine,
        "UPDATE event SET data = :data, hash = :new WHERE hash = :old",
        {"data": '{"f": 0.1, "i": 99}', "new": new_hash, "old": forged.hash},
    )
    async with sessions() as s:
        problems = verify_chain(await chain_events(s, iid))
    assert any(p.seq == 5 and "prev_hash" in p.reason for p in problems), [str(p) for p in problems]
    assert not any(p.seq == 4 and "does not match" in p.reason for p in problems)


async def test_concurrent_appends_get_unique_gap_free_seq(
    sessions: async_sessionmaker[AsyncSession], clock: FakeClock
) -> None:
    async with sessions() as s:
        inc = await make_incident(s, clock)
        await s.commit()
    writers, per_writer = 8, 5

    async def writer(w: int) -> None:
        for i in range(per_writer):
            async with sessions() as s:
                row = await s.get_one(Incident, inc.id)
                await append_event(
                    s,
                    incident=row,
                    leg_id=None,
                    kind="leg.dtmf",
                    data={"w": w, "i": i},
                    clock=clock,
                    source=f"w{w}",
                )
                await asyncio.sleep(0)  # let the other writers queue on the row lock
                await s.commit()

    await asyncio.gather(*(writer(w) for w in range(writers)))
    async with sessions() as s:
        rows = await chain_events(s, inc.id)
        row = await s.get_one(Incident, inc.id)
    assert [e.seq for e in rows] == list(range(1, writers * per_writer + 1))
    assert sorted((e.data["w"], e.data["i"]) for e in rows) == [
        (w, i) for w in range(writers) for i in range(per_writer)
    ]
    assert row.next_seq == writers * per_writer + 1
    assert verify_chain(rows) == []


async def test_leg_status_from_stored_events(
    sessions: async_sessionmaker[AsyncSession], clock: FakeClock
) -> None:
    async with sessions() as s:
        inc = await make_incident(s, clock)
        won = await make_leg(s, inc, clock)
        lost = await make_leg(s, inc, clock)
        for leg, kinds in [
            (
                won,
                ["leg.created", "leg.invite_sent", "leg.ringing", "leg.answered", "leg.dtmf", "leg.accepted"],
            ),
            (lost, ["leg.created", "leg.invite_sent", "leg.ringing", "leg.cancel_sent"]),
        ]:
            for kind in kinds:
                await append_event(
                    s, incident=inc, leg_id=leg.id, kind=kind, data={}, clock=clock, source="t"
                )
        await append_event(
            s, incident=inc, leg_id=lost.id, kind="leg.ended", data={"status": 487}, clock=clock, source="t"
        )
        await s.commit()
        statuses = leg_statuses(await chain_events(s, inc.id))
    assert statuses == {won.id: LegStatus.ACCEPTED, lost.id: LegStatus.CANCELLED}
