"""The first vertical slice, end to end on loopback with real SIP peers and no mocks:
room button (API) → on-call radiologist's SIP phone → spoken alert → "press 1" → every leg logged."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import aiohttp

from comms.db.events import leg_status, verify_chain
from tests.slice.conftest import ROOM_TOKEN, Node, Radiologist

Sipp = Callable[..., Any]


async def press_button(node: Node, severity: str = "severe") -> str:
    """What the room tablet does: POST /api/v1/incidents with the room's device token."""
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{node.app.http_url}/api/v1/incidents",
            json={"room": "CT2", "severity": severity},
            headers={"Authorization": f"Bearer {ROOM_TOKEN}"},
        )
        body = await resp.json()
        assert resp.status == 201, body
        return str(body["id"])


def kinds(events: list[Any], leg_id: str | None = None) -> list[str]:
    return [e.kind for e in events if leg_id is None or e.leg_id == leg_id]


def assert_evidence_sound(events: list[Any]) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    ats = [e.at for e in events]
    monos = [e.mono for e in events]
    assert ats == sorted(ats) and monos == sorted(monos)
    assert all(
        a.tzinfo is not None and a.utcoffset() == dt.timedelta(0) and a.microsecond % 1000 == 0 for a in ats
    )
    assert verify_chain(events) == []


async def test_sipp_phone_answers_and_presses_1_rfc4733(node: Node, sipp: Sipp) -> None:
    phone = sipp("uas_answer_dtmf2833.xml", timeout=30)
    await phone.start()
    await node.directory([[Radiologist("drsipp", "Dr Sipp", phone.uri("drsipp"))]])
    incident_id = await press_button(node)
    incident = await node.wait_state(incident_id, {"accepted", "exhausted"})
    assert incident.state.value == "accepted"
    assert incident.accepted_by_id == await node.person_id("drsipp")
    result = await phone.wait(30)
    assert result.ok, result.report()
    await node.wait_event(incident_id, "leg.ended")
    events = await node.events(incident_id)
    assert_evidence_sound(events)
    (leg,) = await node.legs(incident_id)
    leg_kinds = kinds(events, leg.id)
    expected = [
        "leg.created",
        "leg.invite_sent",
        "leg.trying",
        "leg.ringing",
        "leg.answered",
        "leg.dtmf",
        "leg.accepted",
    ]
    assert [k for k in leg_kinds if k in expected] == expected
    dtmf = next(e for e in events if e.kind == "leg.dtmf")
    assert dtmf.data == {"digit": "1", "method": "rfc4733"}
    accepted = next(e for e in events if e.kind == "incident.accepted")
    assert 0.3 < accepted.data["seconds_to_accept"] < 10
    assert incident.accepted_at is not None and incident.accepted_at > incident.raised_at


async def test_tier1_never_answers_then_pjsua2_tier2_accepts(node: Node, sipp: Sipp, softphone: Any) -> None:
    from sip.softphone import Behaviour

    tier1 = sipp("uas_ring_no_answer.xml", timeout=40)
    await tier1.start()
    softphone.set_behaviour(Behaviour(answer_after=1.0, press="1", press_after=1.0))
    await node.directory(
        [
            [Radiologist("drring", "Dr Ring", tier1.uri("drring"))],
            [Radiologist("drpj", "Dr Pj", softphone.uri())],
        ],
        ring_timeout_s=10,
    )
    incident_id = await press_button(node)
    incident = await node.wait_state(incident_id, {"accepted", "exhausted"}, timeout=40)
    assert incident.state.value == "accepted"
    assert incident.accepted_by_id == await node.person_id("drpj")
    result = await tier1.wait(20)
    assert result.ok, result.report()
    events = await node.events(incident_id)
    assert_evidence_sound(events)
    first, second = await node.legs(incident_id)
    assert "leg.cancel_requested" in kinds(events, first.id)
    first_events = [e for e in events if e.leg_id == first.id]
    assert leg_status(first_events).value in {"no_answer", "cancelled", "ringing"}
    tier2_created = next(e for e in events if e.kind == "leg.created" and e.leg_id == second.id)
    raised = events[0].at
    waited = (tier2_created.at - raised).total_seconds()
    assert 9.5 <= waited <= 12.5, f"tier 2 was dialled {waited:.1f} s after the incident, expected ~10 s"


async def test_tier1_declines_with_2_then_tier2_is_called_at_once(
    node: Node, sipp: Sipp, softphone: Any
) -> None:
    from sip.softphone import Behaviour

    tier1 = sipp("uas_decline.xml", timeout=30)
    await tier1.start()
    softphone.set_behaviour(Behaviour(answer_after=0.5, press="1", press_after=0.5))
    await node.directory(
        [[Radiologist("drno", "Dr No", tier1.uri("drno"))], [Radiologist("drpj", "Dr Pj", softphone.uri())]],
        ring_timeout_s=30,
    )
    incident_id = await press_button(node)
    incident = await node.wait_state(incident_id, {"accepted", "exhausted"}, timeout=30)
    assert incident.state.value == "accepted"
    assert incident.accepted_by_id == await node.person_id("drpj")
    events = await node.events(incident_id)
    assert_evidence_sound(events)
    first, second = await node.legs(incident_id)
    declined = next(e for e in events if e.kind == "leg.declined" and e.leg_id == first.id)
    assert declined.data["digits"] == "2"
    tier2_created = next(e for e in events if e.kind == "leg.created" and e.leg_id == second.id)
    gap = (tier2_created.at - declined.at).total_seconds()
    assert 0 <= gap < 1.0, (
        f"tier 2 dialled {gap:.2f} s after the decline; expected at once (ring timeout is 30 s)"
    )


async def test_sip_info_dtmf_accepts(node: Node, sipp: Sipp) -> None:
    phone = sipp("uas_answer_info.xml", timeout=30)
    await phone.start()
    await node.directory([[Radiologist("drinfo", "Dr Info", phone.uri("drinfo"))]])
    incident_id = await press_button(node)
    incident = await node.wait_state(incident_id, {"accepted", "exhausted"})
    assert incident.state.value == "accepted"
    events = await node.events(incident_id)
    dtmf = next(e for e in events if e.kind == "leg.dtmf")
    assert dtmf.data == {"digit": "1", "method": "info"}
    assert (await phone.wait(30)).ok


async def test_unreachable_contact_fails_over_without_waiting(node: Node, softphone: Any) -> None:
    import socket

    from sip.softphone import Behaviour

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    softphone.set_behaviour(Behaviour(answer_after=0.5, press="1", press_after=0.5))
    await node.directory(
        [
            [Radiologist("drgone", "Dr Gone", f"sip:drgone@127.0.0.1:{dead_port}")],
            [Radiologist("drpj", "Dr Pj", softphone.uri())],
        ],
        ring_timeout_s=30,
    )
    incident_id = await press_button(node)
    incident = await node.wait_state(incident_id, {"accepted", "exhausted"}, timeout=20)
    assert incident.state.value == "accepted"
    events = await node.events(incident_id)
    first, second = await node.legs(incident_id)
    ended = next(e for e in events if e.kind == "leg.ended" and e.leg_id == first.id)
    assert ended.data["by"] == "transport"
    tier2_created = next(e for e in events if e.kind == "leg.created" and e.leg_id == second.id)
    waited = (tier2_created.at - events[0].at).total_seconds()
    assert waited < 2.0, (
        f"tier 2 dialled {waited:.2f} s after the incident; SIP said at once that tier 1 failed"
    )
