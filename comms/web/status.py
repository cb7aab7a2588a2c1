"""The one-line status a room shows while its incident runs (pure: the API computes it, the page prints it).

Keeping the wording here rather than in the page's JavaScript makes it testable and the same on every screen:

* raised, nobody dialled yet   -> "Alert raised — finding who is on call…"
* paging with legs still live  -> "Calling Dr Ada Diaz… (tier 1)"  (0-based in the store, shown 1-based)
* accepted / connected         -> "Accepted by Dr Ada Diaz after 7.4 s"
* exhausted                    -> "Nobody accepted — activate the code team now"
* cancelled / resolved         -> "Cancelled" / "Resolved"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from comms.db.types import IncidentState, LegStatus

_LIVE = frozenset(
    {LegStatus.CREATED, LegStatus.DIALING, LegStatus.TRYING, LegStatus.RINGING, LegStatus.ANSWERED}
)


@dataclass(frozen=True)
class LegView:
    tier: int | None
    person_name: str | None
    status: LegStatus


@dataclass(frozen=True)
class StatusLine:
    text: str
    #: "calling" | "accepted" | "exhausted" | "closed" -- the page colours the line by it
    tone: str


def doctor(name: str) -> str:
    """``Ada Diaz`` -> ``Dr Ada Diaz``; a name that already starts with Dr is kept."""
    stripped = name.strip()
    if stripped.lower().startswith(("dr ", "dr.")):
        return stripped
    return f"Dr {stripped}"


def _names(names: Sequence[str]) -> str:
    unique = list(dict.fromkeys(names))
    if len(unique) <= 1:
        return "".join(unique)
    return ", ".join(unique[:-1]) + " and " + unique[-1]


def status_line(
    state: IncidentState,
    *,
    legs: Sequence[LegView],
    current_tier: int | None,
    accepted_by: str | None,
    seconds_to_accept: float | None,
) -> StatusLine:
    match state:
        case IncidentState.ACCEPTED | IncidentState.CONNECTED:
            who = doctor(accepted_by) if accepted_by else "someone"
            after = f" after {seconds_to_accept:.1f} s" if seconds_to_accept is not None else ""
            return StatusLine(f"Accepted by {who}{after}", "accepted")
        case IncidentState.EXHAUSTED:
            return StatusLine("Nobody accepted — activate the code team now", "exhausted")
        case IncidentState.CANCELLED:
            return StatusLine("Cancelled", "closed")
        case IncidentState.RESOLVED:
            return StatusLine("Resolved", "closed")
        case _:
            live = [leg for leg in legs if leg.status in _LIVE]
            if current_tier is not None:
                in_tier = [leg for leg in live if leg.tier == current_tier]
                live = in_tier or live
            tier = current_tier if current_tier is not None else (live[0].tier if live else None)
            suffix = f" (tier {tier + 1})" if tier is not None else ""
            names = [doctor(leg.person_name) for leg in live if leg.person_name]
            if names:
                return StatusLine(f"Calling {_names(names)}…{suffix}", "calling")
            if live or tier is not None:
                return StatusLine(f"Paging…{suffix}", "calling")
            return StatusLine("Alert raised — finding who is on call…", "calling")
