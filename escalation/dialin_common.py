"""What the two technologist dial-ins (SIP: :mod:`escalation.dialin`, Twilio: :mod:`escalation.twilio_dialin`)
share: the evidence of the caller's leg, the reads they answer the caller from, and the bridge report.

Theory of operation
-------------------
* *Facts before the leg.* A dial-in learns things (INVITE or webhook received, answered, each digit, room
  identified, severity chosen) before the incident, and so the caller's inbound :class:`~comms.db.models.CallLeg`,
  exists. :class:`CallFacts` keeps each such fact with the instant it happened (``observed_at`` /
  ``observed_mono``); :meth:`DialInStore.open_leg` creates the leg and writes ``leg.created`` and every kept fact
  as its leg events in one transaction; from then on each fact is written as it happens. A call that never
  raises an incident is one event in the global chain with all its steps (:meth:`DialInStore.flush_refused`).
* *Reads.* The incident's state and events (the hold status is folded from them by
  :func:`ivr.dialin.hold_status`), the active rooms and their phones (caller ID: :func:`room_by_phone`).
* *Connected once.* :meth:`DialInStore.mark_connected` moves the incident ``accepted -> connected`` with a
  conditional update, so whichever path sees both directions first writes the one ``incident.connected``.
* *Bridge report.* :class:`BridgeReport` turns a bridge's per-direction counters (a
  :class:`media.legbridge.LegBridge` or an :class:`escalation.twilio_streams.RtpStreamBridge`) into one
  ``bridge.media_established`` per direction, ``incident.connected`` when both carry audio, and the
  ``bridge.ended`` counters.

Event kinds are the SIP dial-in's (decision 0051); the Twilio dial-in writes the same kinds on a ``pstn_voice``
leg (decision 0052).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comms.clock import Clock
from comms.db.events import append_event, format_at
from comms.db.models import CallLeg, Event, Incident, Room
from comms.db.types import Channel as ChannelKind
from comms.db.types import Direction
from comms.db.types import IncidentState as DbState
from comms.errors import CommsError, ValidationError
from comms.ids import new_id
from escalation.runner import EscalationRunner
from ivr.dialin import HoldStatus, hold_status, severity_from
from ivr.machine import Finish
from sip.errors import SipError
from sip.message import URI
from sip.ua import Call

__all__ = [
    "RADIOLOGIST_CONNECTING",
    "BridgeReport",
    "CallFacts",
    "CallLog",
    "DialInStore",
    "DirectionLike",
    "FactsOwner",
    "acceptor_name",
    "hold_status_data",
    "nap",
    "raise_from_menu",
    "room_by_phone",
]

log = logging.getLogger(__name__)

RADIOLOGIST_CONNECTING = "Thank you. Connecting you to the technologist of room {room} now."
"""What an accepted radiologist on a Twilio call hears before being joined to a technologist who dialled in."""

Rooms = Sequence[tuple[str, str | None]]
"""Active rooms as ``(code, sip_phone_uri)``."""


# ------------------------------------------------------------------------------------------- pure helpers


def acceptor_name(status: HoldStatus) -> str:
    """Who accepted, as the directory names them ("the radiologist" if the events do not say)."""
    return status.names[0] if status.names else "the radiologist"


def hold_status_data(status: HoldStatus, text: str) -> dict[str, Any]:
    """The data of a ``dialin.hold_status`` event."""
    return {"phase": status.phase, "names": list(status.names), "attempt": status.attempt, "text": text}


def room_by_phone(rooms: Rooms, matches: Callable[[URI], bool]) -> str | None:
    """The one room whose phone URI ``matches`` the caller (None when none or several do: ask for the code)."""
    found = []
    for code, phone in rooms:
        if phone is None:
            continue
        try:
            uri = URI.parse(phone)
        except SipError:
            continue
        if matches(uri):
            found.append(code)
    return found[0] if len(found) == 1 else None


@contextlib.contextmanager
def wake_when_ended(call: Call, wake: asyncio.Event) -> Iterator[asyncio.Task[Any]]:
    """While inside: ``wake`` is set when the SIP ``call`` ends. Yields the task watching it (``done()``: the
    call has ended); the watch is cancelled on the way out."""
    ended = asyncio.get_running_loop().create_task(call.wait_ended())
    ended.add_done_callback(lambda _t: wake.set())
    try:
        yield ended
    finally:
        if not ended.done():
            ended.cancel()


async def nap(clock: Clock, wake: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` on ``clock``, or less if ``wake`` is set meanwhile (it is cleared first)."""
    wake.clear()
    handle = clock.call_later(seconds, wake.set)
    try:
        await wake.wait()
    finally:
        handle.cancel()


# ----------------------------------------------------------------------------------------- per-call facts


class CallLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes a dial-in call's log lines with ``[incident=… leg=…]`` (set ``extra`` once they are known)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"[incident={extra.get('incident')} leg={extra.get('leg')}] {msg}", kwargs


@dataclass
class CallFacts:
    """The evidence of one dial-in call: kept in memory until its leg exists, then written as it happens."""

    incident_id: str | None = None
    leg_id: str | None = None
    pending: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class FactsOwner:
    """A dial-in call with :class:`CallFacts` (``facts``): its incident and leg, once they exist."""

    facts: CallFacts

    @property
    def incident_id(self) -> str | None:
        return self.facts.incident_id

    @property
    def leg_id(self) -> str | None:
        return self.facts.leg_id


# ------------------------------------------------------------------------------------------------- store


class DialInStore:
    """The dial-ins' database side: leg evidence, connected, and the reads the hold is answered from."""

    def __init__(
        self, session_factory: async_sessionmaker[AsyncSession], clock: Clock, *, node_id: str
    ) -> None:
        self._sf = session_factory
        self._clock = clock
        self._node = node_id

    async def fact(
        self,
        facts: CallFacts,
        kind: str,
        data: dict[str, Any],
        utc: dt.datetime | None = None,
        mono: float | None = None,
    ) -> None:
        """Record a leg fact: written at once once the leg exists, else kept (with its instant) until then."""
        async with facts.lock:
            if facts.leg_id is None:
                stamped = dict(data)
                stamped["observed_at"] = format_at(utc if utc is not None else self._clock.now())
                stamped["observed_mono"] = round(mono if mono is not None else self._clock.monotonic(), 6)
                facts.pending.append((kind, stamped))
                return
            await self.append(facts.incident_id, facts.leg_id, kind, data)

    async def open_leg(
        self,
        facts: CallFacts,
        incident_id: str,
        *,
        channel: ChannelKind,
        address: str,
        external_ref: str,
        created: dict[str, Any],
    ) -> str:
        """Create the caller's inbound leg of ``incident_id``; write ``leg.created`` (``created`` plus direction
        and channel) and every kept fact as its events, in one transaction. Returns the leg id."""
        async with facts.lock, self._sf() as db, db.begin():
            incident = await db.get(Incident, incident_id)
            if incident is None:
                raise CommsError(f"incident {incident_id!r} is not known: cannot open the dial-in leg")
            leg_id = new_id()
            db.add(
                CallLeg(
                    id=leg_id,
                    incident_id=incident_id,
                    tier=None,
                    person_id=None,
                    contact_method_id=None,
                    channel=channel,
                    direction=Direction.INBOUND,
                    address=address[:255],
                    external_ref=external_ref[:255],
                    created_at=self._clock.now(),
                )
            )
            await db.flush()
            leg_created = {"direction": "inbound", "channel": channel.value, **created}
            for kind, data in [("leg.created", leg_created), *facts.pending]:
                await self._write(db, incident, leg_id, kind, data)
            facts.pending.clear()
            facts.incident_id, facts.leg_id = incident_id, leg_id
        return leg_id

    async def flush_refused(self, facts: CallFacts, kind: str, call: dict[str, Any], **data: Any) -> None:
        """A call that raised no incident: one event in the global chain naming the ``call`` (from, to, its
        id, room) with every step it went through."""
        async with facts.lock:
            steps = [{"kind": k, **d} for k, d in facts.pending]
            facts.pending.clear()
        await self.append(None, None, kind, {**call, "steps": steps, **data})

    async def append(
        self, incident_id: str | None, leg_id: str | None, kind: str, data: dict[str, Any]
    ) -> None:
        async with self._sf() as db, db.begin():
            incident = await db.get(Incident, incident_id) if incident_id is not None else None
            await self._write(db, incident, leg_id, kind, data)

    async def _write(
        self, db: AsyncSession, incident: Incident | None, leg_id: str | None, kind: str, data: dict[str, Any]
    ) -> None:
        await append_event(
            db, incident=incident, leg_id=leg_id, kind=kind, data=data, clock=self._clock, source=self._node
        )

    async def record_leg(self, leg_id: str, kind: str, data: dict[str, Any]) -> None:
        """An event of another leg (the radiologist's), in its incident's chain."""
        async with self._sf() as db:
            incident_id = await db.scalar(sa.select(CallLeg.incident_id).where(CallLeg.id == leg_id))
        if incident_id is None:
            raise CommsError(f"leg {leg_id!r} is not known: cannot record {kind}")
        await self.append(incident_id, leg_id, kind, data)

    async def mark_connected(self, facts: CallFacts, radiologist_leg: str, *, via: str) -> bool:
        """``accepted -> connected`` with its ``incident.connected`` event; False if it was not accepted (already
        connected, or closed meanwhile)."""
        incident_id = facts.incident_id
        if incident_id is None:
            raise CommsError("cannot mark a dial-in connected before it raised an incident")
        async with self._sf() as db, db.begin():
            done = await db.execute(
                sa.update(Incident)
                .where(Incident.id == incident_id, Incident.state == DbState.ACCEPTED)
                .values(state=DbState.CONNECTED)
                .execution_options(synchronize_session=False)
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                return False
            incident = await db.get(Incident, incident_id, populate_existing=True)
            assert incident is not None
            connected = {"via": via, "caller_leg": facts.leg_id, "radiologist_leg": radiologist_leg}
            await self._write(db, incident, None, "incident.connected", connected)
        return True

    # ----------------------------------------------------------------------------------------- reads

    async def rooms(self) -> list[tuple[str, str | None]]:
        async with self._sf() as db:
            rows = (await db.execute(sa.select(Room.code, Room.sip_phone_uri).where(Room.active))).all()
        return [(str(code), uri) for code, uri in rows]

    async def incident_state(self, incident_id: str) -> DbState:
        async with self._sf() as db:
            state = await db.scalar(sa.select(Incident.state).where(Incident.id == incident_id))
        if state is None:
            raise CommsError(f"incident {incident_id!r} vanished while a technologist was on hold")
        return DbState(state)

    async def events(self, incident_id: str) -> list[Event]:
        async with self._sf() as db:
            return list(
                (
                    await db.scalars(
                        sa.select(Event).where(Event.incident_id == incident_id).order_by(Event.seq)
                    )
                ).all()
            )

    async def hold_status(self, incident_id: str) -> HoldStatus:
        """Where the paging of ``incident_id`` stands, as the caller should hear it."""
        return hold_status(await self.events(incident_id))


async def raise_from_menu(
    store: DialInStore,
    runner: EscalationRunner,
    facts: CallFacts,
    room: str,
    finish: Finish,
    *,
    source: str,
    log: logging.LoggerAdapter,  # type: ignore[type-arg]
) -> tuple[str | None, str]:
    """The menu is done with a room: record the severity chosen, raise the incident. Returns its id (None when
    the raise was refused: a ``dialin.failed`` fact is recorded) and the severity."""
    severity = severity_from(finish)
    await store.fact(
        facts,
        "dialin.severity_chosen",
        {"severity": severity, "digits": finish.digits, "outcome": finish.outcome.value},
    )
    try:
        return await runner.raise_incident(room_code=room, severity=severity, source=source), severity
    except ValidationError as exc:
        log.error("could not raise an incident for room %s: %s", room, exc)
        await store.fact(facts, "dialin.failed", {"error": str(exc)})
        return None, severity


# ------------------------------------------------------------------------------------------ bridge report


class DirectionLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def established_mono(self) -> float | None: ...


class BridgeReport:
    """The evidence of one bridge while it lasts: ``bridge.media_established`` once per direction (with how long
    after the start), then ``incident.connected`` once both directions carry audio."""

    def __init__(
        self, store: DialInStore, facts: CallFacts, clock: Clock, *, radiologist_leg: str, via: str
    ) -> None:
        self._store, self._facts, self._clock = store, facts, clock
        self._leg, self._via = radiologist_leg, via
        self.started = clock.monotonic()
        self.reported: set[str] = set()
        self.connected = False

    async def update(self, directions: Sequence[DirectionLike]) -> bool:
        """Report newly established directions; True when this call marked the incident connected."""
        for d in directions:
            if d.established_mono is not None and d.name not in self.reported:
                self.reported.add(d.name)
                after_ms = round((d.established_mono - self.started) * 1000)
                await self._store.fact(
                    self._facts, "bridge.media_established", {"direction": d.name, "after_ms": after_ms}
                )
        if self.connected or len(self.reported) < len(directions):
            return False
        self.connected = True
        return await self._store.mark_connected(self._facts, self._leg, via=self._via)

    async def ended(self, by: str, directions: dict[str, dict[str, Any]]) -> None:
        """``bridge.ended``: who left, how long it lasted, and each direction's counters."""
        seconds = round(self._clock.monotonic() - self.started, 3)
        await self._store.fact(
            self._facts, "bridge.ended", {"by": by, "seconds": seconds, "directions": directions}
        )
