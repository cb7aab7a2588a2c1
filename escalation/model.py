"""Plain data for the escalation decision core (:mod:`escalation.decide`): the state it reads, the actions.

Frozen dataclasses only: the runner builds an :class:`EscalationState` from the store (the policy version
frozen on the incident, the resolved on-call targets, the legs with their statuses derived from leg events),
calls ``decide(state, now)`` and performs/persists the actions in one transaction.

*Tiers and stages.* The policy is a list of :class:`Tier` plus :class:`PolicyOptions` (repeat the tree N
times; severe fan-out to the first K tiers; the site's on-site emergency activation). The core expands it
into *stages* (:func:`escalation.decide.stages`): a parallel tier is one stage, a sequential tier one stage
per target, a severe incident's first stage holds the first K tiers at once, and the whole list repeats
``repeat`` times. ``current_tier``, ``Leg.tier``, ``StartTier.tier``, ``Dial.tier`` and ``SkipTier.tier``
are **stage** indexes (equal to tier indexes for a plain parallel tree without repeats).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
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

    @property
    def is_open(self) -> bool:
        """Not yet resolved, exhausted or cancelled."""
        return self not in (IncidentState.RESOLVED, IncidentState.EXHAUSTED, IncidentState.CANCELLED)


class LegStatus(StrEnum):
    """A leg's status, derived from its events by :func:`comms.db.events.leg_status` (never stored)."""

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

    @property
    def is_final(self) -> bool:
        """Over: declined, busy, no answer, failed, cancelled or ended."""
        return self in FAILED_STATUSES


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
    parallel: bool = True
    """Ring every target (and every contact) at once; ``False``: one target after the other."""


@dataclass(frozen=True)
class OnSite:
    """The site's on-site emergency activation (code team): called with a spoken message, never an accept."""

    kind: str
    address: str
    message: str


@dataclass(frozen=True)
class PolicyOptions:
    repeat: int = 1
    """How many times the whole tree is walked before the incident is exhausted (1 = once)."""
    severe_fanout: int = 1
    """A severe incident's first stage rings the first K tiers at once (0 or 1: the plain ladder)."""
    onsite: OnSite | None = None
    """Raised at once, in parallel, for a severe incident (``None``: the site has none configured)."""


@dataclass(frozen=True)
class Stage:
    """One step of the expanded tree: who rings together, for how long."""

    index: int
    tiers: tuple[int, ...]
    """Tier indexes this stage covers (several for a severe fan-out)."""
    attempt: int
    """0 for the first walk of the tree, 1 for the first repeat …"""
    ring_timeout_s: float
    targets: tuple[Target, ...]

    @property
    def position(self) -> int:
        return self.tiers[0]


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
    severe: bool = False
    options: PolicyOptions = field(default_factory=PolicyOptions)

    def __post_init__(self) -> None:
        where = f"incident {self.incident_id}"
        positions = [t.position for t in self.tiers]
        if positions != sorted(set(positions)):
            raise EscalationError(f"{where}: tier positions must strictly increase, got {positions}")
        if self.options.repeat < 1 or self.options.severe_fanout < 0:
            raise EscalationError(
                f"{where}: options {self.options}: expected repeat >= 1 and severe_fanout >= 0"
            )
        if self.current_tier is not None:
            stage_count = self.stage_count()
            if not 0 <= self.current_tier < stage_count:
                raise EscalationError(
                    f"{where}: current stage {self.current_tier} is not an index of {stage_count} stages"
                )
            if self.tier_started_at is None or self.tier_deadline is None:
                raise EscalationError(
                    f"{where}: tier {self.current_tier} is current but has no start/deadline"
                )
        for value in (self.tier_started_at, self.tier_deadline):
            if value is not None and value.tzinfo is None:
                raise EscalationError(f"{where}: expected aware UTC datetimes, got naive {value.isoformat()}")

    def stage_count(self) -> int:
        """How many stages the tree expands to (see :func:`escalation.decide.stages`)."""
        k = min(self.options.severe_fanout, len(self.tiers)) if self.severe else 0
        per_walk = (1 if k else 0) + sum(
            1 if t.parallel or len(t.targets) <= 1 else len(t.targets) for t in self.tiers[k:]
        )
        return per_walk * self.options.repeat


# --- actions -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartTier:
    tier: int
    started_at: dt.datetime
    deadline: dt.datetime


@dataclass(frozen=True)
class Dial:
    tier: int
    """The stage index."""
    person_id: str
    contact_method_id: str
    kind: str
    address: str
    ring_timeout_s: float
    position: int = field(default=0, compare=False)
    """The policy tier's position (for the outbox idempotency key and the evidence)."""
    attempt: int = field(default=0, compare=False)
    """Which walk of the tree (0 = first; repeats count up)."""


@dataclass(frozen=True)
class ActivateOnSite:
    """Call the site's code team with a spoken message, now, in parallel with paging (severe only)."""

    kind: str
    address: str
    message: str


@dataclass(frozen=True)
class CancelLeg:
    leg_id: str
    reason: str  # "cancelled-by-accept" | "tier-timeout" | "incident-closed"


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


Action = StartTier | Dial | CancelLeg | MarkAccepted | MarkExhausted | SkipTier | ActivateOnSite
