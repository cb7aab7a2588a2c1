"""The channel interface: how the runner reaches a person, and how a channel reports back.

A channel receives a :class:`LegOrder` (everything needed to place one leg, no PHI) and runs the leg to its end,
reporting every fact through the :class:`LegReporter` the runner gives it. Accept is arbitrated by the runner
(:meth:`LegReporter.try_accept`): a channel never decides on its own that its person won.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


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


class Channel(Protocol):
    kind: str

    async def place(self, order: LegOrder, reporter: LegReporter) -> None:
        """Run the leg to its end; every fact goes to ``reporter``. Must not raise for a peer's failure."""
        ...

    async def cancel(self, leg_id: str, reason: str) -> None:
        """Stop a live leg (CANCEL before answer, BYE after). Idempotent; unknown legs are ignored."""
        ...
