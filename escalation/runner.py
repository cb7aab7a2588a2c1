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

*Claiming.* PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` of a batch of due rows, then the lease columns
are set in the same short transaction (two nodes never wait on each other's rows); each incident is then
decided in its own transaction guarded by the lease. SQLite (one node): the conditional UPDATE checked by
row count.

*Outbox.* Every notification the decision implies (place a leg, cancel a leg, the severe path's on-site
activation) is an ``outbox`` row written in the deciding transaction, with the idempotency key
``incident:tier:target:channel:attempt`` (unique). After commit the node sends its rows: it starts the leg
task, then marks the row sent. A crash between commit and "sent" leaves the row unsent: on restart (own
rows, at once) or on another node (after ``claim_until``) it is sent again, so a crash costs at most one
duplicate notification and never a lost one. A cancel is addressed to the node that runs the leg; a node
sweeps the cancels addressed to it at every tick.

*Nodes.* Every node writes a heartbeat row (``node``). A node whose heartbeat is older than
``node_dead_after_s`` is dead: the survivors end its in-flight legs with ``leg.ended`` (cause ``failed``,
"lost"), which makes their incidents due at once, and take over its unsent outbox rows. A restarted node
does the same for its own previous life at start-up. A deadline that passed while every node was down is
due at the first tick and acted on at once (the next tier still starts at the old deadline; see
:mod:`escalation.decide`).

Wake-ups: one in-memory timer at the earliest deadline plus a safety poll (1 s by default) -- never one job per
page. The :class:`~escalation.watchdog.Watchdog` raises an operational alarm when ticks stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import joinedload, selectinload

from comms.clock import Clock, TimerHandle
from comms.db.events import append_event, leg_status
from comms.db.models import (
    CallLeg,
    ContactMethod,
    EscalationPolicy,
    Event,
    Incident,
    Node,
    Outbox,
    Person,
    PersonGroup,
    PersonGroupMember,
    Room,
    Rotation,
)
from comms.db.types import Channel as ChannelKind
from comms.db.types import ContactKind, Direction, GroupPick, Severity
from comms.errors import ValidationError
from comms.ids import new_id, short_code
from escalation.channel import AcceptResult, AnnounceOrder, Announcer, Channel, LegOrder, OrphanEnder
from escalation.decide import apply_actions, decide, next_deadline
from escalation.model import (
    OPEN_INCIDENT_STATES,
    ActivateOnSite,
    CancelLeg,
    Contact,
    Dial,
    EscalationState,
    IncidentState,
    Leg,
    MarkAccepted,
    MarkExhausted,
    OnSite,
    PolicyOptions,
    SkipTier,
    StartTier,
    Target,
    Tier,
)
from escalation.oncall import RotationSpec, pick_least_recent, who_is_on_call

log = logging.getLogger(__name__)

OPEN_STATES = tuple(OPEN_INCIDENT_STATES)
FINAL_LEG_KINDS = frozenset({"leg.declined", "leg.ended", "leg.failed"})
ONSITE_MESSAGE = (
    "Medical emergency. Severe contrast reaction in room {room}, {site}. Code team, respond now. "
    "Incident {code}."
)
_PIN = PasswordHasher()


class EscalationRunner:
    """Runs escalations for every open incident this node can claim."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        clock: Clock,
        *,
        node_id: str,
        channels: Mapping[str, Channel],
        announcers: Mapping[str, Announcer] | None = None,
        lease_s: float = 15.0,
        safety_poll_s: float = 1.0,
        min_ring_s: float = 10.0,
        node_dead_after_s: float = 10.0,
        claim_batch: int = 200,
    ) -> None:
        self._sf = session_factory
        self._clock = clock
        self.node_id = node_id
        self._channels = dict(channels)
        self._announcers = dict(announcers or {})
        self._lease = dt.timedelta(seconds=lease_s)
        self._safety_poll_s = safety_poll_s
        self._min_ring_s = min_ring_s
        self._dead_after = dt.timedelta(seconds=node_dead_after_s)
        self._claim_batch = claim_batch
        self._kinds = frozenset(self._channels)
        self._wake = asyncio.Event()
        self._timer: TimerHandle | None = None
        self._timer_at: dt.datetime | None = None
        """When the loop's timer wakes it (``None`` while it is awake: it re-arms before it sleeps)."""
        self._hint_at: dt.datetime | None = None
        """A deadline made while the loop was awake (it may have read the next one before it was committed)."""
        self._loop_task: asyncio.Task[None] | None = None
        self._leg_tasks: dict[str, asyncio.Task[None]] = {}
        self._tick_lock = asyncio.Lock()
        self._last_sweep: float | None = None
        self._sweeper: asyncio.Task[None] | None = None
        bind = session_factory.kw.get("bind")
        self._postgres: bool | None = None if bind is None else bind.dialect.name == "postgresql"
        # SQLite has one writer at a time: queueing our writers here costs microseconds, where SQLite's own
        # busy handler sleeps 1…100 ms between retries (measured: it dominated tick lateness under load).
        self._write_lock = asyncio.Lock()
        self.ticks = 0
        self.last_tick_mono: float | None = None
        """Monotonic time of the last completed tick (the watchdog reads it)."""

    # ------------------------------------------------------------------------------------------- lifecycle

    async def start(self, *, run: bool = True) -> None:
        """Heartbeat, recover this node's previous life, then tick in the background (unless ``run`` is false:
        tests drive :meth:`tick` themselves)."""
        await self._heartbeat(started=True)
        await self._recover()
        if not run:
            return
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="escalation-runner")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for task in list(self._leg_tasks.values()):
            task.cancel()
        if self._leg_tasks:
            await asyncio.gather(*self._leg_tasks.values(), return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()

    def wake(self) -> None:
        """Ask for a tick as soon as possible."""
        self._wake.set()

    def _wake_by(self, when: dt.datetime | None) -> None:
        """Make sure the loop wakes up by ``when`` (a new deadline), without a tick now if it already will."""
        if when is None:
            return
        if when <= self._clock.now():
            self.wake()
        elif self._timer_at is None:  # awake: it arms no later than this before it sleeps again
            self._hint_at = when if self._hint_at is None else min(self._hint_at, when)
        elif when < self._timer_at:
            self._arm(when)

    def _arm(self, when: dt.datetime) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        delay = max(0.0, (when - self._clock.now()).total_seconds())
        self._timer = self._clock.call_later(delay, self._wake.set)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick(sweep=False)
                self._sweep_in_background()
                nxt = await self._next_due()
            except Exception:
                # The loop must never die: log, and try again at the safety poll.
                log.exception("escalation tick failed; retrying in %.1f s", self._safety_poll_s)
                nxt = None
            when = min(
                t
                for t in (self._clock.now() + dt.timedelta(seconds=self._safety_poll_s), nxt, self._hint_at)
                if t is not None
            )
            self._hint_at = None
            self._arm(when)
            await self._wake.wait()
            self._wake.clear()
            self._timer_at = None

    async def _next_due(self) -> dt.datetime | None:
        async with self._sf() as s:
            value: dt.datetime | None = await s.scalar(
                sa.select(sa.func.min(Incident.tier_deadline)).where(Incident.tier_deadline.is_not(None))
            )
        return value

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        """A write transaction (serialised in this process on SQLite, see ``__init__``)."""
        if await self._is_postgres():
            async with self._sf() as s, s.begin():
                yield s
            return
        async with self._write_lock, self._sf() as s, s.begin():
            yield s

    async def _is_postgres(self) -> bool:
        if self._postgres is None:
            async with self._sf() as s:
                self._postgres = (await s.connection()).dialect.name == "postgresql"
        return self._postgres

    async def _heartbeat(self, *, started: bool = False) -> None:
        now = self._clock.now()
        async with self._write() as s:
            node = await s.get(Node, self.node_id)
            if node is None:
                s.add(Node(id=self.node_id, started_at=now, seen_at=now))
            else:
                node.seen_at = now
                if started:
                    node.started_at = now

    async def _recover(self) -> None:
        """At start: legs this node ran in its previous life are lost (end them); its unsent rows are sent."""
        await self._end_lost_legs([self.node_id], "lost: node restarted while the leg was live")
        await self._send_unsent(takeover=False)

    # --------------------------------------------------------------------------------------------- intake

    async def raise_incident(self, *, room_code: str, severity: str, source: str) -> str:
        """Create an incident for ``room_code`` and start paging at once; returns the incident id.

        The incident, its ``incident.raised`` event *and* the first decision (first tier's legs, their events and
        outbox rows) are one transaction: the alert goes out right after this commit, without waiting for the
        loop's next tick. Should that first decision fail (a bug, never a valid input), the incident is raised
        without it, due now, and the loop decides it: an alert is never lost to a decision error.
        """
        try:
            sev = Severity(severity)
        except ValueError as exc:
            allowed = ", ".join(s.value for s in Severity)
            raise ValidationError(f"severity {severity!r} is not known: expected one of {allowed}") from exc
        try:
            # a runner with no channel (a controller that only raises) leaves deciding to the nodes that page
            decide_now = bool(self._channels)
            incident_id, rows, deadline = await self._raise(room_code, sev, source, decide_now=decide_now)
        except ValidationError:
            raise
        except Exception:
            log.exception(
                "room %s: the first decision failed inside the raise; raising without it", room_code
            )
            incident_id, rows, deadline = await self._raise(room_code, sev, source, decide_now=False)
        log.info("[incident=%s] raised for room %s, severity %s, by %s", incident_id, room_code, sev, source)
        await self._send(rows)
        self._wake_by(deadline)
        return incident_id

    async def _raise(
        self, room_code: str, sev: Severity, source: str, *, decide_now: bool
    ) -> tuple[str, list[Outbox], dt.datetime | None]:
        now = self._clock.now()
        async with self._write() as s:
            room = await s.scalar(
                sa.select(Room).where(Room.code == room_code, Room.active).options(joinedload(Room.site))
            )
            if room is None:
                raise ValidationError(f"room {room_code!r} is not known: expected the code of an active room")
            policy = (
                (
                    await s.execute(
                        sa.select(EscalationPolicy)
                        .where(EscalationPolicy.site_id == room.site_id, EscalationPolicy.active)
                        .order_by(EscalationPolicy.version.desc())
                        .options(joinedload(EscalationPolicy.tiers))  # one query, not two
                        .limit(1)
                    )
                )
                .unique()
                .scalar_one_or_none()
            )
            snapshot: dict[str, Any] = policy.snapshot() if policy else {"policy_id": None, "tiers": []}
            snapshot["onsite_activation_uri"] = room.site.onsite_activation_uri
            incident = Incident(
                code=short_code(),
                site_id=room.site_id,
                room_id=room.id,
                severity=sev,
                state=IncidentState.RAISED,
                policy_snapshot=snapshot,
                raised_at=now,
                tier_deadline=now,
            )
            incident.site = room.site
            incident.room = room
            # the people on call are resolved once, at the instant of the incident, and frozen with it
            people: list[Person] = []  # held so that the first decision reads them from the session
            snapshot["resolved"] = await self._resolve_targets(s, incident, snapshot, keep=people)
            incident.policy_snapshot = snapshot
            s.add(incident)  # inserted by append_event's flush, which then knows the new chain starts at 1
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
            rows = await self._decide(s, incident, now, fresh=True) if decide_now else []
            return incident.id, rows, incident.tier_deadline

    # ----------------------------------------------------------------------------------------------- tick

    async def tick(self, *, sweep: bool = True) -> int:
        """Decide for every due incident this node can claim, then send; returns how many were processed.

        ``sweep``: also run the periodic sweep (heartbeat, cancels addressed here, dead nodes, unsent rows) if
        it is due; the background loop runs it in its own task instead, so a sweep never delays a deadline.
        """
        async with self._tick_lock:
            self.ticks += 1
            now = self._clock.now()
            due = await self._claim_due(now)
            done = 0
            for incident_id in due:
                if await self._process(incident_id, now):
                    done += 1
            if sweep and self._sweep_due():
                await self._sweep()
            self.last_tick_mono = self._clock.monotonic()
            return done

    def _sweep_due(self) -> bool:
        mono = self._clock.monotonic()
        if self._last_sweep is not None and mono - self._last_sweep < min(1.0, self._safety_poll_s):
            return False
        self._last_sweep = mono
        return True

    def _sweep_in_background(self) -> None:
        if (self._sweeper is None or self._sweeper.done()) and self._sweep_due():
            self._sweeper = asyncio.get_running_loop().create_task(
                self._guarded_sweep(), name="escalation-sweep"
            )

    async def _guarded_sweep(self) -> None:
        try:
            await self._sweep()
        except Exception:
            log.exception("escalation sweep failed; retrying at the next one")

    def _claimable(self, now: dt.datetime) -> sa.ColumnElement[bool]:
        return sa.and_(
            Incident.tier_deadline.is_not(None),
            Incident.tier_deadline <= now,
            sa.or_(
                Incident.lease_until.is_(None),
                Incident.lease_until < now,
                Incident.lease_owner == self.node_id,
            ),
        )

    async def _claim_due(self, now: dt.datetime) -> Sequence[str]:
        """Candidates only: each is claimed for real in its own decision transaction (:meth:`_claim`)."""
        async with self._sf() as s:
            return (
                await s.scalars(
                    sa.select(Incident.id)
                    .where(self._claimable(now))
                    .order_by(Incident.tier_deadline)
                    .limit(self._claim_batch)
                )
            ).all()

    async def _claim(self, s: AsyncSession, incident_id: str, now: dt.datetime) -> bool:
        """Claim one due incident inside the deciding transaction.

        PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` (a row another node is deciding is skipped, never
        waited for), then the lease columns; the row lock holds until commit, and a node that dies mid-decision
        loses its transaction and its lock at once. SQLite: the conditional UPDATE, checked by row count.
        """
        lease = {"lease_owner": self.node_id, "lease_until": now + self._lease}
        if await self._is_postgres():
            got = await s.scalar(
                sa.select(Incident.id)
                .where(Incident.id == incident_id, self._claimable(now))
                .with_for_update(skip_locked=True)
            )
            if got is None:
                return False
        claimed = await s.execute(
            sa.update(Incident)
            .where(Incident.id == incident_id, self._claimable(now))
            .values(**lease)
            .execution_options(synchronize_session=False)
        )
        return bool(claimed.rowcount == 1)  # type: ignore[attr-defined]

    async def _process(self, incident_id: str, now: dt.datetime) -> bool:
        async with self._write() as s:
            if not await self._claim(s, incident_id, now):
                return False
            incident = await s.get(
                Incident,
                incident_id,
                populate_existing=True,
                options=[joinedload(Incident.site), joinedload(Incident.room)],
            )
            assert incident is not None
            rows = await self._decide(s, incident, now)
        await self._send(rows)
        return True

    async def _decide(
        self, s: AsyncSession, incident: Incident, now: dt.datetime, *, fresh: bool = False
    ) -> list[Outbox]:
        """Decide for ``incident`` (claimed, or ``fresh``: created in this transaction) and write it all: the
        decisions, their events and one outbox row per notification; returns the rows to send after commit."""
        rows: list[Outbox] = []
        state, legs_by_id = await self._load_state(s, incident, fresh=fresh)
        actions = decide(state, now, kinds=self._kinds, min_ring_s=self._min_ring_s)
        new_ids = [new_id() for a in actions if isinstance(a, Dial)]
        after = apply_actions(state, actions, iter(new_ids))
        ids = iter(new_ids)
        for action in actions:
            match action:
                case StartTier(tier=tier, started_at=started, deadline=deadline):
                    incident.state = IncidentState.PAGING
                    incident.current_tier = tier
                    incident.tier_started_at = started
                    await self._event(
                        s,
                        incident,
                        "incident.tier_started",
                        {
                            "tier": tier,
                            "deadline": deadline.isoformat(timespec="milliseconds"),
                            "late_ms": round((now - started).total_seconds() * 1000, 1),
                        },
                    )
                case SkipTier(tier=tier, reason=reason):
                    log.warning("[incident=%s] stage %d skipped: %s", incident.id, tier, reason)
                    await self._event(s, incident, "incident.tier_skipped", {"tier": tier, "reason": reason})
                case Dial():
                    rows.append(await self._dial(s, incident, action, next(ids), now))
                case ActivateOnSite():
                    rows.append(await self._activate(s, incident, action, now))
                case CancelLeg(leg_id=leg_id, reason=reason):
                    row = await self._cancel_row(s, incident, legs_by_id[leg_id], reason, now)
                    if row is not None:
                        rows.append(row)
                case MarkAccepted(person_id=person_id, leg_id=leg_id):
                    if incident.state in OPEN_STATES:  # normally try_accept already did this
                        incident.state = IncidentState.ACCEPTED
                        incident.accepted_by_id = person_id
                        incident.accepted_leg_id = leg_id
                        incident.accepted_at = now
                        await self._event(
                            s, incident, "incident.accepted", {"person_id": person_id, "leg_id": leg_id}
                        )
                case MarkExhausted(reason=reason):
                    incident.state = IncidentState.EXHAUSTED
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
        return rows

    async def _dial(
        self, s: AsyncSession, incident: Incident, action: Dial, leg_id: str, now: dt.datetime
    ) -> Outbox:
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
        await (
            s.flush()
        )  # the leg row before its events (the unit of work does not order event after call_leg)
        key = (
            f"{incident.id}:{action.tier}:{action.person_id}/{action.contact_method_id}:"
            f"{action.kind}:{action.attempt}"
        )
        await self._event(
            s,
            incident,
            "leg.created",
            {
                "tier": action.tier,
                "position": action.position,
                "attempt": action.attempt,
                "person_id": action.person_id,
                "person": person.display_name,
                "channel": action.kind,
                "address": action.address,
                "ring_timeout_s": action.ring_timeout_s,
                "key": key,
            },
            leg_id=leg_id,
        )
        order = LegOrder(
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
            idempotency_key=key,
            require_pin=person.pin_hash is not None,
        )
        return self._outbox(s, incident, leg_id, "place", key, dataclasses.asdict(order), now)

    async def _activate(
        self, s: AsyncSession, incident: Incident, action: ActivateOnSite, now: dt.datetime
    ) -> Outbox:
        leg_id = new_id()
        s.add(
            CallLeg(
                id=leg_id,
                incident_id=incident.id,
                tier=None,
                person_id=None,
                contact_method_id=None,
                channel=ChannelKind(action.kind),
                direction=Direction.OUTBOUND,
                address=action.address,
                created_at=now,
            )
        )
        await s.flush()  # the leg row before its events
        key = f"{incident.id}:onsite:{action.address}:{action.kind}:0"
        await self._event(
            s,
            incident,
            "incident.onsite_activation",
            {"channel": action.kind, "address": action.address, "message": action.message, "key": key},
            leg_id=leg_id,
        )
        order = AnnounceOrder(leg_id, incident.id, action.kind, action.address, action.message)
        return self._outbox(s, incident, leg_id, "onsite", key, dataclasses.asdict(order), now)

    async def _cancel_row(
        self, s: AsyncSession, incident: Incident, leg: Any, reason: str, now: dt.datetime
    ) -> Outbox | None:
        key = f"{incident.id}:cancel:{leg.id}"
        rows = (await s.execute(sa.select(Outbox.action, Outbox.node).where(Outbox.leg_id == leg.id))).all()
        if any(row.action == "cancel" for row in rows):
            return None  # already decided (a repeated, idempotent cancel)
        owner = next((row.node for row in rows if row.action in ("place", "onsite")), None)
        await self._event(s, incident, "leg.cancel_requested", {"reason": reason}, leg_id=leg.id)
        return self._outbox(
            s,
            incident,
            leg.id,
            "cancel",
            key,
            {"channel": leg.channel.value, "reason": reason},
            now,
            node=owner or self.node_id,
        )

    def _outbox(
        self,
        s: AsyncSession,
        incident: Incident,
        leg_id: str | None,
        action: str,
        key: str,
        payload: dict[str, Any],
        now: dt.datetime,
        *,
        node: str | None = None,
    ) -> Outbox:
        row = Outbox(
            key=key,
            incident_id=incident.id,
            leg_id=leg_id,
            action=action,
            node=node or self.node_id,
            payload=payload,
            created_at=now,
            claim_until=now + self._lease,
            sends=0,
        )
        s.add(row)
        return row

    # -------------------------------------------------------------------------------------------- sending

    async def _send(self, rows: Sequence[Outbox]) -> None:
        """Perform committed outbox rows addressed to this node: start the legs, *then* mark them sent.

        One write marks every performed row: a tier of N targets is not N transactions ahead of its last leg's
        start. A row whose perform failed stays unsent (the sweep retries it).
        """
        performed: list[str] = []
        for row in rows:
            if row.node != self.node_id:
                continue  # a cancel for a leg another node runs: that node's sweep performs it
            try:
                await self._perform(row)
            except Exception:
                log.exception("[incident=%s leg=%s] outbox %s failed", row.incident_id, row.leg_id, row.key)
                continue
            performed.append(row.id)
        if not performed:
            return
        async with self._write() as s:
            await s.execute(
                sa.update(Outbox)
                .where(Outbox.id.in_(performed))
                .values(sent_at=self._clock.now(), sends=Outbox.sends + 1)
                .execution_options(synchronize_session=False)
            )

    async def _perform(self, row: Outbox) -> None:
        match row.action:
            case "place":
                self._spawn(LegOrder(**row.payload))
            case "onsite":
                self._spawn(AnnounceOrder(**row.payload))
            case "cancel":
                assert row.leg_id is not None
                channel = self._channels.get(str(row.payload.get("channel")))
                if channel is not None:
                    await channel.cancel(row.leg_id, str(row.payload.get("reason")))
            case _:
                raise ValidationError(
                    f"outbox row {row.key} has action {row.action!r}: expected place/onsite/cancel"
                )

    async def _sweep(self) -> None:
        """Heartbeat; cancels addressed here; legs of dead nodes; unsent rows nobody sends any more."""
        await self._heartbeat()
        now = self._clock.now()
        async with self._sf() as s:
            dead = (
                await s.scalars(
                    sa.select(Node.id).where(Node.id != self.node_id, Node.seen_at < now - self._dead_after)
                )
            ).all()
        if dead:
            await self._end_lost_legs(dead, "lost: the node running the leg stopped")
        await self._send_unsent(takeover=True)

    async def _send_unsent(self, *, takeover: bool) -> None:
        """Send unsent rows: this node's own (at once), and others' whose claim expired (``takeover``)."""
        now = self._clock.now()
        if takeover:
            where = sa.or_(
                sa.and_(
                    Outbox.node == self.node_id, sa.or_(Outbox.action == "cancel", Outbox.claim_until < now)
                ),
                sa.and_(Outbox.node != self.node_id, Outbox.action != "cancel", Outbox.claim_until < now),
            )
        else:
            where = Outbox.node == self.node_id
        async with self._sf() as s:
            candidates = (
                await s.scalars(
                    sa.select(Outbox).where(Outbox.sent_at.is_(None), where).order_by(Outbox.created_at)
                )
            ).all()
        for row in candidates:
            if row.action == "cancel":
                await self._send(
                    [row]
                )  # addressed to this node: the leg runs here (or ran, before a restart)
                continue
            previous = row.node
            if not await self._take(row, now) or not await self._still_wanted(row):
                continue
            log.warning(
                "[incident=%s leg=%s] sending outbox row %s again (%s)",
                row.incident_id,
                row.leg_id,
                row.key,
                "recovered after a restart" if previous == self.node_id else f"taken over from {previous}",
            )
            row.node = self.node_id
            await self._send([row])

    async def _take(self, row: Outbox, now: dt.datetime) -> bool:
        async with self._write() as s:
            done = await s.execute(
                sa.update(Outbox)
                .where(
                    Outbox.id == row.id,
                    Outbox.sent_at.is_(None),
                    Outbox.node == row.node,
                    sa.or_(Outbox.node == self.node_id, Outbox.claim_until < now),
                )
                .values(node=self.node_id, claim_until=now + self._lease)
                .execution_options(synchronize_session=False)
            )
            return bool(done.rowcount == 1)  # type: ignore[attr-defined]

    async def _still_wanted(self, row: Outbox) -> bool:
        """A recovered ``place`` is sent only if its incident is open and the leg was not cancelled meanwhile."""
        async with self._write() as s:
            incident = await s.get(Incident, row.incident_id)
            cancelled = await s.scalar(
                sa.select(Outbox.id).where(Outbox.leg_id == row.leg_id, Outbox.action == "cancel")
            )
            if incident is not None and incident.state in OPEN_STATES and cancelled is None:
                return True
            await s.execute(
                sa.update(Outbox)
                .where(Outbox.id == row.id)
                .values(sent_at=self._clock.now())
                .execution_options(synchronize_session=False)
            )
            if incident is not None and row.leg_id is not None:
                await append_event(
                    s,
                    incident=incident,
                    leg_id=row.leg_id,
                    kind="leg.ended",
                    data={"status": None, "cause": "cancelled", "reason": "not placed: no longer needed"},
                    clock=self._clock,
                    source=self.node_id,
                )
        return False

    async def _end_lost_legs(self, nodes: Sequence[str], reason: str) -> None:
        """End every non-final leg of an open incident that ``nodes`` had placed (their calls died with them).

        A call the dead node placed may still ring a phone (or, answered, hold a line): its channel, if it
        can (:class:`~escalation.channel.OrphanEnder`), ends it from the recorded events, and what it sent
        (``leg.cancel_sent`` or ``leg.bye_sent``, by this node) precedes ``leg.ended``. The SIP channel cancels
        unanswered INVITEs only (a BYE needs the dialog that lived in the dead node's memory); the Twilio
        voice channel ends any call by its CallSid.
        """
        async with self._sf() as s:
            rows = (
                await s.execute(
                    sa.select(Outbox.leg_id, Outbox.node, Outbox.payload)
                    .join(Incident, Incident.id == Outbox.incident_id)
                    .where(
                        Outbox.node.in_(nodes),
                        Outbox.action.in_(("place", "onsite")),
                        Outbox.sent_at.is_not(None),
                        Incident.state.in_(OPEN_STATES),
                    )
                )
            ).all()
        for leg_id, node, payload in rows:
            if leg_id is None or leg_id in self._leg_tasks:
                continue
            events = await self._leg_events(leg_id)
            if leg_status(events).is_final:
                continue
            log.warning("[leg=%s] %s (%s)", leg_id, reason, node)
            channel = self._channels.get(str((payload or {}).get("kind")))
            if isinstance(channel, OrphanEnder):
                try:
                    sent = await channel.cancel_orphan(leg_id, events)
                except Exception:  # the leg must still be ended: the tree moves on whatever the phone does
                    log.exception("[leg=%s] ending the orphan call failed", leg_id)
                    sent = None
                if sent is not None:
                    await self.record(
                        leg_id,
                        sent,
                        {"by": self.node_id, "reason": "orphan: the node that placed the leg stopped"},
                    )
            await self.record(
                leg_id, "leg.ended", {"status": None, "cause": "failed", "reason": reason, "by": node}
            )

    # ------------------------------------------------------------------------------------------- state

    async def _load_state(
        self, s: AsyncSession, incident: Incident, *, fresh: bool = False
    ) -> tuple[EscalationState, dict[str, Any]]:
        """The decision core's view of ``incident``; ``fresh`` (created in this transaction): it has no legs and
        no event but ``incident.raised`` yet, so nothing is read back."""
        tiers = await self._tiers(s, incident)
        if fresh:
            return self._state(incident, tiers, (), ()), {}
        # plain rows, not ORM objects: this runs on every decision and the ORM's bookkeeping is its main cost
        legs = (
            await s.execute(
                sa.select(
                    CallLeg.id, CallLeg.tier, CallLeg.person_id, CallLeg.contact_method_id, CallLeg.channel
                )
                .where(CallLeg.incident_id == incident.id, CallLeg.direction == Direction.OUTBOUND)
                .order_by(CallLeg.created_at)
            )
        ).all()
        events = (
            await s.execute(
                sa.select(Event.leg_id, Event.kind, Event.data)
                .where(Event.incident_id == incident.id)
                .order_by(Event.seq)
            )
        ).all()
        by_leg: dict[str, list[Any]] = {}
        for ev in events:
            if ev.leg_id is not None:
                by_leg.setdefault(ev.leg_id, []).append(ev)
        view = tuple(
            Leg(
                leg.id,
                leg.tier if leg.tier is not None else -1,
                leg.person_id or "",
                leg.contact_method_id or "",
                leg_status(by_leg.get(leg.id, [])),
            )
            for leg in legs
            if leg.person_id is not None
        )
        return self._state(incident, tiers, view, events), {leg.id: leg for leg in legs}

    def _state(
        self, incident: Incident, tiers: tuple[Tier, ...], legs: tuple[Leg, ...], events: Sequence[Any]
    ) -> EscalationState:
        snap = incident.policy_snapshot
        uri = snap.get("onsite_activation_uri")
        onsite = None
        if uri:
            message = ONSITE_MESSAGE.format(
                room=incident.room.name, site=incident.site.name, code=" ".join(incident.code)
            )
            onsite = OnSite("sip", str(uri), message)
        options = PolicyOptions(
            repeat=int(snap.get("repeat", 1)), severe_fanout=int(snap.get("severe_fanout", 1)), onsite=onsite
        )
        # legs are listed in event order so the first accept in the log wins
        return EscalationState(
            incident_id=incident.id,
            incident_state=incident.state,
            tiers=tiers,
            current_tier=incident.current_tier,
            tier_started_at=incident.tier_started_at,
            tier_deadline=_tier_deadline(incident, events),
            legs=legs,
            accepted_by=incident.accepted_by_id,
            severe=incident.severity == Severity.SEVERE,
            options=options,
        )

    async def _tiers(self, s: AsyncSession, incident: Incident) -> tuple[Tier, ...]:
        snap = incident.policy_snapshot
        resolved = snap.get("resolved")
        if resolved is None:  # an incident raised before targets were frozen at raise time
            resolved = await self._resolve_targets(s, incident, snap)
        tiers: list[Tier] = []
        for raw, people in zip(snap.get("tiers", []), resolved, strict=True):
            targets = tuple(
                Target(p["person_id"], p["name"], tuple(Contact(c[0], c[1], c[2]) for c in p["contacts"]))
                for p in people
            )
            tiers.append(
                Tier(
                    int(raw["position"]),
                    float(raw["ring_timeout_s"]),
                    targets,
                    parallel=bool(raw.get("parallel", True)),
                )
            )
        return tuple(tiers)

    async def _resolve_targets(
        self,
        s: AsyncSession,
        incident: Incident,
        snapshot: Mapping[str, Any],
        *,
        keep: list[Person] | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Targets of the frozen policy, resolved to people on call when the incident was raised.

        ``rotation:<tier>`` is the member on call, ``person:<username>`` that person if active, ``group:<name>``
        the members the site's group picks (:meth:`_group_members`); a person is paged once per tier whatever
        the targets that name them. ``keep`` collects the people found: while the caller holds them, the
        session's identity map (weak) keeps them too, and the same transaction reads them without a query.
        """
        out: list[list[dict[str, Any]]] = []
        for raw in snapshot.get("tiers", []):
            people: list[Person] = []
            for target in raw.get("targets", []):
                kind, _, name = str(target).partition(":")
                found: list[Person] = []
                if kind == "rotation":
                    on_call = await self._on_call(s, incident, name)
                    found = [] if on_call is None else [on_call]
                elif kind == "person":
                    person = await s.scalar(sa.select(Person).where(Person.username == name, Person.active))
                    found = [] if person is None else [person]
                elif kind == "group":
                    found = await self._group_members(s, incident, name, taken=people)
                people.extend(p for p in found if p not in people)
            if keep is not None:
                keep.extend(people)
            tier: list[dict[str, Any]] = []
            for person in people:
                methods = (
                    await s.scalars(
                        sa.select(ContactMethod)
                        .where(ContactMethod.person_id == person.id, ContactMethod.active)
                        .order_by(ContactMethod.priority)
                    )
                ).all()
                tier.append(
                    {
                        "person_id": person.id,
                        "name": person.display_name,
                        "contacts": [[m.id, m.kind.value, m.address] for m in methods],
                    }
                )
            out.append(tier)
        return out

    async def _group_members(
        self, s: AsyncSession, incident: Incident, name: str, *, taken: Sequence[Person]
    ) -> list[Person]:
        """Whom the target ``group:<name>`` pages: the active members of that group at the incident's site.

        ``pick = all``: every active member, in listed order. ``least_recent``: of the active members not
        already in the tier (``taken``) and with an active contact this node has a channel for, the ``size``
        paged least recently at this site -- the latest outbound ``call_leg`` of each, at raise time
        (:func:`~escalation.oncall.pick_least_recent`; never paged first, ties in listed order).
        No such group, or nobody left: an empty list (a tier with nobody is skipped, and logged, by decide).
        """
        group = await s.scalar(
            sa.select(PersonGroup)
            .where(PersonGroup.site_id == incident.site_id, PersonGroup.name == name, PersonGroup.active)
            .options(selectinload(PersonGroup.members).selectinload(PersonGroupMember.person))
        )
        if group is None:
            log.warning(
                "[incident=%s] target group:%s: no active group of that name at the site", incident.id, name
            )
            return []
        members = [m.person for m in group.members if m.person.active]
        if group.pick is GroupPick.ALL:
            return members
        usable_kinds = [k for k in ContactKind if k.value in self._kinds]
        reachable = set(
            (
                await s.scalars(
                    sa.select(ContactMethod.person_id).where(
                        ContactMethod.person_id.in_([p.id for p in members]),
                        ContactMethod.active,
                        ContactMethod.kind.in_(usable_kinds),
                    )
                )
            ).all()
        )
        candidates = [p for p in members if p not in taken and p.id in reachable]
        rows = await s.execute(
            sa.select(CallLeg.person_id, sa.func.max(CallLeg.created_at))
            .join(Incident, Incident.id == CallLeg.incident_id)
            .where(
                Incident.site_id == incident.site_id,
                CallLeg.direction == Direction.OUTBOUND,
                CallLeg.person_id.in_([p.id for p in candidates]),
            )
            .group_by(CallLeg.person_id)
        )
        last_paged: dict[str, dt.datetime | None] = {str(pid): at for pid, at in rows.all()}
        chosen = pick_least_recent([p.id for p in candidates], last_paged, group.size) if candidates else ()
        log.info(
            "[incident=%s] group:%s picks %d of %d member(s) least recently paged",
            incident.id,
            name,
            len(chosen),
            len(members),
        )
        by_id = {p.id: p for p in candidates}
        return [by_id[pid] for pid in chosen]

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

    def _spawn(self, order: LegOrder | AnnounceOrder) -> None:
        if order.leg_id in self._leg_tasks:
            return  # already running here: never two tasks for one leg
        task = asyncio.get_running_loop().create_task(self._run_leg(order), name=f"leg-{order.leg_id}")
        self._leg_tasks[order.leg_id] = task
        task.add_done_callback(lambda _t: self._leg_tasks.pop(order.leg_id, None))

    async def _run_leg(self, order: LegOrder | AnnounceOrder) -> None:
        try:
            if isinstance(order, AnnounceOrder):
                announcer = self._announcers.get(order.kind)
                if announcer is None:
                    raise LookupError(
                        f"no announcer for on-site activation kind {order.kind!r}: have {sorted(self._announcers)}"
                    )
                await announcer.announce(order, self)
            else:
                channel = self._channels.get(order.kind)
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
        # a leg we cancelled ourselves changes no decision (the tier already moved on or someone accepted)
        final = kind in FINAL_LEG_KINDS and (data or {}).get("cause") != "cancelled"
        async with self._write() as s:
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
        async with self._write() as s:
            leg = await s.get(CallLeg, leg_id)
            if leg is None:
                raise ValidationError(f"leg {leg_id!r} is not known: cannot accept")
            won = await s.execute(
                sa.update(Incident)
                .where(Incident.id == leg.incident_id, Incident.state.in_(OPEN_STATES))
                .values(
                    state=IncidentState.ACCEPTED,
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

    async def check_pin(self, leg_id: str, digits: str) -> bool:
        """Verify ``digits`` against the argon2 ``pin_hash`` of the leg's person; the result is a leg event."""
        async with self._write() as s:
            leg = await s.get(CallLeg, leg_id)
            if leg is None:
                raise ValidationError(f"leg {leg_id!r} is not known: cannot check a PIN")
            person = await s.get(Person, leg.person_id) if leg.person_id else None
            ok = False
            if person is not None and person.pin_hash:
                try:
                    ok = await asyncio.to_thread(_PIN.verify, person.pin_hash, digits)
                except (VerificationError, InvalidHashError):
                    ok = False
            incident = await s.get(Incident, leg.incident_id)
            assert incident is not None
            await self._event(
                s, incident, "leg.pin_checked", {"ok": ok, "length": len(digits)}, leg_id=leg_id
            )
        return ok


def hash_pin(pin: str) -> str:
    """The argon2 hash to store in ``Person.pin_hash`` for ``pin`` (4-8 digits)."""
    if not (pin.isdigit() and 4 <= len(pin) <= 8):
        raise ValidationError(f"PIN of length {len(pin)} is not valid: expected 4-8 digits")
    return _PIN.hash(pin)


def _tier_deadline(incident: Incident, events: Sequence[Any]) -> dt.datetime | None:
    """The current tier's deadline, as decided when the tier started (the column holds the next *wake-up*)."""
    if incident.current_tier is None:
        return None
    for ev in reversed(events):
        if ev.kind == "incident.tier_started" and ev.data.get("tier") == incident.current_tier:
            return dt.datetime.fromisoformat(str(ev.data["deadline"]))
    return None
