"""The evidence log: append, verify, derive.

Theory of operation
-------------------
Every fact (incident raised, INVITE sent, 180, answered, digit pressed, accepted, cancelled, ended, directory
changed, page viewed ...) is one ``event`` row, written by :func:`append_event` in the caller's transaction,
so the fact and the state change it records commit together or not at all.

*Chains.* Each incident is one chain; events without an incident form the ``global`` chain. Within a chain
``seq`` runs 1, 2, 3 ... without gaps. ``append_event`` takes the number with ``UPDATE ... SET next_seq =
next_seq + 1 RETURNING`` on the incident row (or the ``event_chain`` row): the row lock that UPDATE takes
serialises concurrent writers of one chain until commit (on SQLite every transaction is ``BEGIN IMMEDIATE``,
see :mod:`comms.db.engine`), so numbers are unique and gap-free, and a rolled-back append gives its number
back. Because that lock holds until commit, a transaction that already appended to a chain (or inserted the
incident itself) knows the chain's head: its next appends take the number and the previous hash from the
session (``session.info``, forgotten when the transaction ends) and write ``next_seq`` with the incident row's
other changes, instead of an UPDATE and a SELECT per event.

*Hashes.* ``hash = sha256(prev_hash + canonical_json(row))`` where the row is ``incident_id, leg_id, seq,
kind, at (ISO-8601 UTC, ms, 'Z'), mono, source, data`` and canonical JSON is sorted keys, no spaces, UTF-8.
The first event of a chain has ``prev_hash = GENESIS_HASH``. :func:`verify_chain` recomputes everything and
reports each break (changed row, missing or reordered row, wrong link) without stopping at the first.

*Derivation.* A leg's status is never stored: :func:`leg_status` folds its events. Statuses only move forward
(created < dialing < trying < ringing < answered < accepted) and a final status (declined, busy, no_answer,
failed, cancelled, ended) sticks, so a late or duplicated event cannot move a leg backwards.

``leg.ended`` carries ``data = {"status": <final SIP status or null>, "cause": <optional>}``: ``cause`` is one
of ``normal``, ``busy``, ``no_answer``, ``declined``, ``cancelled``, ``failed``; without it the SIP status
decides (486/600 busy, 408/480 no_answer, 487 cancelled, 603 declined, other >= 300 failed). A leg that was
answered and then ended normally is ``ended``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.orm.attributes import set_committed_value

from comms.clock import Clock, to_ms
from comms.db.models import GENESIS_HASH, GLOBAL_CHAIN, Event, EventChain, Incident
from comms.db.types import LegStatus
from comms.errors import CommsError, ValidationError

_KIND = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")

# Well-known kinds (others may be added by any component; the pattern above is the only rule).
INCIDENT_RAISED = "incident.raised"
INCIDENT_ACCEPTED = "incident.accepted"
INCIDENT_EXHAUSTED = "incident.exhausted"
LEG_CREATED = "leg.created"
LEG_INVITE_SENT = "leg.invite_sent"
LEG_TRYING = "leg.trying"
LEG_RINGING = "leg.ringing"
LEG_ANSWERED = "leg.answered"
LEG_DTMF = "leg.dtmf"
LEG_ACCEPTED = "leg.accepted"
LEG_DECLINED = "leg.declined"
LEG_CANCEL_SENT = "leg.cancel_sent"
LEG_BYE_SENT = "leg.bye_sent"
LEG_BYE_RECEIVED = "leg.bye_received"
LEG_FAILED = "leg.failed"
LEG_ENDED = "leg.ended"


class EvidenceError(CommsError):
    """The evidence log could not be written as asked (a bug on our side, never the peer's)."""


# ---------------------------------------------------------------------------------------------------- hashing


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, non-ASCII kept; refuses NaN/Infinity and non-JSON types."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"event data {value!r} is not plain JSON: {exc}") from exc


def format_at(at: dt.datetime) -> str:
    """``2026-01-05T14:00:00.123Z``."""
    at = to_ms(at)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


class _Hashable(Protocol):
    incident_id: str | None
    leg_id: str | None
    seq: int
    kind: str
    at: dt.datetime
    mono: float
    source: str
    data: dict[str, Any]
    prev_hash: str


def compute_hash(row: _Hashable) -> str:
    """``sha256(prev_hash + canonical JSON of the row)`` as hex."""
    body = {
        "incident_id": row.incident_id,
        "leg_id": row.leg_id,
        "seq": row.seq,
        "kind": row.kind,
        "at": format_at(row.at),
        "mono": float(row.mono),
        "source": row.source,
        "data": row.data,
    }
    return hashlib.sha256((row.prev_hash + canonical_json(body)).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------- append


async def append_event(
    session: AsyncSession,
    *,
    incident: Incident | None,
    leg_id: str | None,
    kind: str,
    data: Mapping[str, Any],
    clock: Clock,
    source: str,
) -> Event:
    """Append one event to ``incident``'s chain (or the global chain) in the session's transaction.

    The caller commits. The incident row is flushed first if it is new; its ``next_seq`` is advanced in the
    database and mirrored on the object without marking it dirty.
    """
    if not _KIND.fullmatch(kind):
        raise ValidationError(
            f"event kind {kind!r} is not valid: expected dotted lower-case such as 'leg.ringing'"
        )
    if not source:
        raise ValidationError("event source '' is empty: expected the node/component that saw the fact")
    # Store exactly what is hashed (tuples become lists, keys become strings).
    stored: dict[str, Any] = json.loads(canonical_json(dict(data)))
    head: tuple[int, str] | None = None
    heads: dict[str, tuple[int, str]] = session.info.setdefault(_HEADS, {})
    if incident is not None:
        created = incident.id is None or incident in session.new
        if created:
            await session.flush()
        incident_id: str | None = incident.id
        assert incident_id is not None
        attached = incident in session
        head = heads.get(incident_id) if attached else None
        if head is None and created and attached and incident.next_seq == 1:
            head = (1, GENESIS_HASH)  # inserted by this transaction: nobody else can see the chain yet
        if head is not None:
            seq = head[0]
            incident.next_seq = seq + 1  # written with the incident's other changes at the next flush
        else:
            seq = await _take_seq(
                session, sa.update(Incident).where(Incident.id == incident_id), Incident.next_seq, incident_id
            )
            set_committed_value(incident, "next_seq", seq + 1)
        prev_where = Event.incident_id == incident_id
    else:
        seq = await _take_seq(
            session,
            sa.update(EventChain).where(EventChain.name == GLOBAL_CHAIN),
            EventChain.next_seq,
            GLOBAL_CHAIN,
        )
        prev_where = Event.incident_id.is_(None)
        incident_id = None
    if head is not None:
        prev_hash = head[1]
    elif seq == 1:
        prev_hash = GENESIS_HASH
    else:
        found = await session.scalar(sa.select(Event.hash).where(prev_where, Event.seq == seq - 1))
        if found is None:
            chain = incident_id or GLOBAL_CHAIN
            raise EvidenceError(
                f"chain {chain} has no event seq {seq - 1}: expected it before appending seq {seq}"
            )
        prev_hash = found
    ev = Event(
        incident_id=incident_id,
        leg_id=leg_id,
        seq=seq,
        kind=kind,
        at=to_ms(clock.now()),
        mono=float(clock.monotonic()),
        source=source,
        data=stored,
        prev_hash=prev_hash,
    )
    ev.hash = compute_hash(ev)
    session.add(ev)
    if incident is not None and incident in session:
        heads[incident.id] = (seq + 1, ev.hash)
    else:
        await session.flush()
    return ev


_HEADS = "comms.db.events.heads"
"""``session.info`` key: per incident chain, the next ``seq`` and the last hash this transaction appended."""


@sa.event.listens_for(Session, "after_transaction_end")
def _forget_heads(session: Session, transaction: SessionTransaction) -> None:
    # a chain head is only known while this transaction holds the chain's row (see the module docstring);
    # a flush's own inner transaction ending changes nothing, a savepoint's may (a rollback to it)
    if transaction.parent is None or transaction.nested:
        session.info.pop(_HEADS, None)


async def _take_seq(
    session: AsyncSession, stmt: sa.Update, column: sa.orm.InstrumentedAttribute[int], chain: str
) -> int:
    result = await session.execute(
        stmt.values({column: column + 1}).returning(column).execution_options(synchronize_session=False)
    )
    after = result.scalar_one_or_none()
    if after is None:
        raise EvidenceError(
            f"chain {chain} has no counter row: expected the incident/event_chain row to exist"
        )
    return int(after) - 1


async def chain_events(session: AsyncSession, incident_id: str | None) -> list[Event]:
    """Every event of one chain (an incident's, or the global chain for ``None``), in ``seq`` order."""
    where = Event.incident_id.is_(None) if incident_id is None else Event.incident_id == incident_id
    return list((await session.scalars(sa.select(Event).where(where).order_by(Event.seq))).all())


# ---------------------------------------------------------------------------------------------------- verify


@dataclasses.dataclass(frozen=True)
class ChainProblem:
    """One break in a chain: which chain, which position, what is wrong."""

    chain: str
    seq: int
    event_id: int | None
    reason: str

    def __str__(self) -> str:
        return f"chain {self.chain} seq {self.seq} (event {self.event_id}): {self.reason}"


class _Verifiable(_Hashable, Protocol):
    id: int
    hash: str


def verify_chain(events: Iterable[_Verifiable]) -> list[ChainProblem]:
    """Check every chain present in ``events`` (complete chains, any order); return every problem found."""
    chains: dict[str, list[_Verifiable]] = {}
    for ev in events:
        chains.setdefault(ev.incident_id or GLOBAL_CHAIN, []).append(ev)
    problems: list[ChainProblem] = []
    for chain, rows in chains.items():
        rows.sort(key=lambda e: (e.seq, e.id))
        prev = GENESIS_HASH
        expected_seq = 1
        for ev in rows:
            if ev.seq != expected_seq:
                what = "duplicated" if ev.seq < expected_seq else f"missing seq {expected_seq}..{ev.seq - 1}"
                problems.append(
                    ChainProblem(chain, ev.seq, ev.id, f"sequence {what}: expected {expected_seq}")
                )
            if ev.prev_hash != prev:
                problems.append(
                    ChainProblem(
                        chain, ev.seq, ev.id, f"prev_hash {ev.prev_hash[:12]}… expected {prev[:12]}…"
                    )
                )
            actual = compute_hash(ev)
            if actual != ev.hash:
                problems.append(
                    ChainProblem(
                        chain, ev.seq, ev.id, f"hash {ev.hash[:12]}… does not match content ({actual[:12]}…)"
                    )
                )
            prev = ev.hash
            expected_seq = ev.seq + 1
    return problems


# ---------------------------------------------------------------------------------------------------- derive


class _LegFact(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def data(self) -> dict[str, Any]: ...


_PROGRESS = {
    LEG_CREATED: LegStatus.CREATED,
    LEG_INVITE_SENT: LegStatus.DIALING,
    LEG_TRYING: LegStatus.TRYING,
    LEG_RINGING: LegStatus.RINGING,
    LEG_ANSWERED: LegStatus.ANSWERED,
    LEG_ACCEPTED: LegStatus.ACCEPTED,
}
_RANK = {s: i for i, s in enumerate(_PROGRESS.values())}
_CAUSES = {
    "busy": LegStatus.BUSY,
    "no_answer": LegStatus.NO_ANSWER,
    "declined": LegStatus.DECLINED,
    "cancelled": LegStatus.CANCELLED,
    "failed": LegStatus.FAILED,
    "normal": LegStatus.ENDED,
}


def _ended_status(current: LegStatus, data: Mapping[str, Any], cancel_sent: bool) -> LegStatus:
    cause = data.get("cause")
    if isinstance(cause, str) and cause in _CAUSES:
        found = _CAUSES[cause]
        if found is LegStatus.ENDED and _RANK.get(current, 0) < _RANK[LegStatus.ANSWERED]:
            return LegStatus.CANCELLED if cancel_sent else LegStatus.FAILED
        return found
    if current in (LegStatus.ANSWERED, LegStatus.ACCEPTED):
        return LegStatus.ENDED
    status = data.get("status")
    if isinstance(status, int):
        if status in (486, 600):
            return LegStatus.BUSY
        if status in (408, 480):
            return LegStatus.NO_ANSWER
        if status == 487:
            return LegStatus.CANCELLED
        if status == 603:
            return LegStatus.DECLINED
        if 200 <= status < 300:
            return LegStatus.ENDED
    return LegStatus.CANCELLED if cancel_sent else LegStatus.FAILED


def leg_status(events: Sequence[_LegFact]) -> LegStatus:
    """The status of one leg from its events (in ``seq`` order); see the module doc for the rules."""
    status = LegStatus.CREATED
    cancel_sent = False
    for ev in events:
        if status.is_final:
            break
        match ev.kind:
            case kind if kind in _PROGRESS:
                new = _PROGRESS[kind]
                if _RANK[new] > _RANK[status]:
                    status = new
            case "leg.cancel_sent":
                cancel_sent = True
            case "leg.declined":
                status = LegStatus.DECLINED
            case "leg.failed":
                status = LegStatus.FAILED
            case "leg.ended":
                status = _ended_status(status, ev.data, cancel_sent)
            case _:
                pass  # dtmf, bye_sent, media facts ...: no change of status
    return status


def leg_statuses(events: Iterable[Event]) -> dict[str, LegStatus]:
    """Status of every leg that appears in ``events`` (sorted by incident and seq first)."""
    by_leg: dict[str, list[Event]] = {}
    for ev in sorted(events, key=lambda e: (e.incident_id or "", e.seq)):
        if ev.leg_id is not None:
            by_leg.setdefault(ev.leg_id, []).append(ev)
    return {leg: leg_status(rows) for leg, rows in by_leg.items()}
