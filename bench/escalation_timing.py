"""How late does the escalation engine act after a deadline? 500 concurrent incidents, SQLite and PostgreSQL.

    uv run python bench/escalation_timing.py [--incidents 500] [--spread 30] [--ring 30] [--backend both]

One node (the real :class:`~escalation.runner.EscalationRunner`, system clock, in-memory wake-up at the
earliest deadline + 1 s safety poll) pages a 3-tier ladder (the default ring timeout of 30 s, nobody
answers) for ``--incidents`` incidents raised evenly over ``--spread`` seconds: all 500 are open at once
(the first is still ringing tier 1 when the last is raised) and 1,500 tier changes and exhaustions fall due,
~17 per second, each with its cancel, new leg and leg events. About 2 minutes per backend. The channel
is a loopback stand-in that reports ``leg.invite_sent`` and ``leg.ringing`` for every leg and ``leg.ended``
on cancel, as the SIP channel does, so the database sees the same writes. PostgreSQL is a throw-away cluster started by
``tests/pg.py`` (fsync off: this measures the engine, not the disk).

Lateness of one tier change = the instant its ``incident.tier_started`` (or ``incident.exhausted``) event
was written minus the deadline it acted on (the previous tier's deadline). Prints p50/p99/max in ms and ends
with ``RESULT escalation_lateness_p99_sqlite=<x> ms`` and ``RESULT escalation_lateness_p99_postgres=<x> ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa

from comms.clock import SystemClock
from comms.db.engine import create_engine, node_engine, session_factory
from comms.db.models import Event, Incident
from escalation.channel import LegOrder, LegReporter
from escalation.runner import EscalationRunner
from tests.engine.helpers import seed_directory
from tests.pg import migrated_database


class LoopbackChannel:
    """Rings forever (nobody answers); reports like the SIP channel."""

    kind = "sip"

    def __init__(self) -> None:
        self._live: dict[str, asyncio.Event] = {}

    async def place(self, order: LegOrder, reporter: LegReporter) -> None:
        gone = self._live.setdefault(order.leg_id, asyncio.Event())
        await reporter.record(order.leg_id, "leg.invite_sent", {"uri": order.address})
        await reporter.record(order.leg_id, "leg.ringing", {"status": 180})
        await gone.wait()
        self._live.pop(order.leg_id, None)
        await reporter.record(order.leg_id, "leg.ended", {"status": 487, "cause": "cancelled", "by": "local"})

    async def cancel(self, leg_id: str, reason: str) -> None:
        ev = self._live.get(leg_id)
        if ev is not None:
            ev.set()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run(backend: str, incidents: int, spread: float, ring: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="esc-bench-"))
    url = await migrated_database(backend, tmp)
    # SQLite: the engine a node runs on (inline statements, one connection, WAL checkpointer thread)
    engine, checkpointer = (
        (create_engine(url, pool_size=10), None) if backend == "postgresql" else node_engine(url)
    )
    sf = session_factory(engine)
    rooms = await seed_directory(sf, [["a"], ["b"], ["c"]], ring_timeout_s=ring, rooms=incidents)
    clock = SystemClock()
    runner = EscalationRunner(sf, clock, node_id="bench", channels={"sip": LoopbackChannel()})
    await runner.start()
    ids: list[str] = []
    gap = spread / incidents
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i, room in enumerate(rooms):
        ids.append(await runner.raise_incident(room_code=room, severity="moderate", source="bench"))
        await asyncio.sleep(max(0.0, t0 + (i + 1) * gap - loop.time()))
    end = loop.time() + 3 * ring + spread + 30
    while loop.time() < end:
        async with sf() as s:
            open_ = await s.scalar(sa.select(sa.func.count()).where(Incident.state.in_(("raised", "paging"))))
        if not open_:
            break
        await asyncio.sleep(0.5)
    await runner.stop()
    async with sf() as s:
        events = (
            await s.scalars(
                sa.select(Event)
                .where(Event.kind.in_(("incident.tier_started", "incident.exhausted")))
                .order_by(Event.incident_id, Event.seq)
            )
        ).all()
    await engine.dispose()
    if checkpointer is not None:
        checkpointer.stop()
    late: list[float] = []
    previous: dict[str, dt.datetime] = {}
    for ev in events:
        assert ev.incident_id is not None
        due = previous.get(ev.incident_id)
        if due is not None:
            late.append((ev.at - due).total_seconds() * 1000)
        if ev.kind == "incident.tier_started":
            previous[ev.incident_id] = dt.datetime.fromisoformat(ev.data["deadline"])
    return {
        "backend": backend,
        "changes": len(late),
        "p50": statistics.median(late),
        "p99": pct(late, 99),
        "max": max(late),
        "ticks": runner.ticks,
    }


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--incidents", type=int, default=500)
    p.add_argument("--spread", type=float, default=30.0)
    p.add_argument("--ring", type=int, default=30)
    p.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    args = p.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    results = [await run(b, args.incidents, args.spread, args.ring) for b in backends]
    for r in results:
        print(
            f"{r['backend']:<10} {args.incidents} incidents, {r['changes']} tier changes, {r['ticks']} ticks: "
            f"lateness p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, max {r['max']:.1f} ms"
        )
    for r in results:
        name = {"postgresql": "postgres"}.get(r["backend"], r["backend"])
        print(f"RESULT escalation_lateness_p99_{name}={r['p99']:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
