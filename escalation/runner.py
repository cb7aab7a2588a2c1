"""The escalation runner: ticks the pure core (:func:`escalation.decide.decide`) against the database.

Theory of operation
-------------------
The database is the source of truth. Each open incident carries its current tier, tier start and the UTC column
``tier_deadline``: the instant the runner must next decide for it. ``tick()`` is idempotent:

1. find incidents whose ``tier_deadline`` is due;
2. claim each with a conditional UPDATE (lease owner + lease expiry; checked by row count, so two nodes never
   decide for the same incident at once, on SQLite and PostgreSQL alike);
3. rebuild the :class:`~escalation.model.EscalationState` from the frozen policy snapshot, the on-call targets at
   the instant the incident was raised and the legs' statuses derived from their events;
4. ``decide(state, now)``; write the decisions, the new legs and their events and the next deadline in the same
   transaction; commit; *then* place the new legs and cancel the losers through the channels.

Leg facts arrive from the channels (:meth:`record`); a final fact (declined, ended…) sets the incident's deadline
to *now*, so the next tick moves on at once instead of at the ring timeout. Accept is arbitrated here
(:meth:`try_accept`) by a conditional UPDATE: the first accept wins, a later one is told who won.

Wake-ups: one in-memory timer at the earliest deadline plus a safety poll (1 s by default) -- never one job per
page. A restart loses nothing: deadlines are columns, and legs this node had in flight when it died are ended
with an event on start-up so the tree moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from comms.clock import Clock, TimerHandle
from comms.db.events import append_event, leg_status
from comms.db.models import (
    CallLeg,
    ContactMethod,
    EscalationPolicy,
    Event,
    Incident,
    Person,
    Room,
    Rotation,
)
from comms.db.types import Channel as ChannelKind
from comms.db.types import Direction, Severity
from comms.db.types import IncidentState as DbIncidentState
from comms.errors import ValidationError
from comms.ids import new_id, short_code
from escalation.channel import AcceptResult, Channel, LegOrder
from escalation.decide import apply_actions, decide, next_deadline
from escalation.model import (
    CancelLeg,
    Contact,
    Dial,
    EscalationState,
    IncidentState,
    Leg,
    LegStatus,
    MarkAccepted,
    MarkExhausted,
    SkipTier,
    StartTier,
    Target,
    Tier,
)
from escalation.oncall import RotationSpec, who_is_on_call

log = logging.getLogger(__name__)

OPEN_STATES = (DbIncidentState.RAISED, DbIncidentState.PAGING)
FINAL_LEG_KINDS = frozenset({"leg.declined", "leg.ended", "leg.failed"})


class EscalationRunner:
    """Runs escalations for every open incident this node can claim."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        clock: Clock,
        *,
        node_id: str,
        channels: Mapping[str, Channel],
        lease_s: float = 15.0,
        safety_poll_s: float = 1.0,
        min_ring_s: float = 10.0,
    ) -> None:
        self._sf = session_factory
        self._clock = clock
        self.node_id = node_id
        self._channels = dict(channels)
        self._lease = dt.timedelta(seconds=lease_s)
        self._safety_poll_s = safety_poll_s
        self._min_ring_s = min_ring_s
        self._kinds = frozenset(self._channels)
        self._wake = asyncio.Event()
        self._timer: TimerHandle | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._leg_tasks: dict[str, asyncio.Task[None]] = {}
        self._tick_lock = asyncio.Lock()
        self.ticks = 0

    # ------------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await self._recover()
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="escalation-runner")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        for task in list(self._leg_tasks.values()):
            task.cancel()
        if self._leg_tasks:
            await asyncio.gather(*self._leg_tasks.values(), return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()

    def wake(self) -> None:
        """Ask for a tick as soon as possible."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
                nxt = await self._next_due()
            except Exception:
                # The loop must never die: log, and try again at the safety poll.
                log.exception("escalation tick failed; retrying in %.1f s", self._safety_poll_s)
                nxt = None
            delay = self._safety_poll_s
            if nxt is not None:
                delay = min(delay, max(0.0, (nxt - self._clock.now()).total_seconds()))
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._clock.call_later(delay, self._wake.set)
            await self._wake.wait()
            self._wake.clear()

    async def _next_due(self) -> dt.datetime | None:
        async with self._sf() as s:
            value: dt.datetime | None = await s.scalar(
                sa.select(sa.func.min(Incident.tier_deadline)).where(Incident.tier_deadline.is_not(None))
            )
        return value

    async def _recover(self) -> None:
        """End legs this node had in flight before a restart, so their tiers move on (nothing waits forever)."""
        async with self._sf() as s:
            rows = (
                await s.execute(
                    sa.select(CallLeg.id)
                    .join(Incident, Incident.id == CallLeg.incident_id)
                    .join(Event, (Event.leg_id == CallLeg.id) & (Event.kind == "leg.created"))
                    .where(Incident.state.in_(OPEN_STATES), Event.source == self.node_id)
                )
            ).all()
        for (leg_id,) in rows:
            events = await self._leg_events(leg_id)
            if not leg_status(events).is_final:
                await self.record(
                    leg_id,
                    "leg.ended",
                    {
                        "status": None,
                        "cause": "failed",
                        "reason": "lost: node restarted while the leg was live",
                        "by": "local",
                    },
                )

    # --------------------------------------------------------------------------------------------- intake

    async def raise_incident(self, *, room_code: str, severity: str, source: str) -> str:
        """Create an incident for ``room_code`` and start paging at once; returns the incident id."""
        try:
            sev = Severity(severity)
        except ValueError as exc:
            allowed = ", ".join(s.value for s in Severity)
            raise ValidationError(f"severity {severity!r} is not known: expected one of {allowed}") from exc
        now = self._clock.now()
        async with self._sf() as s, s.begin():
            room = await s.scalar(
                sa.select(Room).where(Room.code == room_code, Room.active).options(selectinload(Room.site))
            )
            if room is None:
                raise ValidationError(f"room {room_code!r} is not known: expected the code of an active room")
            policy = await s.scalar(
                sa.select(EscalationPolicy)
                .where(EscalationPolicy.site_id == room.site_id, EscalationPolicy.active)
                .order_by(EscalationPolicy.version.desc())
                .options(selectinload(EscalationPolicy.tiers))
                .limit(1)
            )
            snapshot: dict[str, Any] = policy.snapshot() if policy else {"policy_id": None, "tiers": []}
            incident = Incident(
                code=short_code(),
                site_id=room.site_id,
                room_id=room.id,
                severity=sev,
                state=DbIncidentState.RAISED,
                policy_snapshot=snapshot,
                raised_at=now,
                tier_deadline=now,
            )
            s.add(incident)
            await s.flush()
            await append_event(
                s,
                incident=incident,
                leg_id=None,
                kind="incident.raised",
                data={
                    "room": room.code,
                    "site": room.site.code,
                    "severity": sev.value,
                    "source": source,
                    "code": incident.code,
                    "policy": {"id": snapshot.get("policy_id"), "version": snapshot.get("version")},
                },
                clock=self._clock,
                source=self.node_id,
            )
            incident_id = incident.id
        log.info("[incident=%s] raised for room %s, severity %s, by %s", incident_id, room_code, sev, source)
        self.wake()
        return incident_id

    # ----------------------------------------------------------------------------------------------- tick

    async def tick(self) -> int:
        """Decide for every due incident this node can claim; returns how many were processed."""
        async with self._tick_lock:
            self.ticks += 1
            now = self._clock.now()
            async with self._sf() as s:
                due = (
                    await s.scalars(
                        sa.select(Incident.id)
                        .where(Incident.tier_deadline.is_not(None), Incident.tier_deadline <= now)
                        .order_by(Incident.tier_deadline)
                    )
                ).all()
            done = 0
            for incident_id in due:
                if await self._process(incident_id, now):
                    done += 1
            return done

    async def _process(self, incident_id: str, now: dt.datetime) -> bool:
        to_place: list[LegOrder] = []
        to_cancel: list[tuple[str, str, str]] = []
        async with self._sf() as s, s.begin():
            claimed = await s.execute(
                sa.update(Incident)
                .where(
                    Incident.id == incident_id,
                    Incident.tier_deadline.is_not(None),
                    Incident.tier_deadline <= now,
                    sa.or_(
                        Incident.lease_until.is_(None),
                        Incident.lease_until < now,
                        Incident.lease_owner == self.node_id,
                    ),
                )
                .values(lease_owner=self.node_id, lease_until=now + self._lease)
                .execution_options(synchronize_session=False)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return False
            incident = await s.get(
                Incident,
                incident_id,
                populate_existing=True,
                options=[selectinload(Incident.site), selectinload(Incident.room)],
            )
            assert incident is not None
            state, legs_by_id = await self._load_state(s, incident)
            actions = decide(state, now, kinds=self._kinds, min_ring_s=self._min_ring_s)
            new_ids = [new_id() for a in actions if isinstance(a, Dial)]
            after = apply_actions(state, actions, iter(new_ids))
            ids = iter(new_ids)
            for action in actions:
                match action:
                    case StartTier(tier=tier, started_at=started, deadline=deadline):
                        incident.state = DbIncidentState.PAGING
                        incident.current_tier = tier
                        incident.tier_started_at = started
                        await self._event(
                            s,
                            incident,
                            "incident.tier_started",
                            {"tier": tier, "deadline": deadline.isoformat(timespec="milliseconds")},
                        )
                    case SkipTier(tier=tier, reason=reason):
                        log.warning("[incident=%s] tier %d skipped: %s", incident.id, tier, reason)
                        await self._event(
                            s, incident, "incident.tier_skipped", {"tier": tier, "reason": reason}
                        )
                    case Dial():
                        leg_id = next(ids)
                        order = await self._dial(s, incident, action, leg_id, now)
                        to_place.append(order)
                    case CancelLeg(leg_id=leg_id, reason=reason):
                        leg = legs_by_id[leg_id]
                        await self._event(
                            s, incident, "leg.cancel_requested", {"reason": reason}, leg_id=leg_id
                        )
                        to_cancel.append((leg.channel.value, leg_id, reason))
                    case MarkAccepted(person_id=person_id, leg_id=leg_id):
                        if incident.state in OPEN_STATES:  # normally try_accept already did this
                            incident.state = DbIncidentState.ACCEPTED
                            incident.accepted_by_id = person_id
                            incident.accepted_leg_id = leg_id
                            incident.accepted_at = now
                            await self._event(
                                s, incident, "incident.accepted", {"person_id": person_id, "leg_id": leg_id}
                            )
                    case MarkExhausted(reason=reason):
                        incident.state = DbIncidentState.EXHAUSTED
                        incident.ended_at = now
                        log.error(
                            "[incident=%s] EXHAUSTED: nobody accepted (%s); room %s must activate the code team",
                            incident.id,
                            reason,
                            incident.room.code,
                        )
                        await self._event(s, incident, "incident.exhausted", {"reason": reason})
            incident.tier_deadline = next_deadline(after, now, kinds=self._kinds)
            incident.lease_owner = None
            incident.lease_until = None
        for order in to_place:
            self._spawn_leg(order)
        for kind, leg_id, reason in to_cancel:
            channel = self._channels.get(kind)
            if channel is not None:
                await channel.cancel(leg_id, reason)
        return True

    async def _dial(
        self, s: AsyncSession, incident: Incident, action: Dial, leg_id: str, now: dt.datetime
    ) -> LegOrder:
        person = await s.get(Person, action.person_id)
        assert person is not None
        s.add(
            CallLeg(
                id=leg_id,
                incident_id=incident.id,
                tier=action.tier,
                person_id=action.person_id,
                contact_method_id=action.contact_method_id,
                channel=ChannelKind(action.kind),
                direction=Direction.OUTBOUND,
                address=action.address,
                created_at=now,
            )
        )
        await s.flush()
        await self._event(
            s,
            incident,
            "leg.created",
            {
                "tier": action.tier,
                "person_id": action.person_id,
                "person": person.display_name,
                "channel": action.kind,
                "address": action.address,
                "ring_timeout_s": action.ring_timeout_s,
            },
            leg_id=leg_id,
        )
        return LegOrder(
            leg_id=leg_id,
            incident_id=incident.id,
            incident_code=incident.code,
            severity=incident.severity.value,
            site_name=incident.site.name,
            room_code=incident.room.code,
            room_name=incident.room.name,
            person_id=action.person_id,
            person_name=person.display_name,
            kind=action.kind,
            address=action.address,
            ring_timeout_s=action.ring_timeout_s,
            tier=action.tier,
        )

    async def _load_state(
        self, s: AsyncSession, incident: Incident
    ) -> tuple[EscalationState, dict[str, CallLeg]]:
        tiers = await self._resolve_tiers(s, incident)
        legs = (
            await s.scalars(
                sa.select(CallLeg).where(CallLeg.incident_id == incident.id).order_by(CallLeg.created_at)
            )
        ).all()
        events = (
            await s.scalars(sa.select(Event).where(Event.incident_id == incident.id).order_by(Event.seq))
        ).all()
        by_leg: dict[str, list[Event]] = {}
        for ev in events:
            if ev.leg_id is not None:
                by_leg.setdefault(ev.leg_id, []).append(ev)
        view = tuple(
            Leg(
                leg.id,
                leg.tier if leg.tier is not None else -1,
                leg.person_id or "",
                leg.contact_method_id or "",
                LegStatus(leg_status(by_leg.get(leg.id, [])).value),
            )
            for leg in legs
            if leg.direction == Direction.OUTBOUND
        )
        # legs are listed in event order so the first accept in the log wins
        state = EscalationState(
            incident_id=incident.id,
            incident_state=IncidentState(incident.state.value),
            tiers=tiers,
            current_tier=incident.current_tier,
            tier_started_at=incident.tier_started_at,
            tier_deadline=_tier_deadline(incident, events),
            legs=view,
            accepted_by=incident.accepted_by_id,
        )
        return state, {leg.id: leg for leg in legs}

    async def _resolve_tiers(self, s: AsyncSession, incident: Incident) -> tuple[Tier, ...]:
        """Targets of the frozen policy, resolved to people on call when the incident was raised."""
        tiers: list[Tier] = []
        for raw in incident.policy_snapshot.get("tiers", []):
            people: list[Person] = []
            for target in raw.get("targets", []):
                kind, _, name = str(target).partition(":")
                person: Person | None = None
                if kind == "rotation":
                    person = await self._on_call(s, incident, name)
                elif kind == "person":
                    person = await s.scalar(sa.select(Person).where(Person.username == name, Person.active))
                if person is not None and person not in people:
                    people.append(person)
            targets = []
            for person in people:
                methods = (
                    await s.scalars(
                        sa.select(ContactMethod)
                        .where(ContactMethod.person_id == person.id, ContactMethod.active)
                        .order_by(ContactMethod.priority)
                    )
                ).all()
                contacts = tuple(Contact(m.id, m.kind.value, m.address) for m in methods)
                targets.append(Target(person.id, person.display_name, contacts))
            tiers.append(Tier(int(raw["position"]), float(raw["ring_timeout_s"]), tuple(targets)))
        return tuple(tiers)

    async def _on_call(self, s: AsyncSession, incident: Incident, tier_name: str) -> Person | None:
        rotations = (
            await s.scalars(
                sa.select(Rotation)
                .where(Rotation.site_id == incident.site_id, Rotation.active)
                .options(selectinload(Rotation.members))
            )
        ).all()
        for rotation in rotations:
            if rotation.tier.value != tier_name and rotation.name != tier_name:
                continue
            spec = RotationSpec(
                members=tuple(m.person_id for m in rotation.members),
                handoff_weekday=rotation.handoff_weekday,
                handoff_time=rotation.handoff_time,
                zone=incident.site.timezone,
                start_date=rotation.start_date,
            )
            person_id = who_is_on_call(spec, incident.raised_at)
            if person_id is not None:
                return await s.get(Person, person_id)
        return None

    async def _event(
        self,
        s: AsyncSession,
        incident: Incident,
        kind: str,
        data: dict[str, Any],
        *,
        leg_id: str | None = None,
    ) -> None:
        await append_event(
            s, incident=incident, leg_id=leg_id, kind=kind, data=data, clock=self._clock, source=self.node_id
        )

    # ----------------------------------------------------------------------------------------------- legs

    def _spawn_leg(self, order: LegOrder) -> None:
        task = asyncio.get_running_loop().create_task(self._run_leg(order), name=f"leg-{order.leg_id}")
        self._leg_tasks[order.leg_id] = task
        task.add_done_callback(lambda _t: self._leg_tasks.pop(order.leg_id, None))

    async def _run_leg(self, order: LegOrder) -> None:
        channel = self._channels.get(order.kind)
        try:
            if channel is None:
                raise LookupError(
                    f"no channel for contact kind {order.kind!r}: have {sorted(self._channels)}"
                )
            await channel.place(order, self)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception(
                "[incident=%s leg=%s] leg failed inside the channel", order.incident_id, order.leg_id
            )
            with contextlib.suppress(Exception):
                await self.record(
                    order.leg_id,
                    "leg.ended",
                    {
                        "status": None,
                        "cause": "failed",
                        "reason": f"internal error: {type(exc).__name__}: {exc}",
                        "by": "local",
                    },
                )

    async def _leg_events(self, leg_id: str) -> Sequence[Event]:
        async with self._sf() as s:
            return (await s.scalars(sa.select(Event).where(Event.leg_id == leg_id).order_by(Event.seq))).all()

    async def record(self, leg_id: str, kind: str, data: dict[str, Any] | None = None) -> None:
        """Append a leg fact; a final one makes the incident due now (the tree moves on at once)."""
        final = kind in FINAL_LEG_KINDS
        async with self._sf() as s, s.begin():
            leg = await s.get(CallLeg, leg_id)
            if leg is None:
                raise ValidationError(f"leg {leg_id!r} is not known: cannot record {kind}")
            incident = await s.get(Incident, leg.incident_id, populate_existing=True)
            assert incident is not None
            await append_event(
                s,
                incident=incident,
                leg_id=leg_id,
                kind=kind,
                data=data or {},
                clock=self._clock,
                source=self.node_id,
            )
            if final and incident.state in OPEN_STATES:
                incident.tier_deadline = self._clock.now()
        if final:
            self.wake()

    async def try_accept(self, leg_id: str, *, digits: str, method: str) -> AcceptResult:
        now = self._clock.now()
        async with self._sf() as s, s.begin():
            leg = await s.get(CallLeg, leg_id)
            if leg is None:
                raise ValidationError(f"leg {leg_id!r} is not known: cannot accept")
            won = await s.execute(
                sa.update(Incident)
                .where(Incident.id == leg.incident_id, Incident.state.in_(OPEN_STATES))
                .values(
                    state=DbIncidentState.ACCEPTED,
                    accepted_by_id=leg.person_id,
                    accepted_leg_id=leg.id,
                    accepted_at=now,
                    tier_deadline=now,
                )
                .execution_options(synchronize_session=False)
            )
            incident = await s.get(Incident, leg.incident_id, populate_existing=True)
            assert incident is not None
            holder = await s.get(Person, incident.accepted_by_id) if incident.accepted_by_id else None
            holder_name = holder.display_name if holder else None
            if won.rowcount == 1:  # type: ignore[attr-defined]
                seconds = (now - incident.raised_at).total_seconds()
                await self._event(
                    s, incident, "leg.accepted", {"digits": digits, "method": method}, leg_id=leg_id
                )
                await self._event(
                    s,
                    incident,
                    "incident.accepted",
                    {
                        "person_id": leg.person_id,
                        "person": holder_name,
                        "leg_id": leg_id,
                        "seconds_to_accept": round(seconds, 3),
                    },
                )
                log.info(
                    "[incident=%s leg=%s] accepted by %s after %.1f s",
                    incident.id,
                    leg_id,
                    holder_name,
                    seconds,
                )
            else:
                await self._event(
                    s,
                    incident,
                    "leg.accept_refused",
                    {
                        "digits": digits,
                        "method": method,
                        "state": incident.state.value,
                        "holder": holder_name,
                    },
                    leg_id=leg_id,
                )
        self.wake()
        return AcceptResult(won=won.rowcount == 1, accepted_by_name=holder_name)  # type: ignore[attr-defined]


def _tier_deadline(incident: Incident, events: Sequence[Event]) -> dt.datetime | None:
    """The current tier's deadline, as decided when the tier started (the column holds the next *wake-up*)."""
    if incident.current_tier is None:
        return None
    for ev in reversed(events):
        if ev.kind == "incident.tier_started" and ev.data.get("tier") == incident.current_tier:
            return dt.datetime.fromisoformat(str(ev.data["deadline"]))
    return None
