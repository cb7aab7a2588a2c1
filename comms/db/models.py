"""The data model (SQLAlchemy 2, typed ``Mapped[]``), for SQLite (default) and PostgreSQL.

Directory: ``Site``, ``Room``, ``Person``, ``ContactMethod``, ``Rotation`` + ``RotationMember`` (ordered),
``PersonGroup`` + ``PersonGroupMember`` (ordered; a policy's ``group:<name>`` target),
``EscalationPolicy`` (versioned) + ``PolicyTier``.  Operations: ``Incident`` (its next deadline is the indexed
UTC column ``tier_deadline``; the runner claims due rows with a lease), ``CallLeg`` (one attempt to reach one
person, or one inbound call) and ``Event`` -- the evidence log, append-only and hash-chained per incident (a
global chain holds the events with no incident: audit, directory changes).  A leg's status is never stored: it
is derived from its events (:func:`comms.db.events.leg_status`).

Rows are never deleted from the directory: the import deactivates them (``active = False``) so history stays
readable.  Field values are checked as they are set (``@validates``) with :mod:`comms.db.validators` and
:mod:`comms.phone`; a refused value raises :class:`comms.errors.ValidationError`.

Append-only is enforced twice: here (ORM ``before_update``/``before_delete`` on ``Event`` raise) and in the
database (triggers created by the first migration, and by :func:`install_event_triggers` for ``create_all``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.orm import DeclarativeBase, Mapped, Mapper, mapped_column, relationship, validates

from comms import phone
from comms.db import validators as v
from comms.db.types import (
    Channel,
    ContactKind,
    Direction,
    GroupPick,
    IncidentState,
    Role,
    Severity,
    TierName,
    UTCDateTime,
    enum_column,
)
from comms.errors import ValidationError
from comms.ids import new_id

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first event of a chain."""

GLOBAL_CHAIN = "global"
"""Name of the ``event_chain`` row that numbers events without an incident."""

JSONType = sa.JSON()
# SQLite autoincrements only an INTEGER PRIMARY KEY
EventId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime()}  # noqa: RUF012


def _id() -> Mapped[str]:
    return mapped_column(sa.String(36), primary_key=True, default=new_id)


# ------------------------------------------------------------------------------------------------ directory


class Site(Base):
    __tablename__ = "site"

    id: Mapped[str] = _id()
    code: Mapped[str] = mapped_column(sa.String(32), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    timezone: Mapped[str] = mapped_column(sa.String(64))
    us_state: Mapped[str] = mapped_column(sa.String(2))
    active: Mapped[bool] = mapped_column(default=True)
    onsite_activation_uri: Mapped[str | None] = mapped_column(sa.String(255))
    """The code team's SIP URI: called with a spoken message for a severe incident (never an accept)."""

    rooms: Mapped[list[Room]] = relationship(back_populates="site", order_by="Room.code")
    rotations: Mapped[list[Rotation]] = relationship(back_populates="site", order_by="Rotation.name")

    @validates("code")
    def _v_code(self, _key: str, value: str) -> str:
        return v.code(value, "site code")

    @validates("timezone")
    def _v_tz(self, _key: str, value: str) -> str:
        return v.timezone_name(value)

    @validates("us_state")
    def _v_state(self, _key: str, value: str) -> str:
        return v.us_state(value)


class Room(Base):
    __tablename__ = "room"

    id: Mapped[str] = _id()
    site_id: Mapped[str] = mapped_column(sa.ForeignKey("site.id"), index=True)
    code: Mapped[str] = mapped_column(sa.String(32), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    device_token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    sip_phone_uri: Mapped[str | None] = mapped_column(sa.String(255))
    active: Mapped[bool] = mapped_column(default=True)

    site: Mapped[Site] = relationship(back_populates="rooms")

    @validates("code")
    def _v_code(self, _key: str, value: str) -> str:
        return v.code(value, "room code")

    @validates("device_token_hash")
    def _v_hash(self, _key: str, value: str) -> str:
        if not (isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)):
            raise ValidationError(f"device_token_hash {value!r} is not sha256 hex: expected 64 hex chars")
        return value

    @validates("sip_phone_uri")
    def _v_sip(self, _key: str, value: str | None) -> str | None:
        return None if value is None else phone.normalize_sip_uri(value)


class Person(Base):
    __tablename__ = "person"

    id: Mapped[str] = _id()
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    display_name: Mapped[str] = mapped_column(sa.String(200))
    roles: Mapped[str] = mapped_column(sa.String(200), default="")
    """Comma-separated :class:`~comms.db.types.Role` values, sorted; use :attr:`role_set`."""
    npi: Mapped[str | None] = mapped_column(sa.String(10))
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    pin_hash: Mapped[str | None] = mapped_column(sa.String(255))
    active: Mapped[bool] = mapped_column(default=True)

    contact_methods: Mapped[list[ContactMethod]] = relationship(
        back_populates="person", order_by="ContactMethod.priority"
    )

    @property
    def role_set(self) -> frozenset[Role]:
        return frozenset(Role(r) for r in self.roles.split(",") if r)

    def has_role(self, role: Role) -> bool:
        return role in self.role_set

    @validates("username")
    def _v_username(self, _key: str, value: str) -> str:
        return v.username(value)

    @validates("roles")
    def _v_roles(self, _key: str, value: str) -> str:
        return v.roles(value)

    @validates("npi")
    def _v_npi(self, _key: str, value: str | None) -> str | None:
        return None if value is None else v.npi(value)

    @validates("password_hash", "pin_hash")
    def _v_argon(self, key: str, value: str | None) -> str | None:
        if value is not None and not value.startswith("$argon2"):
            raise ValidationError(f"{key} of {self.username!r} is not an argon2 hash: expected '$argon2…'")
        return value

    def check(self) -> None:
        """Cross-field rule: a radiologist needs an NPI."""
        if Role.RADIOLOGIST.value in (self.roles or "").split(",") and not self.npi:
            raise ValidationError(f"person {self.username!r} is a radiologist without an NPI: expected npi")


class ContactMethod(Base):
    __tablename__ = "contact_method"
    __table_args__ = (sa.UniqueConstraint("person_id", "kind", "address"),)

    id: Mapped[str] = _id()
    person_id: Mapped[str] = mapped_column(sa.ForeignKey("person.id"), index=True)
    kind: Mapped[ContactKind] = mapped_column(enum_column(ContactKind, "contact_kind"))
    address: Mapped[str] = mapped_column(sa.String(255))
    """E.164 for ``pstn_voice``/``sms``; a normalised ``sip:``/``sips:`` URI for ``sip``; ``wctp:<id>``,
    ``snpp:<id>`` or ``mailto:<address>`` for ``pager``."""
    priority: Mapped[int] = mapped_column(default=0)
    label: Mapped[str] = mapped_column(sa.String(100), default="")
    active: Mapped[bool] = mapped_column(default=True)

    person: Mapped[Person] = relationship(back_populates="contact_methods")

    @validates("kind")
    def _v_kind(self, _key: str, value: ContactKind | str) -> ContactKind:
        kind = ContactKind(value)
        if self.address is not None:
            self.address = phone.normalize_address(kind.value, self.address)
        return kind

    @validates("address")
    def _v_address(self, _key: str, value: str) -> str:
        if self.kind is None:
            return value  # normalised when kind is set
        return phone.normalize_address(ContactKind(self.kind).value, value)


class Rotation(Base):
    """A simple weekly rotation (the on-call math lives in ``escalation/oncall.py``)."""

    __tablename__ = "rotation"
    __table_args__ = (sa.UniqueConstraint("site_id", "name"),)

    id: Mapped[str] = _id()
    site_id: Mapped[str] = mapped_column(sa.ForeignKey("site.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    tier: Mapped[TierName] = mapped_column(enum_column(TierName, "rotation_tier"))
    handoff_weekday: Mapped[int] = mapped_column(sa.SmallInteger)
    """0 = Monday ... 6 = Sunday."""
    handoff_time: Mapped[str] = mapped_column(sa.String(5))
    """Local ``HH:MM`` in the site's zone."""
    start_date: Mapped[dt.date] = mapped_column(sa.Date)
    active: Mapped[bool] = mapped_column(default=True)

    site: Mapped[Site] = relationship(back_populates="rotations")
    members: Mapped[list[RotationMember]] = relationship(
        back_populates="rotation", order_by="RotationMember.position", cascade="all, delete-orphan"
    )

    @validates("handoff_weekday")
    def _v_wd(self, _key: str, value: int) -> int:
        return v.weekday(value)

    @validates("handoff_time")
    def _v_time(self, _key: str, value: str) -> str:
        return v.hhmm(value)


class RotationMember(Base):
    __tablename__ = "rotation_member"
    __table_args__ = (sa.UniqueConstraint("rotation_id", "person_id"),)

    rotation_id: Mapped[str] = mapped_column(sa.ForeignKey("rotation.id"), primary_key=True)
    position: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[str] = mapped_column(sa.ForeignKey("person.id"), index=True)

    rotation: Mapped[Rotation] = relationship(back_populates="members")
    person: Mapped[Person] = relationship()


class PersonGroup(Base):
    """A group (pool) of people at a site, paged by a policy's ``group:<name>`` target.

    ``pick`` says whom: ``all`` members, or the ``size`` members least recently paged at the site (judged from
    ``call_leg`` when the incident is raised; ties in listed order). See ``EscalationRunner._resolve_targets``.
    """

    __tablename__ = "person_group"
    __table_args__ = (
        sa.UniqueConstraint("site_id", "name"),
        sa.CheckConstraint(f"size >= 1 AND size <= {v.GROUP_SIZE_MAX}", name="size_range"),
    )

    id: Mapped[str] = _id()
    site_id: Mapped[str] = mapped_column(sa.ForeignKey("site.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    pick: Mapped[GroupPick] = mapped_column(enum_column(GroupPick, "group_pick"), default=GroupPick.ALL)
    size: Mapped[int] = mapped_column(default=1, server_default="1")
    """How many members ``least_recent`` pages (``all`` ignores it)."""
    active: Mapped[bool] = mapped_column(default=True)

    site: Mapped[Site] = relationship()
    members: Mapped[list[PersonGroupMember]] = relationship(
        back_populates="group", order_by="PersonGroupMember.position", cascade="all, delete-orphan"
    )

    @validates("name")
    def _v_name(self, _key: str, value: str) -> str:
        return v.group_name(value)

    @validates("size")
    def _v_size(self, _key: str, value: int) -> int:
        return v.group_size(value)


class PersonGroupMember(Base):
    __tablename__ = "person_group_member"
    __table_args__ = (sa.UniqueConstraint("group_id", "person_id"),)

    group_id: Mapped[str] = mapped_column(sa.ForeignKey("person_group.id"), primary_key=True)
    position: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[str] = mapped_column(sa.ForeignKey("person.id"), index=True)

    group: Mapped[PersonGroup] = relationship(back_populates="members")
    person: Mapped[Person] = relationship()


class EscalationPolicy(Base):
    """A paging tree. Changing its tiers makes a new version; incidents freeze the version they used."""

    __tablename__ = "escalation_policy"
    __table_args__ = (sa.UniqueConstraint("site_id", "name", "version"),)

    id: Mapped[str] = _id()
    site_id: Mapped[str] = mapped_column(sa.ForeignKey("site.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    version: Mapped[int] = mapped_column(default=1)
    active: Mapped[bool] = mapped_column(default=True)
    repeat: Mapped[int] = mapped_column(default=1, server_default="1")
    """Walk the whole tree this many times before the incident is exhausted."""
    severe_fanout: Mapped[int] = mapped_column(default=1, server_default="1")
    """A severe incident rings the first K tiers at once (1: the plain ladder; the site sets 2+)."""

    tiers: Mapped[list[PolicyTier]] = relationship(
        back_populates="policy", order_by="PolicyTier.position", cascade="all, delete-orphan"
    )

    def snapshot(self) -> dict[str, Any]:
        """The frozen form stored on an incident (``Incident.policy_snapshot``)."""
        return {
            "policy_id": self.id,
            "name": self.name,
            "version": self.version,
            "repeat": self.repeat,
            "severe_fanout": self.severe_fanout,
            "tiers": [
                {
                    "position": t.position,
                    "ring_timeout_s": t.ring_timeout_s,
                    "targets": list(t.targets),
                    "parallel": t.parallel,
                }
                for t in self.tiers
            ],
        }


class PolicyTier(Base):
    __tablename__ = "policy_tier"
    __table_args__ = (
        sa.CheckConstraint(
            f"ring_timeout_s >= {v.RING_TIMEOUT_MIN_S} AND ring_timeout_s <= {v.RING_TIMEOUT_MAX_S}",
            name="ring_timeout_range",
        ),
    )

    policy_id: Mapped[str] = mapped_column(sa.ForeignKey("escalation_policy.id"), primary_key=True)
    position: Mapped[int] = mapped_column(primary_key=True)
    ring_timeout_s: Mapped[int]
    targets: Mapped[list[str]] = mapped_column(JSONType)
    parallel: Mapped[bool] = mapped_column(default=True, server_default=sa.true())
    """Ring every target at once (else one after the other, each for ``ring_timeout_s``)."""

    policy: Mapped[EscalationPolicy] = relationship(back_populates="tiers")

    @validates("ring_timeout_s")
    def _v_rt(self, _key: str, value: int) -> int:
        return v.ring_timeout(value)

    @validates("targets")
    def _v_targets(self, _key: str, value: list[str]) -> list[str]:
        return v.tier_targets(value)


# ----------------------------------------------------------------------------------------------- operations


class Incident(Base):
    __tablename__ = "incident"

    id: Mapped[str] = _id()
    code: Mapped[str] = mapped_column(sa.String(16), unique=True)
    site_id: Mapped[str] = mapped_column(sa.ForeignKey("site.id"), index=True)
    room_id: Mapped[str] = mapped_column(sa.ForeignKey("room.id"), index=True)
    severity: Mapped[Severity] = mapped_column(enum_column(Severity, "severity"), default=Severity.UNKNOWN)
    state: Mapped[IncidentState] = mapped_column(
        enum_column(IncidentState, "incident_state"), default=IncidentState.RAISED, index=True
    )
    policy_snapshot: Mapped[dict[str, Any]] = mapped_column(JSONType)
    raised_at: Mapped[dt.datetime]
    accepted_by_id: Mapped[str | None] = mapped_column(sa.ForeignKey("person.id"))
    accepted_at: Mapped[dt.datetime | None]
    accepted_leg_id: Mapped[str | None] = mapped_column(
        sa.ForeignKey("call_leg.id", use_alter=True, name="fk_incident_accepted_leg_id_call_leg")
    )
    current_tier: Mapped[int | None]
    tier_started_at: Mapped[dt.datetime | None]
    tier_deadline: Mapped[dt.datetime | None] = mapped_column(index=True)
    lease_owner: Mapped[str | None] = mapped_column(sa.String(100))
    lease_until: Mapped[dt.datetime | None]
    next_seq: Mapped[int] = mapped_column(default=1)
    """Sequence number the next event of this incident gets; advanced only by ``append_event``."""
    ended_at: Mapped[dt.datetime | None]

    site: Mapped[Site] = relationship()
    room: Mapped[Room] = relationship()
    accepted_by: Mapped[Person | None] = relationship(foreign_keys=[accepted_by_id])
    legs: Mapped[list[CallLeg]] = relationship(
        back_populates="incident", foreign_keys="CallLeg.incident_id", order_by="CallLeg.created_at"
    )


class CallLeg(Base):
    __tablename__ = "call_leg"

    id: Mapped[str] = _id()
    incident_id: Mapped[str] = mapped_column(sa.ForeignKey("incident.id"), index=True)
    tier: Mapped[int | None]
    person_id: Mapped[str | None] = mapped_column(sa.ForeignKey("person.id"), index=True)
    contact_method_id: Mapped[str | None] = mapped_column(sa.ForeignKey("contact_method.id"))
    channel: Mapped[Channel] = mapped_column(enum_column(Channel, "channel"))
    direction: Mapped[Direction] = mapped_column(
        enum_column(Direction, "direction"), default=Direction.OUTBOUND
    )
    address: Mapped[str] = mapped_column(sa.String(255))
    external_ref: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    """The channel's own id for this leg (SIP Call-ID, Twilio Call SID), when known."""
    created_at: Mapped[dt.datetime]

    incident: Mapped[Incident] = relationship(back_populates="legs", foreign_keys=[incident_id])
    person: Mapped[Person | None] = relationship()
    contact_method: Mapped[ContactMethod | None] = relationship()


class Outbox(Base):
    """One notification decided by the escalation runner, written with the decision, sent after commit.

    ``key`` is the idempotency key (``incident:tier:target:channel:attempt``). ``node`` sends it (the deciding
    node; for a cancel, the node that runs the leg); a row unsent after ``claim_until`` is taken over.
    """

    __tablename__ = "outbox"

    id: Mapped[str] = _id()
    key: Mapped[str] = mapped_column(sa.String(300), unique=True)
    incident_id: Mapped[str] = mapped_column(sa.ForeignKey("incident.id"))
    leg_id: Mapped[str | None] = mapped_column(sa.ForeignKey("call_leg.id"), index=True)
    action: Mapped[str] = mapped_column(sa.String(16))
    """``place`` | ``cancel`` | ``onsite``."""
    node: Mapped[str] = mapped_column(sa.String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[dt.datetime]
    claim_until: Mapped[dt.datetime | None]
    sent_at: Mapped[dt.datetime | None] = mapped_column(index=True)
    sends: Mapped[int] = mapped_column(default=0, server_default="0")


class Node(Base):
    """A running node's heartbeat (written by its escalation runner every tick)."""

    __tablename__ = "node"

    id: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    started_at: Mapped[dt.datetime]
    seen_at: Mapped[dt.datetime]


class EventChain(Base):
    """Counter for chains that have no incident row to carry ``next_seq`` (today only ``global``)."""

    __tablename__ = "event_chain"

    name: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    next_seq: Mapped[int] = mapped_column(default=1)


class Event(Base):
    """One fact of the evidence log. Append-only; see :mod:`comms.db.events` for writing and verifying."""

    __tablename__ = "event"
    __table_args__ = (
        sa.UniqueConstraint("incident_id", "seq"),
        sa.Index(
            "uq_event_global_seq",
            "seq",
            unique=True,
            sqlite_where=sa.text("incident_id IS NULL"),
            postgresql_where=sa.text("incident_id IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    incident_id: Mapped[str | None] = mapped_column(sa.ForeignKey("incident.id"))
    leg_id: Mapped[str | None] = mapped_column(sa.ForeignKey("call_leg.id"), index=True)
    seq: Mapped[int]
    kind: Mapped[str] = mapped_column(sa.String(64), index=True)
    at: Mapped[dt.datetime] = mapped_column(index=True)
    mono: Mapped[float] = mapped_column(sa.Double)
    source: Mapped[str] = mapped_column(sa.String(100))
    data: Mapped[dict[str, Any]] = mapped_column(JSONType)
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    hash: Mapped[str] = mapped_column(sa.String(64), unique=True)


class AppendOnlyError(ValidationError):
    """Somebody tried to change or delete an evidence row."""


@sa_event.listens_for(Event, "before_update")
def _refuse_update(_mapper: Mapper[Event], _conn: sa.Connection, target: Event) -> None:
    raise AppendOnlyError(f"event {target.id} ({target.kind}) is append-only: expected no UPDATE")


@sa_event.listens_for(Event, "before_delete")
def _refuse_delete(_mapper: Mapper[Event], _conn: sa.Connection, target: Event) -> None:
    raise AppendOnlyError(f"event {target.id} ({target.kind}) is append-only: expected no DELETE")


@sa_event.listens_for(Person, "before_insert")
@sa_event.listens_for(Person, "before_update")
def _check_person(_mapper: Mapper[Person], _conn: sa.Connection, target: Person) -> None:
    target.check()


# ------------------------------------------------------------------------------------- append-only triggers

SQLITE_TRIGGERS = (
    "CREATE TRIGGER event_no_update BEFORE UPDATE ON event "
    "BEGIN SELECT RAISE(ABORT, 'event is append-only: UPDATE refused'); END",
    "CREATE TRIGGER event_no_delete BEFORE DELETE ON event "
    "BEGIN SELECT RAISE(ABORT, 'event is append-only: DELETE refused'); END",
)
SQLITE_DROP_TRIGGERS = ("DROP TRIGGER IF EXISTS event_no_update", "DROP TRIGGER IF EXISTS event_no_delete")

POSTGRESQL_TRIGGERS = (
    "CREATE OR REPLACE FUNCTION event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION 'event is append-only: % refused', TG_OP "
    "USING ERRCODE = 'restrict_violation'; END $$",
    "CREATE TRIGGER event_no_change BEFORE UPDATE OR DELETE ON event "
    "FOR EACH ROW EXECUTE FUNCTION event_append_only()",
    "CREATE TRIGGER event_no_truncate BEFORE TRUNCATE ON event "
    "FOR EACH STATEMENT EXECUTE FUNCTION event_append_only()",
)
POSTGRESQL_DROP_TRIGGERS = (
    "DROP TRIGGER IF EXISTS event_no_change ON event",
    "DROP TRIGGER IF EXISTS event_no_truncate ON event",
    "DROP FUNCTION IF EXISTS event_append_only()",
)


def trigger_ddl(dialect: str, *, drop: bool = False) -> tuple[str, ...]:
    """The statements that install (or remove) the append-only triggers on ``event`` for ``dialect``."""
    match (dialect, drop):
        case ("sqlite", False):
            return SQLITE_TRIGGERS
        case ("sqlite", True):
            return SQLITE_DROP_TRIGGERS
        case ("postgresql", False):
            return POSTGRESQL_TRIGGERS
        case ("postgresql", True):
            return POSTGRESQL_DROP_TRIGGERS
        case _:
            raise ValidationError(f"no append-only triggers for {dialect!r}: expected sqlite or postgresql")


def install_event_triggers(conn: sa.Connection) -> None:
    """Create the append-only triggers (for ``metadata.create_all`` users; migrations do it themselves)."""
    for stmt in trigger_ddl(conn.dialect.name):
        conn.exec_driver_sql(stmt)


def seed_rows(conn: sa.Connection) -> None:
    """Rows every database needs (the global chain counter)."""
    conn.execute(sa.insert(EventChain).values(name=GLOBAL_CHAIN, next_seq=1))
