"""Column types and the closed vocabularies stored in the database.

``UTCDateTime`` is the one datetime column type: it refuses naive values, stores aware UTC truncated to whole
milliseconds, and hands back aware UTC on every backend (SQLite returns naive strings; PostgreSQL returns
``timestamptz`` in the session zone).  The enums are ``StrEnum`` so that their values are what is stored.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from comms.clock import UTC, to_ms

# One definition of the domain states, in the pure escalation model; the store uses the same enums.
from escalation.model import IncidentState as IncidentState
from escalation.model import LegStatus as LegStatus


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC with millisecond precision on SQLite and PostgreSQL alike."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(f"UTCDateTime expects a datetime, got {type(value).__name__}: {value!r}")
        if value.tzinfo is None:
            raise ValueError(f"UTCDateTime refuses naive datetime {value.isoformat()}: expected aware UTC")
        value = to_ms(value)
        if dialect.name == "sqlite":
            # SQLite's DATETIME renders a fixed-width string and ignores tzinfo: store naive UTC so that
            # text order is time order (the tier_deadline index relies on it).
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Role(enum.StrEnum):
    TECHNOLOGIST = "technologist"
    RADIOLOGIST = "radiologist"
    SCHEDULER = "scheduler"
    COMPLIANCE = "compliance"
    ADMIN = "admin"


class ContactKind(enum.StrEnum):
    SIP = "sip"
    PSTN_VOICE = "pstn_voice"
    SMS = "sms"
    PAGER = "pager"
    """A pager: ``wctp:<recipient id>``, ``snpp:<pager id>`` or ``mailto:<address>`` (escalation/pager.py)."""


class GroupPick(enum.StrEnum):
    """Whom a :class:`~comms.db.models.PersonGroup` target pages."""

    ALL = "all"
    """Every active member."""
    LEAST_RECENT = "least_recent"
    """The ``size`` members least recently paged at the group's site (ties: listed order)."""


class TierName(enum.StrEnum):
    """A rotation's tier (the brief's "primary"/"backup")."""

    PRIMARY = "primary"
    BACKUP = "backup"


class Severity(enum.StrEnum):
    """ACR contrast-reaction categories."""

    MILD = "mild"
    MODERATE = "moderate"
    SEVERE = "severe"
    UNKNOWN = "unknown"


class Channel(enum.StrEnum):
    """How a leg reaches (or came from) a person."""

    SIP = "sip"
    PSTN_VOICE = "pstn_voice"
    SMS = "sms"
    WEBRTC = "webrtc"
    PAGER = "pager"
    EMAIL = "email"
    WEBHOOK = "webhook"


class Direction(enum.StrEnum):
    OUTBOUND = "outbound"
    INBOUND = "inbound"


def enum_column(enum_cls: type[enum.StrEnum], name: str) -> sa.Enum:
    """A portable enum column: VARCHAR + CHECK (no native PostgreSQL type to migrate), values stored."""
    return sa.Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )
