"""The engine watchdog: an operational alarm when the escalation runner stops ticking -- also when the event
loop that runs the ticks is itself stalled (a handler that blocks it, a deadlock), which an alarm living on
that same loop could never report.

Theory of operation
-------------------
*Core* (:class:`StallDetector`, sans-I/O). Input: ``observe(now, last_tick, loop_beat)`` with monotonic
seconds (``last_tick``: when the runner last completed a tick; ``loop_beat``: when the event loop last ran
the watchdog's heartbeat callback). Two states::

    healthy --(now - last_tick > stale_after_s)--> stalled     emits EngineStalled (once per stall)
    stalled --(a tick newer than the limit)-------> healthy    emits EngineRecovered (how long it lasted)

``next_deadline()`` is the instant the current silence would cross the limit. The core never reads a clock;
tests drive it with a :class:`~comms.clock.FakeClock`.

*Adapter* (:class:`Watchdog`). Two halves:

1. On the event loop: a timer every ``beat_every_s`` stamps ``loop_beat_mono``. It only says *why* the
   ticks stopped ("the event loop itself is unresponsive" versus "the loop runs but ticks are stuck", e.g.
   on a hung database); it is not needed to raise the alarm.
2. In a thread of its own (daemon ``comms-watchdog``), with an asyncio loop of its own: every
   ``check_every_s`` it reads ``runner.last_tick_mono`` and ``loop_beat_mono`` (plain floats written by the
   other loop: reading them needs neither a lock nor that loop), feeds the core, and for each action

   * logs at once, from the thread (ERROR ``OPERATIONAL ALARM …``, WARNING on recovery): the log line needs
     nothing of the stalled loop;
   * queues a delivery on the thread's own loop, which owns its **own database engine** (opened from the
     URL, no pooled connection kept) and its **own signed-webhook client**: it appends ``ops.engine_stalled``
     / ``ops.engine_recovered`` to the global evidence chain and POSTs the configured ops contact,
     concurrently, each step under a timeout. The evidence write is retried (it may queue behind a write
     lock the stalled loop holds: SQLite's busy timeout, a PostgreSQL row lock on the chain counter);
     failures are logged, never raised. Deliveries run in order, so "recovered" follows "stalled" on the
     chain.

Decision: the evidence event and the ops message are written **from the thread, during the stall**, not
deferred until the loop recovers -- a loop that never recovers must still reach the ops contact.

Limits. The thread needs the GIL: ``time.sleep``, blocking I/O and pure-Python loops release it every
switch interval (5 ms), but a C extension that holds it for the whole stall silences the thread as well;
then the other nodes still see this node's heartbeat row go stale (see docs/multi-node.md). The watchdog
watches one node's ticks; it is not a cluster monitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.pool import NullPool

from comms.clock import Clock, TimerHandle
from comms.db.engine import create_engine, session_factory
from comms.db.events import append_event
from escalation.webhook_channel import WebhookChannel

log = logging.getLogger(__name__)

STALLED_EVENT = "ops.engine_stalled"
RECOVERED_EVENT = "ops.engine_recovered"


class Ticking(Protocol):
    node_id: str
    last_tick_mono: float | None


Notifier = Callable[[dict[str, Any]], Awaitable[object]]


# ------------------------------------------------------------------------------------------------ the core


class State(enum.Enum):
    HEALTHY = "healthy"
    STALLED = "stalled"


@dataclass(frozen=True)
class EngineStalled:
    """Ticks have been silent longer than the limit (raise the alarm)."""

    silent_s: float
    limit_s: float
    loop_silent_s: float | None
    """How long the event loop itself has not run (``None``: no loop heartbeat seen yet)."""


@dataclass(frozen=True)
class EngineRecovered:
    """Ticks came back after an alarm."""

    stalled_s: float
    """From the last tick before the stall to the first one after it."""


WatchdogAction = EngineStalled | EngineRecovered


class StallDetector:
    """Decides "stalled for more than ``stale_after_s``: alarm once; recovered" from monotonic readings."""

    def __init__(self, stale_after_s: float, started: float) -> None:
        if stale_after_s <= 0:
            raise ValueError(f"stale_after_s = {stale_after_s}: expected a positive number of seconds")
        self.stale_after_s = stale_after_s
        self.state = State.HEALTHY
        self._started = started
        self._last_tick: float | None = None
        self._stalled_since: float = started

    def _reference(self, last_tick: float | None) -> float:
        return last_tick if last_tick is not None else self._started

    def observe(self, now: float, last_tick: float | None, loop_beat: float | None) -> list[WatchdogAction]:
        """Feed one reading; return what to do (at most one action)."""
        reference = self._reference(last_tick)
        silent = now - reference
        stale = silent > self.stale_after_s
        match (self.state, stale):
            case (State.HEALTHY, True):
                self._set_state(State.STALLED)
                self._stalled_since = reference
                loop_silent = None if loop_beat is None else round(max(0.0, now - loop_beat), 3)
                return [EngineStalled(round(silent, 3), self.stale_after_s, loop_silent)]
            case (State.STALLED, False):
                self._set_state(State.HEALTHY)
                return [EngineRecovered(round(reference - self._stalled_since, 3))]
            case _:
                return []

    def next_deadline(self, last_tick: float | None) -> float | None:
        """When the current silence crosses the limit (``None`` while already stalled)."""
        if self.state is State.STALLED:
            return None
        return self._reference(last_tick) + self.stale_after_s

    def _set_state(self, new: State) -> None:
        log.debug("stall detector %s -> %s", self.state.value, new.value)
        self.state = new


# --------------------------------------------------------------------------------------------- the adapter


@dataclass(frozen=True)
class OpsContact:
    """The ops contact told of an alarm: a signed JSON POST (see :mod:`escalation.webhook_channel`)."""

    url: str
    secret: bytes = b""

    def __repr__(self) -> str:  # the secret stays out of logs
        return f"OpsContact(url={self.url!r})"


class Watchdog:
    """Watches ``runner.last_tick_mono`` from a thread of its own (see the module docstring).

    ``database_url``: where the thread writes its evidence events (with an engine of its own); ``ops``: the
    contact it POSTs to. ``start()`` must be called on the event loop that runs the runner.
    """

    def __init__(
        self,
        runner: Ticking,
        clock: Clock,
        *,
        database_url: str | None = None,
        ops: OpsContact | None = None,
        stale_after_s: float = 5.0,
        check_every_s: float = 0.5,
        beat_every_s: float = 0.5,
        step_timeout_s: float = 3.0,
        record_attempts: int = 3,
    ) -> None:
        self._runner = runner
        self._clock = clock
        self._url = database_url
        self._ops = ops
        self.stale_after_s = stale_after_s
        self._every = check_every_s
        self._beat_every = beat_every_s
        self._step_timeout = step_timeout_s
        self._record_attempts = max(1, record_attempts)
        self.detector = StallDetector(stale_after_s, clock.monotonic())
        self.loop_beat_mono: float | None = None
        """Monotonic time the event loop last ran the heartbeat (written on the loop, read by the thread)."""
        self.alarms = 0
        self._beat_timer: TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._tloop: asyncio.AbstractEventLoop | None = None
        self._tstop: asyncio.Event | None = None

    @property
    def alarmed(self) -> bool:
        return self.detector.state is State.STALLED

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self, *, thread: bool = True) -> None:
        """Start the loop heartbeat and (unless ``thread`` is false: tests call :meth:`check`) the thread."""
        self.detector = StallDetector(self.stale_after_s, self._clock.monotonic())
        self._beat()
        if thread:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._thread_main, name="comms-watchdog", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        if self._beat_timer is not None:
            self._beat_timer.cancel()
            self._beat_timer = None
        self._stopping.set()
        tloop, tstop = self._tloop, self._tstop
        if tloop is not None and tstop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed
                tloop.call_soon_threadsafe(tstop.set)
        if self._thread is not None:
            join_s = self._step_timeout * 2 + self._every + 1
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, join_s)
            if self._thread.is_alive():
                log.error("the watchdog thread did not stop within %.1f s", join_s)
            self._thread = None

    def _beat(self) -> None:
        self.loop_beat_mono = self._clock.monotonic()
        self._beat_timer = self._clock.call_later(self._beat_every, self._beat)

    # ------------------------------------------------------------------------------------------- checking

    def check(self) -> list[WatchdogAction]:
        """One observation: feed the core, log each action at once, return them for :meth:`deliver`.

        Runs on the watchdog thread; it touches no event loop.
        """
        node = self._runner.node_id
        actions = self.detector.observe(
            self._clock.monotonic(), self._runner.last_tick_mono, self.loop_beat_mono
        )
        for action in actions:
            match action:
                case EngineStalled(silent_s=silent, limit_s=limit, loop_silent_s=loop_silent):
                    self.alarms += 1
                    if loop_silent is not None and loop_silent > self._beat_every * 2 + 0.5:
                        why = f"its event loop has been unresponsive for {loop_silent:.1f} s"
                    else:
                        why = "its event loop runs, the ticks themselves are stuck (database?)"
                    log.error(
                        "OPERATIONAL ALARM: escalation engine on node %s has not ticked for %.1f s "
                        "(limit %.1f s); %s",
                        node,
                        silent,
                        limit,
                        why,
                    )
                case EngineRecovered(stalled_s=stalled):
                    log.warning(
                        "escalation engine on node %s ticks again (stalled for %.1f s)", node, stalled
                    )
        return actions

    def payload(self, action: WatchdogAction) -> tuple[str, dict[str, Any]]:
        """The evidence kind and data (also the ops message body) for ``action``."""
        node = self._runner.node_id
        match action:
            case EngineStalled(silent_s=silent, limit_s=limit, loop_silent_s=loop_silent):
                return STALLED_EVENT, {
                    "node": node,
                    "silent_s": silent,
                    "limit_s": limit,
                    "loop_silent_s": loop_silent,
                }
            case EngineRecovered(stalled_s=stalled):
                return RECOVERED_EVENT, {"node": node, "stalled_s": stalled}

    async def deliver(
        self,
        action: WatchdogAction,
        sessions: async_sessionmaker[AsyncSession] | None,
        notify: Notifier | None,
    ) -> None:
        """Record ``action`` in the evidence log and tell the ops contact (concurrently); never raises."""
        kind, data = self.payload(action)
        steps: list[Awaitable[None]] = []
        if sessions is not None:
            steps.append(self._record(sessions, kind, data))
        if notify is not None:
            steps.append(self._tell(notify, {"event": kind, **data}))
        await asyncio.gather(*steps)

    async def _record(
        self, sessions: async_sessionmaker[AsyncSession], kind: str, data: dict[str, Any]
    ) -> None:
        for attempt in range(1, self._record_attempts + 1):
            try:
                async with asyncio.timeout(self._step_timeout), sessions() as s, s.begin():
                    await append_event(
                        s,
                        incident=None,
                        leg_id=None,
                        kind=kind,
                        data=data,
                        clock=self._clock,
                        source=self._runner.node_id,
                    )
                return
            except Exception:
                if attempt == self._record_attempts:
                    log.exception("could not record %s in the evidence log (%d attempts)", kind, attempt)
                else:
                    log.warning(
                        "could not record %s in the evidence log (attempt %d); retrying", kind, attempt
                    )

    async def _tell(self, notify: Notifier, payload: dict[str, Any]) -> None:
        try:
            async with asyncio.timeout(self._step_timeout * 4):
                result = await notify(payload)
        except Exception:
            log.exception("the ops contact could not be told %s", payload.get("event"))
            return
        if getattr(result, "ok", True) is False:
            log.error(
                "the ops contact refused %s: %s", payload.get("event"), getattr(result, "error", result)
            )

    # ------------------------------------------------------------------------------------------ the thread

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._watch())
        except Exception:  # the thread must not die silently either
            log.exception("the watchdog thread failed; the engine is no longer watched")

    async def _watch(self) -> None:
        self._tloop = asyncio.get_running_loop()
        self._tstop = stop = asyncio.Event()
        engine = create_engine(self._url, poolclass=NullPool) if self._url else None
        sessions = session_factory(engine) if engine is not None else None
        channel: WebhookChannel | None = None
        notify: Notifier | None = None
        if self._ops is not None and self._ops.secret:
            channel = WebhookChannel(
                self._clock, secret=self._ops.secret, timeout_s=self._step_timeout, retries=1, backoff_s=0.2
            )
            notify = self._notifier(channel, self._ops.url)
        queue: asyncio.Queue[WatchdogAction] = asyncio.Queue()

        async def deliveries() -> None:
            while True:
                action = await queue.get()
                await self.deliver(action, sessions, notify)
                queue.task_done()

        worker = asyncio.get_running_loop().create_task(deliveries(), name="watchdog-deliveries")
        try:
            while not self._stopping.is_set():
                for action in self.check():
                    queue.put_nowait(action)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._every)
            with contextlib.suppress(TimeoutError):  # let a delivery under way land
                await asyncio.wait_for(queue.join(), self._step_timeout * 2)
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            if channel is not None:
                await channel.close()
            if engine is not None:
                await engine.dispose()
            self._tloop = None

    def _notifier(self, channel: WebhookChannel, url: str) -> Notifier:
        async def notify(payload: dict[str, Any]) -> object:
            at_ms = int(self._clock.now().timestamp() * 1000)
            key = f"ops:{self._runner.node_id}:{payload.get('event')}:{at_ms}"
            return await channel.post(url, dict(payload), key=key)

        return notify
