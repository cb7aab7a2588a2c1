"""Paging-tree options of the decision core, driven by a FakeClock: parallel and sequential tiers, repeats,
skipped empty tiers, decline/busy/voicemail moving on at once, first accept wins, and the severe path."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace

from comms.clock import FakeClock
from escalation.decide import apply_actions, decide, next_deadline, set_leg_status, stages
from escalation.model import (
    Action,
    ActivateOnSite,
    CancelLeg,
    Contact,
    Dial,
    EscalationState,
    IncidentState,
    LegStatus,
    MarkAccepted,
    MarkExhausted,
    OnSite,
    PolicyOptions,
    SkipTier,
    StartTier,
    Target,
    Tier,
)

CODE_TEAM = OnSite("sip", "sip:codeteam@site.test", "Code team to CT 2")


def person(pid: str) -> Target:
    return Target(pid, f"Dr {pid}", (Contact(f"{pid}-sip", "sip", f"sip:{pid}@site.test"),))


def tree(
    *tiers: tuple[tuple[str, ...], bool],
    timeout: float = 30.0,
    repeat: int = 1,
    severe: bool = False,
    fanout: int = 2,
    onsite: OnSite | None = None,
) -> EscalationState:
    return EscalationState(
        incident_id="inc-t",
        incident_state=IncidentState.RAISED,
        tiers=tuple(
            Tier(i + 1, timeout, tuple(person(p) for p in people), parallel=par)
            for i, (people, par) in enumerate(tiers)
        ),
        severe=severe,
        options=PolicyOptions(repeat=repeat, severe_fanout=fanout, onsite=onsite),
    )


class Driver:
    """The runner's job in miniature: decide at every deadline of a FakeClock, apply, record."""

    def __init__(self, state: EscalationState) -> None:
        self.clock = FakeClock()
        self.state = state
        self.ids: Iterator[str] = (f"leg-{n}" for n in itertools.count(1))
        self.log: list[tuple[float, Action]] = []

    @property
    def t(self) -> float:
        return (self.clock.now() - FakeClock().now()).total_seconds()

    def step(self) -> list[Action]:
        now = self.clock.now()
        actions = decide(self.state, now)
        assert decide(self.state, now) == actions
        self.state = apply_actions(self.state, actions, self.ids)
        self.log += [(self.t, a) for a in actions]
        return actions

    def run_until_quiet(self, limit: int = 50) -> None:
        """Advance the clock deadline by deadline until nothing is due any more."""
        for _ in range(limit):
            deadline = next_deadline(self.state, self.clock.now())
            if deadline is None:
                return
            self.clock.advance(max(0.0, (deadline - self.clock.now()).total_seconds()))
            self.step()
        raise AssertionError("the tree never went quiet")

    def outcome(self, person_id: str, status: LegStatus) -> None:
        (leg,) = [
            g for g in self.state.legs if g.person_id == person_id and g.status not in {LegStatus.CANCELLED}
        ][-1:]
        self.state = set_leg_status(self.state, leg.leg_id, status)

    def dials(self) -> list[tuple[float, str]]:
        return [(t, a.person_id) for t, a in self.log if isinstance(a, Dial)]


def test_parallel_tier_rings_everyone_at_once_sequential_tier_one_after_the_other() -> None:
    d = Driver(tree((("a", "b"), True), (("c", "d", "e"), False), timeout=20))
    d.step()
    d.run_until_quiet()
    assert d.dials() == [(0, "a"), (0, "b"), (20, "c"), (40, "d"), (60, "e")]
    assert d.state.incident_state is IncidentState.EXHAUSTED
    assert [s.targets[0].person_id for s in stages(d.state)] == ["a", "c", "d", "e"]


def test_repeat_walks_the_whole_tree_again_then_exhausts() -> None:
    d = Driver(tree((("a",), True), (("b",), True), timeout=10, repeat=3))
    d.step()
    d.run_until_quiet()
    assert d.dials() == [(0, "a"), (10, "b"), (20, "a"), (30, "b"), (40, "a"), (50, "b")]
    attempts = [a.attempt for _, a in d.log if isinstance(a, Dial)]
    assert attempts == [0, 0, 1, 1, 2, 2]
    exhausted = [a for _, a in d.log if isinstance(a, MarkExhausted)]
    assert exhausted == [MarkExhausted("nobody accepted: 2 tier(s) x 3 walk(s), 2 person(s) tried")]
    assert d.t == 60


def test_empty_tier_is_skipped_at_once_and_the_next_rings_in_the_same_pass() -> None:
    state = tree((("a",), True), ((), True), (("c",), True), timeout=15)
    no_contact = Target("x", "Dr x", (Contact("x-sms", "sms", "+13125550101"),))
    state = replace(state, tiers=(*state.tiers, Tier(4, 15, (no_contact,))))
    d = Driver(state)
    d.step()
    d.clock.advance(15)
    actions = d.step()
    assert [type(a) for a in actions] == [CancelLeg, SkipTier, StartTier, Dial]
    assert SkipTier(1, "nobody on call") in actions
    d.clock.advance(15)
    actions = d.step()
    assert SkipTier(3, "no working contact") in actions
    assert isinstance(actions[-1], MarkExhausted)


def test_decline_busy_and_voicemail_move_on_at_once_not_at_the_ring_timeout() -> None:
    for status in (LegStatus.DECLINED, LegStatus.BUSY, LegStatus.NO_ANSWER, LegStatus.FAILED):
        d = Driver(tree((("a",), True), (("b",), True), timeout=60))
        d.step()
        d.clock.advance(2.5)
        d.outcome("a", status)  # the runner makes the incident due at once on a final leg event
        d.step()
        assert d.dials() == [(0, "a"), (2.5, "b")], status


def test_in_a_parallel_tier_one_decline_waits_for_the_others() -> None:
    d = Driver(tree((("a", "b"), True), (("c",), True), timeout=30))
    d.step()
    d.clock.advance(1)
    d.outcome("a", LegStatus.DECLINED)
    assert d.step() == []
    d.clock.advance(1)
    d.outcome("b", LegStatus.BUSY)
    d.step()
    assert d.dials()[-1] == (2, "c")


def test_ringing_and_delivered_never_accept() -> None:
    d = Driver(tree((("a",), True), (("b",), True), timeout=10))
    d.step()
    d.outcome("a", LegStatus.RINGING)
    d.outcome("a", LegStatus.ANSWERED)
    assert d.step() == []
    assert d.state.accepted_by is None


def test_first_accept_wins_a_simultaneous_second_accept_is_cancelled_by_accept() -> None:
    d = Driver(tree((("a", "b", "c"), True), timeout=30))
    d.step()
    d.clock.advance(4)
    d.outcome("b", LegStatus.ACCEPTED)
    d.clock.advance(0.03)  # 30 ms later, before any tick: both legs are accepted in the store's view
    d.outcome("a", LegStatus.ACCEPTED)
    actions = decide(d.state, d.clock.now())
    b_leg, a_leg = (next(g.leg_id for g in d.state.legs if g.person_id == p) for p in "ba")
    assert actions[0] == MarkAccepted("a", a_leg)  # store order decides when nothing arbitrated yet
    # ... but the runner's conditional UPDATE (try_accept) arbitrates first: b holds the incident
    d.state = replace(d.state, accepted_by="b", incident_state=IncidentState.ACCEPTED)
    actions = d.step()
    assert not any(isinstance(a, MarkAccepted) for a in actions)
    cancelled = {a.leg_id: a.reason for a in actions if isinstance(a, CancelLeg)}
    assert b_leg not in cancelled and a_leg in cancelled and len(cancelled) == 2
    assert set(cancelled.values()) == {"cancelled-by-accept"}
    assert d.state.accepted_by == "b"
    d.clock.advance(60)
    assert next_deadline(d.state, d.clock.now()) is None
    assert not any(isinstance(a, Dial) for a in d.step())


def test_severe_fans_out_to_the_first_k_tiers_and_activates_the_code_team_at_once() -> None:
    d = Driver(
        tree(
            (("a",), True),
            (("b", "c"), False),
            (("d",), True),
            timeout=20,
            severe=True,
            fanout=2,
            onsite=CODE_TEAM,
        )
    )
    first = d.step()
    assert first[0] == ActivateOnSite("sip", "sip:codeteam@site.test", "Code team to CT 2")
    assert [a.person_id for a in first if isinstance(a, Dial)] == ["a", "b", "c"]
    assert sum(isinstance(a, StartTier) for a in first) == 1
    d.run_until_quiet()
    assert d.dials() == [(0, "a"), (0, "b"), (0, "c"), (20, "d")]
    assert sum(isinstance(a, ActivateOnSite) for _, a in d.log) == 1


def test_severe_activation_never_counts_and_does_not_wait() -> None:
    d = Driver(tree((("a",), True), severe=True, onsite=CODE_TEAM, timeout=10))
    d.step()
    assert all(g.person_id == "a" for g in d.state.legs)  # the code team's call is no radiologist's leg
    d.run_until_quiet()
    assert d.state.incident_state is IncidentState.EXHAUSTED


def test_not_severe_means_no_fanout_and_no_activation() -> None:
    d = Driver(tree((("a",), True), (("b",), True), onsite=CODE_TEAM, timeout=10))
    first = d.step()
    assert not any(isinstance(a, ActivateOnSite) for a in first)
    assert [a.person_id for a in first if isinstance(a, Dial)] == ["a"]


def test_severe_fanout_larger_than_the_tree_and_all_empty() -> None:
    d = Driver(tree(((), True), ((), True), severe=True, fanout=5, onsite=CODE_TEAM))
    actions = d.step()
    assert isinstance(actions[0], ActivateOnSite)
    assert isinstance(actions[-1], MarkExhausted)
    assert SkipTier(0, "nobody on call") in actions


def test_an_accept_does_not_hang_up_a_leg_in_the_ivr_it_is_told_instead() -> None:
    d = Driver(tree((("a", "b", "c"), True), timeout=30))
    d.step()
    d.outcome("a", LegStatus.ANSWERED)  # a is listening to the alert prompt
    d.outcome("b", LegStatus.ACCEPTED)
    actions = d.step()
    cancelled = {a.leg_id for a in actions if isinstance(a, CancelLeg)}
    a_leg, c_leg = (next(g.leg_id for g in d.state.legs if g.person_id == p) for p in "ac")
    assert cancelled == {c_leg}
    assert a_leg not in cancelled
