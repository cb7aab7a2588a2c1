"""leg_status: a leg's status is a pure fold of its events (no database needed)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comms.db.events import leg_status
from comms.db.types import LegStatus


@dataclasses.dataclass(frozen=True)
class Fact:
    kind: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


def facts(*items: str | tuple[str, dict[str, Any]]) -> list[Fact]:
    return [Fact(i) if isinstance(i, str) else Fact(*i) for i in items]


RINGING = ("leg.created", "leg.invite_sent", "leg.trying", "leg.ringing")


@pytest.mark.parametrize(
    ("events", "status"),
    [
        ([], LegStatus.CREATED),
        (facts("leg.created"), LegStatus.CREATED),
        (facts("leg.created", "leg.invite_sent"), LegStatus.DIALING),
        (facts("leg.created", "leg.invite_sent", "leg.trying"), LegStatus.TRYING),
        (facts(*RINGING), LegStatus.RINGING),
        (facts(*RINGING, "leg.answered", "leg.dtmf"), LegStatus.ANSWERED),
        (facts(*RINGING, "leg.answered", "leg.dtmf", "leg.accepted"), LegStatus.ACCEPTED),
        (
            facts(*RINGING, "leg.answered", "leg.accepted", "leg.bye_received", ("leg.ended", {})),
            LegStatus.ENDED,
        ),
        (
            facts(*RINGING, "leg.answered", "leg.declined", "leg.bye_sent", ("leg.ended", {})),
            LegStatus.DECLINED,
        ),
        (facts(*RINGING, ("leg.ended", {"status": 486})), LegStatus.BUSY),
        (facts(*RINGING, ("leg.ended", {"status": 600})), LegStatus.BUSY),
        (facts(*RINGING, ("leg.ended", {"status": 480})), LegStatus.NO_ANSWER),
        (facts(*RINGING, ("leg.ended", {"status": 408})), LegStatus.NO_ANSWER),
        (facts(*RINGING, ("leg.ended", {"status": 603})), LegStatus.DECLINED),
        (facts(*RINGING, "leg.cancel_sent", ("leg.ended", {"status": 487})), LegStatus.CANCELLED),
        (facts(*RINGING, "leg.cancel_sent", ("leg.ended", {"status": None})), LegStatus.CANCELLED),
        (facts(*RINGING, ("leg.ended", {"status": 503})), LegStatus.FAILED),
        (facts("leg.created", "leg.invite_sent", ("leg.ended", {"status": None})), LegStatus.FAILED),
        (facts(*RINGING, ("leg.ended", {"status": None, "cause": "no_answer"})), LegStatus.NO_ANSWER),
        (facts(*RINGING, ("leg.ended", {"cause": "busy"})), LegStatus.BUSY),
        (facts(*RINGING, ("leg.ended", {"cause": "normal"})), LegStatus.FAILED),  # never answered
        (facts(*RINGING, "leg.answered", ("leg.ended", {"cause": "normal"})), LegStatus.ENDED),
        (facts(*RINGING, "leg.answered", ("leg.ended", {"status": 200})), LegStatus.ENDED),
        (facts("leg.created", "leg.failed"), LegStatus.FAILED),
        # a late or duplicated provisional never moves a leg backwards
        (facts(*RINGING, "leg.answered", "leg.ringing", "leg.trying"), LegStatus.ANSWERED),
        # a final status sticks, whatever follows
        (facts(*RINGING, ("leg.ended", {"status": 486}), "leg.answered", "leg.accepted"), LegStatus.BUSY),
        # unknown kinds are facts without a status meaning
        (facts(*RINGING, "leg.media_started", "leg.rtp_stats"), LegStatus.RINGING),
    ],
)
def test_leg_status_table(events: list[Fact], status: LegStatus) -> None:
    assert leg_status(events) is status


_KINDS = [
    "leg.created",
    "leg.invite_sent",
    "leg.trying",
    "leg.ringing",
    "leg.answered",
    "leg.dtmf",
    "leg.accepted",
    "leg.declined",
    "leg.cancel_sent",
    "leg.bye_sent",
    "leg.bye_received",
    "leg.failed",
    "leg.ended",
]
_fact = st.builds(
    Fact,
    st.sampled_from(_KINDS),
    st.fixed_dictionaries({}, optional={"status": st.sampled_from([None, 200, 408, 486, 487, 503, 603])}),
)


@settings(deadline=None)  # a loaded machine must not turn a slow example into a failure
@given(st.lists(_fact, max_size=12), st.lists(_fact, max_size=6))
def test_final_status_never_changes(prefix: list[Fact], suffix: list[Fact]) -> None:
    status = leg_status(prefix)
    if status.is_final:
        assert leg_status(prefix + suffix) is status


@settings(deadline=None)
@given(st.permutations(["leg.created", "leg.invite_sent", "leg.trying", "leg.ringing", "leg.answered"]))
def test_progress_is_the_furthest_step_in_any_order(order: list[str]) -> None:
    assert leg_status(facts(*order)) is LegStatus.ANSWERED
