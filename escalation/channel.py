"""The channel interface: how the runner reaches a person, and how a channel reports back.

A channel receives a :class:`LegOrder` (everything needed to place one leg, no PHI) and runs the leg to its end,
reporting every fact through the :class:`LegReporter` the runner gives it. Accept is arbitrated by the runner
(:meth:`LegReporter.try_accept`): a channel never decides on its own that its person won.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from comms.db.models import Event


@dataclass(frozen=True)
class LegOrder:
    leg_id: str
    incident_id: str
    incident_code: str
    severity: str
    site_name: str
    room_code: str
    room_name: str
    person_id: str
    person_name: str
    kind: str
    address: str
    ring_timeout_s: float
    tier: int
    idempotency_key: str = ""
    """``incident:tier:target:channel:attempt`` (the outbox key): a receiver can drop a duplicate with it."""
    require_pin: bool = False
    """The person has a PIN: accept needs it (checked with :meth:`LegReporter.check_pin`)."""


@dataclass(frozen=True)
class AnnounceOrder:
    """The severe path's on-site emergency activation: call ``address`` and speak ``message``; never accept."""

    leg_id: str
    incident_id: str
    kind: str
    address: str
    message: str
    ring_timeout_s: float = 60.0


@dataclass(frozen=True)
class AcceptResult:
    won: bool
    accepted_by_name: str | None
    """Who holds the incident (the caller when ``won``; the earlier acceptor otherwise)."""


class LegReporter(Protocol):
    async def record(self, leg_id: str, kind: str, data: dict[str, Any] | None = None) -> None:
        """Append one leg event (``leg.trying``, ``leg.ringing``, ``leg.ended`` …) to the evidence log."""
        ...

    async def try_accept(self, leg_id: str, *, digits: str, method: str) -> AcceptResult:
        """Atomically accept the incident for this leg's person, unless somebody already did."""
        ...

    async def check_pin(self, leg_id: str, digits: str) -> bool:
        """Whether ``digits`` is the PIN of the person this leg was placed to (logged, digits never stored)."""
        ...


class Channel(Protocol):
    kind: str

    async def place(self, order: LegOrder, reporter: LegReporter) -> None:
        """Run the leg to its end; every fact goes to ``reporter``. Must not raise for a peer's failure."""
        ...

    async def cancel(self, leg_id: str, reason: str) -> None:
        """Stop a live leg (CANCEL before answer, BYE after). Idempotent; unknown legs are ignored."""
        ...


@runtime_checkable
class OrphanEnder(Protocol):
    """A channel that can end a call another node placed and can no longer end (it died)."""

    async def cancel_orphan(self, leg_id: str, events: Sequence[Event]) -> str | None:
        """End the leg's call from its recorded ``events``; the event kind for what was sent
        (``leg.cancel_sent`` or ``leg.bye_sent``), or ``None`` when nothing could be sent (logged)."""
        ...


class Announcer(Protocol):
    kind: str

    async def announce(self, order: AnnounceOrder, reporter: LegReporter) -> None:
        """Call, speak the message, hang up; report facts. Must not raise for a peer's failure."""
        ...
