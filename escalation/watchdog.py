"""The engine watchdog: an operational alarm when the escalation runner stops ticking.

The runner ticks at least once per safety poll (1 s). The watchdog checks every ``check_every_s`` how long
ago the last tick completed (``runner.last_tick_mono``, monotonic time); past ``stale_after_s`` (5 s) it
raises the alarm once: an ERROR log line, an ``ops.engine_stalled`` event on the global evidence chain and a
message to the configured ops contact (any :class:`Notifier`, e.g. :class:`~escalation.webhook_channel
.WebhookChannel`). When ticks come back it logs and records ``ops.engine_recovered``. The alarm itself must
not hang on what may have stalled the engine (the database): each step has a timeout and a failure is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comms.clock import Clock, TimerHandle
from comms.db.events import append_event

log = logging.getLogger(__name__)


class Ticking(Protocol):
    node_id: str
    last_tick_mono: float | None


Notifier = Callable[[dict[str, Any]], Awaitable[object]]


class Watchdog:
    def __init__(
        self,
        runner: Ticking,
        clock: Clock,
        session_factory: async_sessionmaker[AsyncSession] | None = None,
        *,
        notify: Notifier | None = None,
        stale_after_s: float = 5.0,
        check_every_s: float = 1.0,
        step_timeout_s: float = 3.0,
    ) -> None:
        self._runner = runner
        self._clock = clock
        self._sf = session_factory
        self._notify = notify
        self.stale_after_s = stale_after_s
        self._every = check_every_s
        self._step_timeout = step_timeout_s
        self._started = clock.monotonic()
        self._timer: TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.alarmed = False
        self.alarms = 0

    def start(self) -> None:
        self._started = self._clock.monotonic()
        self._arm()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _arm(self) -> None:
        self._timer = self._clock.call_later(self._every, self._check)

    def _check(self) -> None:
        self._arm()
        now = self._clock.monotonic()
        last = self._runner.last_tick_mono
        silent = now - (last if last is not None else self._started)
        if silent > self.stale_after_s and not self.alarmed:
            self.alarmed = True
            self.alarms += 1
            self._spawn(self._alarm(silent))
        elif silent <= self.stale_after_s and self.alarmed:
            self.alarmed = False
            log.warning("escalation engine on node %s ticks again", self._runner.node_id)
            self._spawn(self._record("ops.engine_recovered", {"node": self._runner.node_id}))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _alarm(self, silent: float) -> None:
        data = {"node": self._runner.node_id, "silent_s": round(silent, 3), "limit_s": self.stale_after_s}
        log.error(
            "OPERATIONAL ALARM: escalation engine on node %s has not ticked for %.1f s (limit %.1f s)",
            self._runner.node_id,
            silent,
            self.stale_after_s,
        )
        await self._record("ops.engine_stalled", data)
        if self._notify is not None:
            try:
                async with asyncio.timeout(self._step_timeout * 4):
                    await self._notify({"event": "ops.engine_stalled", **data})
            except Exception:
                log.exception("the ops contact could not be told that the engine stalled")

    async def _record(self, kind: str, data: dict[str, Any]) -> None:
        if self._sf is None:
            return
        try:
            async with asyncio.timeout(self._step_timeout), self._sf() as s, s.begin():
                await append_event(
                    s,
                    incident=None,
                    leg_id=None,
                    kind=kind,
                    data=data,
                    clock=self._clock,
                    source=self._runner.node_id,
                )
        except Exception:
            log.exception("could not record %s in the evidence log", kind)
