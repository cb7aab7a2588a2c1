"""Paging trees end to end with real SIP peers (SIPp, baresip, the pjsua2 softphone) against a whole node."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from comms.db.events import leg_status, verify_chain
from tests.engine.conftest import tree_options
from tests.slice.conftest import Node, Radiologist
from tests.slice.test_vertical_slice import press_button

pytestmark = pytest.mark.peer
Sipp = Callable[..., Any]


async def wait_leg_event(node: Node, incident_id: str, kind: str, leg_id: str, timeout: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        for e in await node.events(incident_id):
            if e.kind == kind and e.leg_id == leg_id:
                return e
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind} on leg {leg_id} within {timeout} s")


def first(events: list[Any], kind: str, leg_id: str | None = None) -> Any:
    return next(e for e in events if e.kind == kind and (leg_id is None or e.leg_id == leg_id))


async def test_three_tier_ladder_busy_decline_then_tier3_accepts(
    node: Node, sipp: Sipp, baresip: Any, softphone: Any
) -> None:
    from sip.softphone import Behaviour

    busy = sipp("uas_busy.xml", timeout=30)
    await busy.start()
    bare = baresip(user="drbare")
    await bare.start()
    softphone.set_behaviour(Behaviour(answer_after=0.3, press="1", press_after=0.8))
    await node.directory(
        [
            [Radiologist("drbusy", "Dr Busy", busy.uri("drbusy"))],
            [Radiologist("drbare", "Dr Bare", bare.uri())],
            [Radiologist("drpj", "Dr Pj", softphone.uri())],
        ],
        ring_timeout_s=30,
    )
    incident_id = await press_button(node, "moderate")
    await bare.wait_event("CALL_INCOMING", within=10)
    await bare.accept()
    await bare.wait_event("CALL_ESTABLISHED", within=10)
    await node.wait_event(incident_id, "leg.media_started")
    await bare.sndcode("2")  # Dr Bare declines: the tree must move on at once
    incident = await node.wait_state(incident_id, {"accepted", "exhausted"}, timeout=30)
    assert incident.state.value == "accepted"
    assert incident.accepted_by_id == await node.person_id("drpj")
    events = await node.events(incident_id)
    assert verify_chain(events) == []
    legs = await node.legs(incident_id)
    assert [leg.tier for leg in legs] == [0, 1, 2]
    statuses = [leg_status([e for e in events if e.leg_id == leg.id]).value for leg in legs]
    assert statuses[:2] == ["busy", "declined"]
    assert statuses[2] in {"accepted", "ended"}
    # no ring timeout (30 s) was waited for: busy and decline moved on at once
    tier3 = first(events, "leg.created", legs[2].id)
    declined = first(events, "leg.declined", legs[1].id)
    assert (tier3.at - declined.at).total_seconds() < 1.0
    assert (tier3.at - events[0].at).total_seconds() < 15.0
    assert (await busy.wait(10)).ok


async def test_two_radiologists_press_1_together_exactly_one_accepts_the_other_is_told(
    node: Node, sipp: Sipp
) -> None:
    a = sipp("uas_answer_dtmf2833.xml", timeout=30)
    b = sipp("uas_answer_dtmf2833.xml", timeout=30)
    await a.start()
    await b.start()
    await node.directory(
        [[Radiologist("dra", "Dr A", a.uri("dra")), Radiologist("drb", "Dr B", b.uri("drb"))]],
        ring_timeout_s=30,
    )
    incident_id = await press_button(node, "moderate")
    incident = await node.wait_state(incident_id, {"accepted", "exhausted"}, timeout=20)
    assert incident.state.value == "accepted"
    legs = await node.legs(incident_id)
    await node.wait_event(incident_id, "leg.accept_refused", timeout=10)
    events = await node.events(incident_id)
    dtmf = [e for e in events if e.kind == "leg.dtmf"]
    assert len({e.leg_id for e in dtmf}) == 2, "both radiologists pressed 1"
    gap = abs((dtmf[0].at - dtmf[1].at).total_seconds())
    assert gap < 0.05, f"the two presses were {gap * 1000:.0f} ms apart; the race needs them within 50 ms"
    accepted = [e for e in events if e.kind == "leg.accepted"]
    refused = [e for e in events if e.kind == "leg.accept_refused"]
    assert len(accepted) == 1 and len(refused) == 1
    assert [e.kind for e in events].count("incident.accepted") == 1
    assert {accepted[0].leg_id, refused[0].leg_id} == {leg.id for leg in legs}
    winner = next(leg for leg in legs if leg.id == accepted[0].leg_id)
    assert incident.accepted_by_id == winner.person_id
    holder = "Dr A" if winner.person_id == await node.person_id("dra") else "Dr B"
    assert refused[0].data["holder"] == holder  # what the loser is told: "Dr <name> has already accepted"
    bye = await wait_leg_event(node, incident_id, "leg.bye_sent", refused[0].leg_id)
    assert bye.data["reason"] == "already-accepted"  # told on the call, then hung up
    assert (await a.wait(20)).ok and (await b.wait(20)).ok


async def test_severe_rings_tiers_1_and_2_and_the_code_team_at_the_same_time(
    node: Node, sipp: Sipp, softphone: Any
) -> None:
    from sip.softphone import Behaviour

    t1 = sipp("uas_ring_no_answer.xml", timeout=40)
    t2 = sipp("uas_ring_no_answer.xml", timeout=40)
    t3 = sipp("uas_ring_no_answer.xml", timeout=40)
    for peer in (t1, t2, t3):
        await peer.start()
    softphone.set_behaviour(Behaviour(answer_after=0.3, press="1", press_after=1.0))  # pressing does nothing
    codeteam = softphone.uri()
    await node.directory(
        [
            [Radiologist("dr1", "Dr One", t1.uri("dr1"))],
            [Radiologist("dr2", "Dr Two", t2.uri("dr2"))],
            [Radiologist("dr3", "Dr Three", t3.uri("dr3"))],
        ],
        ring_timeout_s=60,
    )
    await tree_options(node, severe_fanout=2, onsite_uri=codeteam)
    incident_id = await press_button(node, "severe")
    await node.wait_event(incident_id, "leg.answered", timeout=10)
    events = await node.events(incident_id)
    invites = [e for e in events if e.kind == "leg.invite_sent"]
    uris = sorted(e.data["uri"] for e in invites)
    assert uris == sorted([t1.uri("dr1"), t2.uri("dr2"), codeteam])
    spread = (max(e.at for e in invites) - min(e.at for e in invites)).total_seconds()
    assert spread < 0.25, f"tiers 1-2 and the code team were called {spread:.3f} s apart; expected at once"
    activation = first(events, "incident.onsite_activation")
    assert activation.data["address"] == codeteam
    assert "Severe contrast reaction" in activation.data["message"]
    ringing = [e for e in events if e.kind == "leg.ringing"]
    assert len({e.leg_id for e in ringing}) == 3
    incident = await node.wait_state(incident_id, {"paging"})
    assert incident.accepted_by_id is None  # the code team answered; that is never an accept
    assert not any(e.kind == "leg.accepted" for e in events)
    await node.wait_event(incident_id, "leg.message_played", timeout=30)
    events = await node.events(incident_id)
    assert not any(e.kind in {"leg.accepted", "incident.accepted"} for e in events)
    assert len([e for e in events if e.kind == "leg.invite_sent"]) == 3  # tier 3 waits for the deadline
