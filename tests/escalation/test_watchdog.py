"""The watchdog under a FakeClock: an alarm (log + event + ops contact) when ticks stop > 5 s, once."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from comms.clock import FakeClock
from comms.db.engine import create_engine, session_factory
from comms.db.models import Event
from escalation.watchdog import Watchdog
from tests.pg import migrated_database


class Runner:
    node_id = "node-1"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.last_tick_mono: float | None = clock.monotonic()

    def tick(self) -> None:
        self.last_tick_mono = self.clock.monotonic()


async def test_ticks_stopping_for_more_than_5_s_raise_one_alarm_and_recovery_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(await migrated_database("sqlite", tmp_path))
    sf = session_factory(engine)
    clock = FakeClock()
    runner = Runner(clock)
    told: list[dict[str, Any]] = []

    async def ops(payload: dict[str, Any]) -> None:
        told.append(payload)

    dog = Watchdog(runner, clock, sf, notify=ops)
    dog.start()
    for _ in range(10):  # healthy: a tick every second
        clock.advance(1)
        runner.tick()
    assert dog.alarms == 0
    with caplog.at_level(logging.ERROR, logger="escalation.watchdog"):
        for _ in range(5):
            clock.advance(1)
        assert dog.alarms == 0  # 5 s silent is still within the limit
        clock.advance(1)
        for _ in range(50):
            await asyncio.sleep(0.01)
            if told:
                break
        clock.advance(10)  # still silent: no second alarm
    assert dog.alarms == 1
    assert "OPERATIONAL ALARM" in caplog.text
    assert told and told[0]["event"] == "ops.engine_stalled" and told[0]["node"] == "node-1"
    runner.tick()
    clock.advance(1)
    await asyncio.sleep(0.05)
    await dog.stop()
    async with sf() as s:
        kinds = (
            await s.scalars(sa.select(Event.kind).where(Event.incident_id.is_(None)).order_by(Event.seq))
        ).all()
    assert list(kinds) == ["ops.engine_stalled", "ops.engine_recovered"]
    await engine.dispose()
