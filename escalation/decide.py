"""The escalation decision core: ``decide(state, now) -> actions`` (pure: no clock, no I/O, no store).

The runner loads an :class:`~escalation.model.EscalationState`, calls :func:`decide` after every leg event and
at :func:`next_deadline`, then persists and performs the actions in one transaction. ``decide`` is a function
of ``(state, now)`` only, so deciding twice on the same state returns the same actions, and a restart loses
nothing.

Rules, first match wins:

1. **Accepted.** A leg with status ``accepted`` (or ``accepted_by`` already set) wins, even if the tier
   deadline has passed and the tick has not yet run: ``MarkAccepted`` once, then
   ``CancelLeg(reason="cancelled-by-accept")`` for every other leg still ringing. Nothing is ever dialled once
   someone accepted. A leg already *answered* (the person is in the IVR) is not hung up: if they press 1 the
   channel tells them who accepted ("Dr X has already accepted") and ends the call; otherwise the IVR's own
   timeout ends it. Hanging up on them would cut that message off mid-sentence. If two legs are accepted,
   the first in ``state.legs`` order (the store's event order) wins; the other is cancelled like any loser.
2. **Closed** (resolved, cancelled, exhausted): cancel any live leg (``incident-closed``), nothing else.
3. **Raised** (no current tier): start tier 0 at ``now``.
4. **Tier deadline passed:** ``CancelLeg(reason="tier-timeout")`` for the tier's legs that are still *ringing*
   (created/dialing/trying/ringing) and move on. The next tier starts at the old deadline, so a late tick does
   not stretch the ladder, but its deadline is never earlier than ``now + min(min_ring_s, ring_timeout_s)`` so
   the phones just dialled always get a chance to ring. Legs already *answered* (the person is in the IVR) are
   not hung up by a tier timeout: they may still accept and rule 1 then wins.
5. **Everyone in the tier said no** (every leg declined/busy/no_answer/failed/cancelled/ended, nothing left to
   dial): the next tier starts at once, at ``now`` (not at the old deadline).
6. Otherwise dial whatever the current tier should have dialled and has not (recovery after a crash between
   ``StartTier`` and ``Dial``); usually nothing.

Stages (:func:`stages`): the tree is walked as a list of stages. A parallel tier is one stage (every target
and every contact of a diallable kind at once); a sequential tier is one stage per target, each with the
tier's ring timeout; a **severe** incident's first stage rings the first ``severe_fanout`` tiers together
(deduplicated by person, the longest of their ring timeouts); the whole list repeats ``options.repeat``
times. "Tier" in the rules above means the current stage. A stage with nobody to dial is skipped at once
with ``SkipTier`` ("nobody on call" / "no working contact") and the next one starts in the same pass. Past
the last stage: ``MarkExhausted`` (the runner raises it loudly), after waiting for legs still in the IVR for
at most ``answered_grace_s`` past the last deadline. Nothing is dialled twice for the same (stage, person,
contact method).

On-site activation: when a **severe** incident starts (rule 3) and the site has one, ``ActivateOnSite``
comes first, in the same pass as the first stage's dials, so the code team is called at the same time as
the radiologists and nobody waits for it. Its leg is not a radiologist's leg: it is never in
``state.legs`` and can never accept.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from dataclasses import replace

from escalation.model import (
    FAILED_STATUSES,
    LIVE_STATUSES,
    OPEN_INCIDENT_STATES,
    RINGING_STATUSES,
    Action,
    ActivateOnSite,
    CancelLeg,
    Dial,
    EscalationError,
    EscalationState,
    IncidentState,
    Leg,
    LegStatus,
    MarkAccepted,
    MarkExhausted,
    SkipTier,
    Stage,
    StartTier,
    Target,
    Tier,
)

log = logging.getLogger(__name__)

DIALLABLE_KINDS = frozenset({"sip"})
MIN_RING_S = 10.0
ANSWERED_GRACE_S = 60.0


def decide(
    state: EscalationState,
    now: dt.datetime,
    *,
    kinds: frozenset[str] = DIALLABLE_KINDS,
    min_ring_s: float = MIN_RING_S,
    answered_grace_s: float = ANSWERED_GRACE_S,
) -> list[Action]:
    """What to do for ``state`` at ``now`` (see the module docstring for the rules)."""
    _check_aware(now, state)
    winner = _winner(state)
    if state.accepted_by is not None or winner is not None:
        actions: list[Action] = []
        if state.accepted_by is None and winner is not None:
            log.info(
                "[incident=%s leg=%s] accepted by %s", state.incident_id, winner.leg_id, winner.person_id
            )
            actions.append(MarkAccepted(winner.person_id, winner.leg_id))
        actions += [
            CancelLeg(leg.leg_id, "cancelled-by-accept")
            for leg in state.legs
            if leg is not winner and (leg.status in RINGING_STATUSES or leg.status is LegStatus.ACCEPTED)
        ]
        return actions
    if state.incident_state not in OPEN_INCIDENT_STATES:
        return [CancelLeg(leg.leg_id, "incident-closed") for leg in state.legs if leg.status in LIVE_STATUSES]
    if state.current_tier is None:
        onsite = state.options.onsite
        first: list[Action] = []
        if state.severe and onsite is not None:
            log.warning("[incident=%s] severe: on-site emergency activation raised", state.incident_id)
            first.append(ActivateOnSite(onsite.kind, onsite.address, onsite.message))
        return first + _advance(state, 0, now, now, kinds, min_ring_s, answered_grace_s)

    index = state.current_tier
    assert state.tier_deadline is not None  # checked by EscalationState
    tier_legs = [leg for leg in state.legs if leg.tier == index]
    stray: list[
        Action
    ] = [  # ringing legs of earlier tiers: a previous pass moved on without their cancel being applied
        CancelLeg(leg.leg_id, "tier-timeout")
        for leg in state.legs
        if leg.tier < index and leg.status in RINGING_STATUSES
    ]
    if now >= state.tier_deadline:
        cancels = [
            CancelLeg(leg.leg_id, "tier-timeout") for leg in tier_legs if leg.status in RINGING_STATUSES
        ]
        start = state.tier_deadline
        return stray + cancels + _advance(state, index + 1, start, now, kinds, min_ring_s, answered_grace_s)
    missing: list[Action] = list(_dials(state, index, kinds))
    if not missing and all(leg.status in FAILED_STATUSES for leg in tier_legs):
        log.info("[incident=%s] every leg of tier %d said no: moving on at once", state.incident_id, index)
        return stray + _advance(state, index + 1, now, now, kinds, min_ring_s, answered_grace_s)
    return stray + missing


def next_deadline(
    state: EscalationState,
    now: dt.datetime | None = None,
    *,
    kinds: frozenset[str] = DIALLABLE_KINDS,
    answered_grace_s: float = ANSWERED_GRACE_S,
) -> dt.datetime | None:
    """When time alone next changes what :func:`decide` returns; ``None`` if only a new event can.

    Pass ``now`` after the last tier's deadline: while legs are still in the IVR the answer is then the end of
    the grace period rather than the (passed) deadline. A raised incident (no tier yet) needs an immediate
    ``decide``.
    """
    if state.accepted_by is not None or _winner(state) is not None:
        return None
    if state.incident_state not in OPEN_INCIDENT_STATES or state.current_tier is None:
        return None
    deadline = state.tier_deadline
    assert deadline is not None
    if (
        now is not None
        and now >= deadline
        and _is_last(state, state.current_tier, kinds)
        and _answered(state)
    ):
        return deadline + dt.timedelta(seconds=answered_grace_s)
    return deadline


def apply_actions(
    state: EscalationState, actions: Iterable[Action], new_leg_id: Iterator[str]
) -> EscalationState:
    """The state a runner holds after performing ``actions`` with no further news from the legs.

    The reference meaning of each action: ``StartTier`` sets the current tier and its times (incident
    ``paging``); ``Dial`` adds a ``created`` leg; ``CancelLeg`` marks the leg ``cancelled``; ``MarkAccepted``
    sets ``accepted_by`` (incident ``accepted``); ``MarkExhausted`` closes the incident as ``exhausted``;
    ``SkipTier`` changes no state (the runner records it as an event).
    """
    for action in actions:
        match action:
            case StartTier(tier=tier, started_at=started, deadline=deadline):
                state = replace(
                    state,
                    incident_state=IncidentState.PAGING,
                    current_tier=tier,
                    tier_started_at=started,
                    tier_deadline=deadline,
                )
            case Dial():
                leg = Leg(
                    next(new_leg_id),
                    action.tier,
                    action.person_id,
                    action.contact_method_id,
                    LegStatus.CREATED,
                )
                state = replace(state, legs=(*state.legs, leg))
            case CancelLeg(leg_id=leg_id):
                state = set_leg_status(state, leg_id, LegStatus.CANCELLED)
            case MarkAccepted(person_id=person):
                state = replace(state, accepted_by=person, incident_state=IncidentState.ACCEPTED)
            case MarkExhausted():
                state = replace(state, incident_state=IncidentState.EXHAUSTED)
            case SkipTier():
                pass
    return state


def set_leg_status(state: EscalationState, leg_id: str, status: LegStatus) -> EscalationState:
    """``state`` with one leg's status replaced (an unknown leg id is an error)."""
    if not any(leg.leg_id == leg_id for leg in state.legs):
        raise EscalationError(
            f"incident {state.incident_id} has no leg {leg_id!r}; "
            f"legs are {[leg.leg_id for leg in state.legs]}"
        )
    legs = tuple(replace(leg, status=status) if leg.leg_id == leg_id else leg for leg in state.legs)
    return replace(state, legs=legs)


# --- internals ------------------------------------------------------------------------------------------


def _check_aware(now: dt.datetime, state: EscalationState) -> None:
    if now.tzinfo is None:
        raise EscalationError(
            f"incident {state.incident_id}: expected an aware UTC now, got naive {now.isoformat()}"
        )


def _winner(state: EscalationState) -> Leg | None:
    accepted = [leg for leg in state.legs if leg.status is LegStatus.ACCEPTED]
    if state.accepted_by is not None:
        accepted = [leg for leg in accepted if leg.person_id == state.accepted_by]
    return accepted[0] if accepted else None


def _answered(state: EscalationState) -> bool:
    return any(leg.status is LegStatus.ANSWERED for leg in state.legs)


def stages(state: EscalationState) -> tuple[Stage, ...]:
    """The tree as the list of stages it is walked in (see the module docstring)."""
    tiers = state.tiers
    k = min(state.options.severe_fanout, len(tiers)) if state.severe else 0
    walk: list[tuple[tuple[int, ...], float, tuple[Target, ...]]] = []
    if k:
        seen: set[str] = set()
        merged: list[Target] = []
        for tier in tiers[:k]:
            for target in tier.targets:
                if target.person_id not in seen:
                    seen.add(target.person_id)
                    merged.append(target)
        walk.append((tuple(range(k)), max(t.ring_timeout_s for t in tiers[:k]), tuple(merged)))
    for i in range(k, len(tiers)):
        tier = tiers[i]
        if tier.parallel or len(tier.targets) <= 1:
            walk.append(((i,), tier.ring_timeout_s, tier.targets))
        else:
            walk.extend(((i,), tier.ring_timeout_s, (target,)) for target in tier.targets)
    out: list[Stage] = []
    for attempt in range(state.options.repeat):
        for covered, timeout, targets in walk:
            out.append(Stage(len(out), covered, attempt, timeout, targets))
    return tuple(out)


def _is_last(state: EscalationState, index: int, kinds: frozenset[str]) -> bool:
    return all(_empty_reason(stage, kinds) is not None for stage in stages(state)[index + 1 :])


def _empty_reason(tier: Tier | Stage, kinds: frozenset[str]) -> str | None:
    if not tier.targets:
        return "nobody on call"
    if not any(c.kind in kinds for t in tier.targets for c in t.contacts):
        return "no working contact"
    return None


def _dials(state: EscalationState, index: int, kinds: frozenset[str]) -> Iterator[Dial]:
    """The dials stage ``index`` calls for that have no leg yet."""
    tier = stages(state)[index]
    position = state.tiers[tier.position].position
    done = {(leg.tier, leg.person_id, leg.contact_method_id) for leg in state.legs}
    for target in tier.targets:
        for contact in target.contacts:
            key = (index, target.person_id, contact.contact_method_id)
            if contact.kind in kinds and key not in done:
                done.add(key)
                yield Dial(
                    index,
                    target.person_id,
                    contact.contact_method_id,
                    contact.kind,
                    contact.address,
                    tier.ring_timeout_s,
                    position=position,
                    attempt=tier.attempt,
                )


def _advance(
    state: EscalationState,
    index: int,
    start: dt.datetime,
    now: dt.datetime,
    kinds: frozenset[str],
    min_ring_s: float,
    answered_grace_s: float,
) -> list[Action]:
    """Start the first stage from ``index`` on that has someone to dial, skipping empty ones; else exhaust."""
    actions: list[Action] = []
    plan = stages(state)
    for i in range(index, len(plan)):
        tier = plan[i]
        reason = _empty_reason(tier, kinds)
        if reason is not None:
            log.warning(
                "[incident=%s] stage %d (tier %s, attempt %d) skipped: %s",
                state.incident_id,
                i,
                [state.tiers[t].position for t in tier.tiers],
                tier.attempt,
                reason,
            )
            actions.append(SkipTier(i, reason))
            continue
        floor = now + dt.timedelta(seconds=min(min_ring_s, tier.ring_timeout_s))
        deadline = max(start + dt.timedelta(seconds=tier.ring_timeout_s), floor)
        log.info(
            "[incident=%s] tier %d -> %s (deadline %s)", state.incident_id, i, start.isoformat(), deadline
        )
        return [*actions, StartTier(i, start, deadline), *_dials(state, i, kinds)]
    last = state.tier_deadline
    if _answered(state) and last is not None and now < last + dt.timedelta(seconds=answered_grace_s):
        return []  # someone is still in the IVR: let them finish before declaring exhaustion (skips later)
    tried = len({leg.person_id for leg in state.legs})
    reason = (
        f"nobody accepted: {len(state.tiers)} tier(s) x {state.options.repeat} walk(s), "
        f"{tried} person(s) tried"
    )
    if not state.legs:
        reason = f"nobody to page: all {len(state.tiers)} tier(s) empty"
    log.error("[incident=%s] EXHAUSTED: %s", state.incident_id, reason)
    cancels: list[Action] = [
        CancelLeg(leg.leg_id, "tier-timeout") for leg in state.legs if leg.status is LegStatus.ANSWERED
    ]
    return [*actions, *cancels, MarkExhausted(reason)]
