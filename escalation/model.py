"""Plain data for the escalation decision core (:mod:`escalation.decide`): the state it reads, the actions.

Frozen dataclasses only: the runner builds an :class:`EscalationState` from the store (the policy version
frozen on the incident, the resolved on-call targets, the legs with their statuses derived from leg events),
calls ``decide(state, now)`` and performs/persists the actions in one transaction.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from comms.errors import CommsError


class EscalationError(CommsError):
    """Base of the errors raised by the ``escalation`` package."""


class IncidentState(StrEnum):
    RAISED = "raised"
    PAGING = "paging"
    ACCEPTED = "accepted"
    CONNECTED = "connected"
    RESOLVED = "resolved"
    EXHAUSTED = "exhausted"
    CANCELLED = "cancelled"


class LegStatus(StrEnum):
    CREATED = "created"
    DIALING = "dialing"
    TRYING = "trying"
    RINGING = "ringing"
    ANSWERED = "answered"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ENDED = "ended"


RINGING_STATUSES = frozenset({LegStatus.CREATED, LegStatus.DIALING, LegStatus.TRYING, LegStatus.RINGING})
"""Not yet answered: a tier timeout cancels these."""
LIVE_STATUSES = RINGING_STATUSES | {LegStatus.ANSWERED}
"""Still a call in progress (answered = in the IVR, not yet accepted)."""
FAILED_STATUSES = frozenset(
    {
        LegStatus.DECLINED,
        LegStatus.BUSY,
        LegStatus.NO_ANSWER,
        LegStatus.FAILED,
        LegStatus.CANCELLED,
        LegStatus.ENDED,
    }
)
"""Over without an accept."""

OPEN_INCIDENT_STATES = frozenset({IncidentState.RAISED, IncidentState.PAGING})


@dataclass(frozen=True)
class Contact:
    contact_method_id: str
    kind: str  # "sip", "twilio_voice", "sms", ...
    address: str


@dataclass(frozen=True)
class Target:
    """A person resolved from a tier's rotation/user targets at page time."""

    person_id: str
    display_name: str
    contacts: tuple[Contact, ...]


@dataclass(frozen=True)
class Tier:
    position: int
    ring_timeout_s: float
    targets: tuple[Target, ...]


@dataclass(frozen=True)
class Leg:
    leg_id: str
    tier: int  # index into EscalationState.tiers
    person_id: str
    contact_method_id: str
    status: LegStatus


@dataclass(frozen=True)
class EscalationState:
    incident_id: str
    incident_state: IncidentState
    tiers: tuple[Tier, ...]
    current_tier: int | None = None
    tier_started_at: dt.datetime | None = None
    tier_deadline: dt.datetime | None = None
    legs: tuple[Leg, ...] = ()
    accepted_by: str | None = None

    def __post_init__(self) -> None:
        where = f"incident {self.incident_id}"
        positions = [t.position for t in self.tiers]
        if positions != sorted(set(positions)):
            raise EscalationError(f"{where}: tier positions must strictly increase, got {positions}")
        if self.current_tier is not None:
            if not 0 <= self.current_tier < len(self.tiers):
                raise EscalationError(
                    f"{where}: current_tier {self.current_tier} is not an index of {len(self.tiers)} tiers"
                )
            if self.tier_started_at is None or self.tier_deadline is None:
                raise EscalationError(
                    f"{where}: tier {self.current_tier} is current but has no start/deadline"
                )
        for value in (self.tier_started_at, self.tier_deadline):
            if value is not None and value.tzinfo is None:
                raise EscalationError(f"{where}: expected aware UTC datetimes, got naive {value.isoformat()}")


# --- actions -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartTier:
    tier: int
    started_at: dt.datetime
    deadline: dt.datetime


@dataclass(frozen=True)
class Dial:
    tier: int
    person_id: str
    contact_method_id: str
    kind: str
    address: str
    ring_timeout_s: float


@dataclass(frozen=True)
class CancelLeg:
    leg_id: str
    reason: str  # "accepted-elsewhere" | "tier-timeout" | "incident-closed"


@dataclass(frozen=True)
class MarkAccepted:
    person_id: str
    leg_id: str


@dataclass(frozen=True)
class MarkExhausted:
    reason: str


@dataclass(frozen=True)
class SkipTier:
    tier: int
    reason: str  # "nobody on call" | "no working contact"


Action = StartTier | Dial | CancelLeg | MarkAccepted | MarkExhausted | SkipTier
