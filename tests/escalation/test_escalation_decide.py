"""The escalation decision core: each rule, the races, and hypothesis runs of arbitrary leg outcomes."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from escalation.decide import apply_actions, decide, next_deadline, set_leg_status
from escalation.model import (
    LIVE_STATUSES,
    Action,
    CancelLeg,
    Contact,
    Dial,
    EscalationError,
    EscalationState,
    IncidentState,
    LegStatus,
    MarkAccepted,
    MarkExhausted,
    PolicyOptions,
    SkipTier,
    StartTier,
    Target,
    Tier,
)

T0 = dt.datetime(2026, 3, 8, 7, 0, tzinfo=dt.UTC)


def s(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def person(pid: str, *kinds: str) -> Target:
    kinds = kinds or ("sip",)
    return Target(
        pid,
        f"Dr {pid}",
        tuple(Contact(f"{pid}-{k}{i}", k, f"sip:{pid}@example.test") for i, k in enumerate(kinds)),
    )


def ladder(*tiers: tuple[Target, ...], timeout: float = 30.0) -> EscalationState:
    return EscalationState(
        incident_id="inc-1",
        incident_state=IncidentState.RAISED,
        tiers=tuple(Tier(i + 1, timeout, t) for i, t in enumerate(tiers)),
    )


def leg_ids() -> Iterator[str]:
    return (f"leg-{n}" for n in itertools.count(1))


def step(
    state: EscalationState, now: dt.datetime, ids: Iterator[str]
) -> tuple[EscalationState, list[Action]]:
    actions = decide(state, now)
    assert decide(state, now) == actions  # deterministic: deciding twice gives the same actions
    return apply_actions(state, actions, ids), actions


def legs_of(state: EscalationState, person_id: str) -> list[str]:
    return [leg.leg_id for leg in state.legs if leg.person_id == person_id]


# --- rules ----------------------------------------------------------------------------------------


def test_raised_starts_tier_0_and_dials_every_sip_contact_in_parallel() -> None:
    state = ladder((person("a", "sip", "sms", "sip"), person("b")), (person("c"),))
    actions = decide(state, s(0))
    assert actions == [
        StartTier(0, s(0), s(30)),
        Dial(0, "a", "a-sip0", "sip", "sip:a@example.test", 30.0),
        Dial(0, "a", "a-sip2", "sip", "sip:a@example.test", 30.0),
        Dial(0, "b", "b-sip0", "sip", "sip:b@example.test", 30.0),
    ]


def test_after_applying_nothing_is_dialled_twice_and_the_deadline_is_next() -> None:
    ids = leg_ids()
    state, _ = step(ladder((person("a"), person("b"))), s(0), ids)
    assert state.incident_state is IncidentState.PAGING
    assert decide(state, s(1)) == []
    assert decide(state, s(29.999)) == []
    assert next_deadline(state) == s(30)


def test_accepted_leg_marks_accepted_and_cancels_every_other_live_leg() -> None:
    ids = leg_ids()
    state, _ = step(ladder((person("a"), person("b"), person("c"))), s(0), ids)
    state = set_leg_status(state, "leg-2", LegStatus.ACCEPTED)
    state = set_leg_status(state, "leg-3", LegStatus.DECLINED)
    actions = decide(state, s(10))
    assert actions == [MarkAccepted("b", "leg-2"), CancelLeg("leg-1", "cancelled-by-accept")]
    state = apply_actions(state, actions, ids)
    assert state.accepted_by == "b"
    assert state.incident_state is IncidentState.ACCEPTED
    assert decide(state, s(11)) == []
    assert decide(state, s(1000)) == []  # no more tiers, no exhaustion
    assert next_deadline(state) is None


def test_accept_arriving_after_the_deadline_but_before_the_tick_wins() -> None:
    ids = leg_ids()
    state, _ = step(ladder((person("a"), person("b")), (person("c"),)), s(0), ids)
    state = set_leg_status(state, "leg-1", LegStatus.ACCEPTED)  # pressed 1 at 30.2 s; the tick runs at 30.5 s
    actions = decide(state, s(30.5))
    assert actions == [MarkAccepted("a", "leg-1"), CancelLeg("leg-2", "cancelled-by-accept")]
    assert not any(
        isinstance(a, StartTier | Dial | CancelLeg) and getattr(a, "reason", "") == "tier-timeout"
        for a in actions
    )


def test_two_accepts_first_in_event_order_wins_the_other_is_cancelled() -> None:
    ids = leg_ids()
    state, _ = step(ladder((person("a"), person("b"))), s(0), ids)
    state = set_leg_status(state, "leg-2", LegStatus.ACCEPTED)
    state = set_leg_status(state, "leg-1", LegStatus.ACCEPTED)
    assert decide(state, s(5)) == [MarkAccepted("a", "leg-1"), CancelLeg("leg-2", "cancelled-by-accept")]


def test_every_leg_says_no_moves_on_at_once_starting_now() -> None:
    ids = leg_ids()
    state, _ = step(ladder((person("a"), person("b"), person("c"), person("d")), (person("e"),)), s(0), ids)
    for leg, status in zip(
        ("leg-1", "leg-2", "leg-3", "leg-4"),
        (LegStatus.DECLINED, LegStatus.BUSY, LegStatus.FAILED, LegStatus.NO_ANSWER),
        strict=True,
    ):
        assert decide(state, s(4)) == []  # someone is still ringing
        state = set_leg_status(state, leg, status)
    actions = decide(state, s(5))
    assert actions == [StartTier(1, s(5), s(35)), Dial(1, "e", "e-sip0", "sip", "sip:e@example.test", 30.0)]


def test_deadline_cancels_ringing_legs_and_starts_next_tier_at_the_old_deadline() -> None:
    ids = leg_ids()
    state, _ = step(ladder((person("a"), person("b")), (person("c"),)), s(0), ids)
    state = set_leg_status(state, "leg-2", LegStatus.RINGING)
    actions = decide(state, s(30.2))  # a tick 200 ms late does not stretch the ladder
    assert actions == [
        CancelLeg("leg-1", "tier-timeout"),
        CancelLeg("leg-2", "tier-timeout"),
        StartTier(1, s(30), s(60)),
        Dial(1, "c", "c-sip0", "sip", "sip:c@example.test", 30.0),
    ]


def test_a_very_late_tick_still_gives_the_next_tier_time_to_ring() -> None:
    ids = leg_ids()
    state, _ = step(ladder((person("a"),), (person("b"),)), s(0), ids)
    actions = decide(state, s(100))  # the runner was down for 70 s
    assert StartTier(1, s(30), s(110)) in actions  # deadline floored at now + min_ring_s (10 s)


def test_answered_leg_in_the_ivr_is_not_hung_up_by_a_tier_timeout() -> None:
    ids = leg_ids()
    state, _ = step(ladder((person("a"), person("b")), (person("c"),)), s(0), ids)
    state = set_leg_status(state, "leg-1", LegStatus.ANSWERED)
    state, actions = step(state, s(30), ids)
    assert CancelLeg("leg-2", "tier-timeout") in actions
    assert not any(isinstance(a, CancelLeg) and a.leg_id == "leg-1" for a in actions)
    assert state.current_tier == 1
    # a now presses 1 during tier 1: accept wins across tiers, c's ringing leg is cancelled
    state = set_leg_status(state, "leg-1", LegStatus.ACCEPTED)
    assert decide(state, s(40)) == [MarkAccepted("a", "leg-1"), CancelLeg("leg-3", "cancelled-by-accept")]


def test_empty_tiers_are_skipped_at_once_with_a_reason() -> None:
    state = ladder((), (person("a", "sms"),), (person("b"),))
    actions = decide(state, s(0))
    assert actions == [
        SkipTier(0, "nobody on call"),
        SkipTier(1, "no working contact"),
        StartTier(2, s(0), s(30)),
        Dial(2, "b", "b-sip0", "sip", "sip:b@example.test", 30.0),
    ]


def test_last_tier_failing_exhausts_loudly() -> None:
    ids = leg_ids()
    state, _ = step(ladder((person("a"),), ()), s(0), ids)
    state = set_leg_status(state, "leg-1", LegStatus.DECLINED)
    actions = decide(state, s(3))
    assert actions == [
        SkipTier(1, "nobody on call"),
        MarkExhausted("nobody accepted: 2 tier(s) x 1 walk(s), 1 person(s) tried"),
    ]
    state = apply_actions(state, actions, ids)
    assert state.incident_state is IncidentState.EXHAUSTED
    assert decide(state, s(4)) == []
    assert next_deadline(state) is None


def test_all_tiers_empty_exhausts_at_once() -> None:
    assert decide(ladder((), ()), s(0)) == [
        SkipTier(0, "nobody on call"),
        SkipTier(1, "nobody on call"),
        MarkExhausted("nobody to page: all 2 tier(s) empty"),
    ]


def test_exhaustion_waits_for_a_leg_still_in_the_ivr_within_the_grace() -> None:
    ids = leg_ids()
    state, _ = step(ladder((person("a"), person("b"))), s(0), ids)
    state = set_leg_status(state, "leg-1", LegStatus.ANSWERED)
    state, actions = step(state, s(30), ids)
    assert actions == [CancelLeg("leg-2", "tier-timeout")]
    assert next_deadline(state, s(30)) == s(90)
    assert decide(state, s(60)) == []
    assert decide(state, s(90)) == [
        CancelLeg("leg-1", "tier-timeout"),
        MarkExhausted("nobody accepted: 1 tier(s) x 1 walk(s), 2 person(s) tried"),
    ]


def test_crash_between_start_tier_and_dial_is_repaired() -> None:
    state = ladder((person("a"), person("b")))
    start = decide(state, s(0))
    half = apply_actions(state, start[:2], leg_ids())  # StartTier + the first Dial were persisted
    assert decide(half, s(1)) == [Dial(0, "b", "b-sip0", "sip", "sip:b@example.test", 30.0)]


def test_closed_incident_cancels_live_legs_and_dials_nothing() -> None:
    ids = leg_ids()
    state, _ = step(ladder((person("a"),), (person("b"),)), s(0), ids)
    cancelled = EscalationState(**{**state.__dict__, "incident_state": IncidentState.CANCELLED})
    assert decide(cancelled, s(100)) == [CancelLeg("leg-1", "incident-closed")]


def test_bad_state_is_refused_with_names() -> None:
    with pytest.raises(EscalationError, match="strictly increase"):
        EscalationState("i", IncidentState.RAISED, (Tier(2, 30, ()), Tier(1, 30, ())))
    with pytest.raises(EscalationError, match="current stage 3 is not an index of 1 stages"):
        EscalationState(
            "i",
            IncidentState.PAGING,
            (Tier(1, 30, ()),),
            current_tier=3,
            tier_started_at=T0,
            tier_deadline=T0,
        )
    with pytest.raises(EscalationError, match="expected an aware UTC now"):
        decide(ladder(()), dt.datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(EscalationError, match="has no leg 'nope'"):
        set_leg_status(ladder(()), "nope", LegStatus.FAILED)


# --- hypothesis: any sequence of leg outcomes -----------------------------------------------------

OUTCOMES = [
    LegStatus.RINGING,
    LegStatus.ANSWERED,
    LegStatus.ACCEPTED,
    LegStatus.DECLINED,
    LegStatus.BUSY,
    LegStatus.NO_ANSWER,
    LegStatus.FAILED,
    LegStatus.ENDED,
]
TARGETS = st.lists(
    st.builds(
        lambda pid, kinds: person(pid, *kinds),
        st.sampled_from("abcdefg"),
        st.lists(st.sampled_from(["sip", "sip", "sms"]), min_size=0, max_size=2),
    ),
    max_size=3,
    unique_by=lambda t: t.person_id,
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[EscalationState, list[tuple[float, int, LegStatus]]]:
    tiers = draw(st.lists(TARGETS, min_size=1, max_size=4))
    timeout = draw(st.sampled_from([15.0, 30.0]))
    parallel = draw(st.lists(st.booleans(), min_size=len(tiers), max_size=len(tiers)))
    options = PolicyOptions(repeat=draw(st.integers(1, 3)), severe_fanout=draw(st.integers(0, 3)))
    severe = draw(st.booleans())
    events = draw(
        st.lists(
            st.tuples(st.floats(0.0, 20.0), st.integers(0, 20), st.sampled_from(OUTCOMES)),
            max_size=40,
        )
    )
    state = ladder(*(tuple(t) for t in tiers), timeout=timeout)
    tiers_ = tuple(replace(t, parallel=p) for t, p in zip(state.tiers, parallel, strict=True))
    return replace(state, tiers=tiers_, options=options, severe=severe), events


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_any_sequence_of_leg_outcomes_ends_accepted_or_exhausted(
    case: tuple[EscalationState, list[tuple[float, int, LegStatus]]],
) -> None:
    state, events = case
    ids = leg_ids()
    now = T0
    dialled: set[tuple[int, str, str]] = set()
    accepted_at: int | None = None

    def run(state: EscalationState, now: dt.datetime, n: int) -> EscalationState:
        nonlocal accepted_at
        actions = decide(state, now)
        assert decide(state, now) == actions
        for a in actions:
            if isinstance(a, Dial):
                assert accepted_at is None, "dialled after an accept"
                key = (a.tier, a.person_id, a.contact_method_id)
                assert key not in dialled, f"dialled twice: {key}"
                dialled.add(key)
            if isinstance(a, MarkAccepted):
                assert accepted_at is None
                accepted_at = n
        state = apply_actions(state, actions, ids)
        # applying changes the state; deciding again at once only repeats idempotent cancels, never a dial
        assert not any(
            isinstance(a, Dial | StartTier | MarkAccepted | MarkExhausted) for a in decide(state, now)
        )
        return state

    state = run(state, now, 0)
    for n, (delay, pick, status) in enumerate(events, start=1):
        now += dt.timedelta(seconds=delay)
        live = [leg for leg in state.legs if leg.status in LIVE_STATUSES]
        if live:
            leg = live[pick % len(live)]
            state = set_leg_status(state, leg.leg_id, status)
        state = run(state, now, n)
    # then time passes with no news: the ladder must finish on its own
    for _ in range(3 * state.stage_count() + 5):
        deadline = next_deadline(state, now)
        if deadline is None:
            break
        now = max(now, deadline)
        state = run(state, now, -1)
    assert state.incident_state in (IncidentState.ACCEPTED, IncidentState.EXHAUSTED), state
    assert next_deadline(state, now) is None
    if state.incident_state is IncidentState.ACCEPTED:
        assert state.accepted_by is not None
    left = [leg for leg in state.legs if leg.person_id != state.accepted_by and leg.status in LIVE_STATUSES]
    if state.incident_state is IncidentState.ACCEPTED:  # answered legs finish their IVR (told who accepted)
        left = [leg for leg in left if leg.status is not LegStatus.ANSWERED]
    assert not left, "a ringing leg left behind"
