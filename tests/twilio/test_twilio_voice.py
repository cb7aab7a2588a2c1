"""Twilio voice alert calls end to end: real runner + SQLite, the real ``twilio`` library, the fake Twilio."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from comms.db.events import leg_status
from comms.db.types import LegStatus
from escalation.channel import AcceptResult, AnnounceOrder
from escalation.twilio_channel import StatusSequencer
from tests.twilio.conftest import Rad, TwilioNode
from tests.twilio.fake_twilio import Phone

LEE = "+13125550111"
PARK = "+13125550122"
KIM = "+13125550133"


def leg_events(events, leg_id):  # type: ignore[no-untyped-def]
    return [e for e in events if e.leg_id == leg_id]


@pytest.fixture
def lee_answers(phones: dict[str, Phone]) -> None:
    phones[LEE] = Phone("human", keys="1")


@pytest.mark.parametrize("burst", [True, False], ids=["shuffled-duplicated", "in-order"])
async def test_radiologist_accepts_on_the_phone(twilio_node: TwilioNode, phones: dict[str, Phone]) -> None:
    phones[LEE] = Phone("human", keys="T1")  # silent once (the menu repeats), then 1
    await twilio_node.directory([[Rad("drlee", "Dr Lee", voice=LEE)]])
    incident_id = await twilio_node.runner.raise_incident(room_code="CT2", severity="severe", source="test")
    incident = await twilio_node.wait_state(incident_id, {"accepted"})
    await twilio_node.wait_calls_done()

    (leg,) = await twilio_node.legs(incident_id)
    assert incident.accepted_leg_id == leg.id
    (call,) = twilio_node.fake.calls.values()
    assert leg.external_ref == call.sid
    assert call.machine_detection == "Enable"
    assert call.events == ["initiated", "ringing", "answered", "completed"]
    assert call.spoken[0].startswith("Contrast reaction, severe, room CT 2, Northside Imaging. Incident code")
    assert call.spoken[-1].startswith("Thank you. You have accepted incident")

    events = leg_events(await twilio_node.events(incident_id), leg.id)
    kinds = [e.kind for e in events]
    for kind in ("leg.invite_sent", "leg.call_id", "leg.answered", "leg.dtmf", "leg.accepted", "leg.ended"):
        assert kind in kinds, f"{kind} missing from {kinds}"
    assert kinds.index("leg.answered") < kinds.index("leg.dtmf") < kinds.index("leg.accepted")
    assert next(e for e in events if e.kind == "leg.accepted").data == {"digits": "1", "method": "twilio"}
    # status callbacks came shuffled and twice each: recorded once each, in SequenceNumber order
    statuses = [e.data for e in events if e.kind == "leg.twilio_status"]
    assert [s["sequence"] for s in statuses] == ["0", "1", "2", "3"]
    assert [s["call_status"] for s in statuses] == ["initiated", "ringing", "in-progress", "completed"]
    assert all(s["call_sid"] == call.sid and s["twilio_timestamp"] and s["received_at"] for s in statuses)
    assert statuses[-1]["sip_response_code"] == 200 and statuses[2]["answered_by"] == "human"
    assert statuses[0]["parent_call_sid"] is None
    assert kinds.count("leg.ended") == 1
    ended = next(e for e in events if e.kind == "leg.ended")
    assert ended.data["cause"] == "normal" and ended.data["status"] == 200
    assert leg_status(events) is LegStatus.ENDED  # accepted, then hung up normally


async def test_voicemail_is_not_reached_and_the_next_tier_is_called_at_once(
    twilio_node: TwilioNode, phones: dict[str, Phone]
) -> None:
    phones[LEE] = Phone("machine")
    phones[PARK] = Phone("human", keys="1")
    await twilio_node.directory(
        [[Rad("drlee", "Dr Lee", voice=LEE)], [Rad("drpark", "Dr Park", voice=PARK)]], ring_timeout_s=60
    )
    incident_id = await twilio_node.runner.raise_incident(room_code="CT2", severity="moderate", source="test")
    incident = await twilio_node.wait_state(incident_id, {"accepted"}, timeout=15)
    await twilio_node.wait_calls_done()

    first, second = await twilio_node.legs(incident_id)
    assert incident.accepted_leg_id == second.id
    events = await twilio_node.events(incident_id)
    lee = leg_events(events, first.id)
    voicemail = next(e for e in lee if e.kind == "leg.voicemail")
    assert voicemail.data["answered_by"] == "machine_start"
    ended = next(e for e in lee if e.kind == "leg.ended")
    assert ended.data["cause"] == "no_answer" and ended.data["by"] == "amd"
    assert "leg.answered" not in [e.kind for e in lee]
    assert leg_status(lee) is LegStatus.NO_ANSWER
    assert [e.kind for e in lee].count("leg.ended") == 1
    # "at once": tier 2 started right after the machine answered, not at the 60 s deadline
    tier2 = next(e for e in events if e.kind == "incident.tier_started" and e.data["tier"] == 1)
    assert (tier2.at - ended.at).total_seconds() < 3.0
    assert twilio_node.fake.calls[first.external_ref or ""].spoken == []  # nothing said to the machine


async def test_the_loser_is_cancelled_when_someone_else_accepts(
    twilio_node: TwilioNode, phones: dict[str, Phone]
) -> None:
    phones[LEE] = Phone("human", keys="1", ring_s=0.3)
    phones[KIM] = Phone("no_answer")
    await twilio_node.directory([[Rad("drlee", "Dr Lee", voice=LEE), Rad("drkim", "Dr Kim", voice=KIM)]])
    incident_id = await twilio_node.runner.raise_incident(room_code="CT2", severity="severe", source="test")
    await twilio_node.wait_state(incident_id, {"accepted"})
    await twilio_node.wait_calls_done()
    legs = {leg.address: leg for leg in await twilio_node.legs(incident_id)}
    events = await twilio_node.events(incident_id)
    kim = leg_events(events, legs[KIM].id)
    assert "calls.update" in twilio_node.fake.rest_requests
    reason = next(e for e in kim if e.kind == "leg.cancel_requested").data["reason"]
    assert next(e for e in kim if e.kind == "leg.cancel_sent").data["reason"] == reason
    assert next(e for e in kim if e.kind == "leg.ended").data["cause"] == "cancelled"
    assert leg_status(kim) is LegStatus.CANCELLED
    assert twilio_node.fake.calls[legs[KIM].external_ref or ""].status == "canceled"


async def test_declining_moves_on_and_a_rest_error_fails_the_leg(
    twilio_node: TwilioNode, phones: dict[str, Phone]
) -> None:
    phones[LEE] = Phone("human", keys="2")
    # Dr Kim's number is unknown to the fake Twilio: the REST call fails with code 21217
    phones[PARK] = Phone("busy")
    await twilio_node.directory(
        [
            [Rad("drlee", "Dr Lee", voice=LEE)],
            [Rad("drkim", "Dr Kim", voice=KIM), Rad("drpark", "Dr Park", voice=PARK)],
        ],
        ring_timeout_s=60,
    )
    incident_id = await twilio_node.runner.raise_incident(room_code="CT2", severity="mild", source="test")
    await twilio_node.wait_state(incident_id, {"exhausted"}, timeout=15)
    await twilio_node.wait_calls_done()
    legs = {leg.address: leg for leg in await twilio_node.legs(incident_id)}
    events = await twilio_node.events(incident_id)
    assert leg_status(leg_events(events, legs[LEE].id)) is LegStatus.DECLINED
    kim = leg_events(events, legs[KIM].id)
    failed = next(e for e in kim if e.kind == "leg.ended")
    assert failed.data["cause"] == "failed" and "21217" in failed.data["reason"]
    assert leg_status(leg_events(events, legs[PARK].id)) is LegStatus.BUSY


async def test_an_answered_loser_hears_who_accepted(
    twilio_node: TwilioNode, phones: dict[str, Phone]
) -> None:
    phones[LEE] = Phone("human", keys="1", ring_s=0.4)  # Dr Kim is surely in the menu by then
    phones[KIM] = Phone("human", keys="1", pause_s=1.0)  # answers, listens, thinks, presses 1 too late
    await twilio_node.directory([[Rad("drlee", "Dr Lee", voice=LEE), Rad("drkim", "Dr Kim", voice=KIM)]])
    incident_id = await twilio_node.runner.raise_incident(room_code="CT2", severity="severe", source="test")
    incident = await twilio_node.wait_state(incident_id, {"accepted"})
    await twilio_node.wait_calls_done()
    legs = {leg.address: leg for leg in await twilio_node.legs(incident_id)}
    assert incident.accepted_leg_id == legs[LEE].id
    kim = leg_events(await twilio_node.events(incident_id), legs[KIM].id)
    kinds = [e.kind for e in kim]
    # an answered leg is not hung up by the accept elsewhere (decide rule 1): its "1" is refused, politely
    assert kinds.index("leg.answered") < kinds.index("leg.dtmf") < kinds.index("leg.accept_refused")
    assert "leg.accepted" not in kinds
    assert next(e for e in kim if e.kind == "leg.accept_refused").data["holder"] == "Dr Lee"
    assert next(e for e in kim if e.kind == "leg.bye_sent").data["reason"] == "already-accepted"
    assert next(e for e in kim if e.kind == "leg.ended").data["cause"] == "normal"
    call = twilio_node.fake.calls[legs[KIM].external_ref or ""]
    assert call.spoken[-1] == "Doctor Lee has already accepted. Thank you."


async def test_accept_on_the_phone_with_a_pin(twilio_node: TwilioNode, phones: dict[str, Phone]) -> None:
    phones[LEE] = Phone("human", keys="10000#2468#")  # a wrong PIN first, then the right one
    await twilio_node.directory([[Rad("drlee", "Dr Lee", voice=LEE, pin="2468")]])
    incident_id = await twilio_node.runner.raise_incident(room_code="CT2", severity="severe", source="test")
    incident = await twilio_node.wait_state(incident_id, {"accepted"})
    await twilio_node.wait_calls_done()
    (leg,) = await twilio_node.legs(incident_id)
    assert incident.accepted_leg_id == leg.id
    events = leg_events(await twilio_node.events(incident_id), leg.id)
    assert [e.data["ok"] for e in events if e.kind == "leg.pin_checked"] == [False, True]
    digits = "".join(e.data["digit"] for e in events if e.kind == "leg.dtmf")
    assert digits == "1xxxx#xxxx#"  # PIN digits never reach the evidence
    assert next(e for e in events if e.kind == "leg.accepted").data["digits"] == "1xxxx#xxxx#"
    (call,) = twilio_node.fake.calls.values()
    assert "Enter your PIN followed by pound." in call.spoken
    assert "Sorry, that PIN is not correct." in call.spoken


class Recorder:
    """A LegReporter that keeps events in memory (announcements are never accepts)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def record(self, leg_id: str, kind: str, data: dict[str, Any] | None = None) -> None:
        self.events.append((kind, data or {}))

    async def try_accept(self, leg_id: str, *, digits: str, method: str) -> AcceptResult:
        raise AssertionError("an announcement never accepts")

    async def check_pin(self, leg_id: str, digits: str) -> bool:
        raise AssertionError("an announcement takes no PIN")


async def test_onsite_activation_over_the_phone_network(
    twilio_node: TwilioNode, phones: dict[str, Phone]
) -> None:
    phones[KIM] = Phone("human", keys="")
    message = (
        "Medical emergency. Severe contrast reaction in room CT 2, Northside Imaging. Code team, respond now."
    )
    recorder = Recorder()
    order = AnnounceOrder("leg-onsite", "incident-1", "pstn_voice", KIM, message, ring_timeout_s=30.0)
    await asyncio.wait_for(twilio_node.voice.announce(order, recorder), 10)
    kinds = [k for k, _ in recorder.events]
    assert kinds[:3] == ["leg.invite_sent", "leg.call_id", "leg.answered"]
    assert recorder.events[0][1]["purpose"] == "onsite-activation"
    assert "leg.message_played" in kinds and kinds[-1] == "leg.ended"
    assert recorder.events[-1][1]["cause"] == "normal"
    (call,) = twilio_node.fake.calls.values()
    assert call.spoken == [message, message]


def test_sequencer_orders_dedupes_and_gives_up_on_a_gap() -> None:
    seq: StatusSequencer[str] = StatusSequencer(hold_s=2.0)
    assert seq.push(2, "c", 0.0) == ([], False)
    assert seq.next_deadline() == 2.0
    assert seq.push(0, "a", 0.5) == (["a"], False)
    assert seq.push(0, "a", 0.6) == ([], True)
    assert seq.push(2, "c", 0.7) == ([], True)
    assert seq.timer(1.9) == []
    assert seq.timer(2.0) == ["c"]  # 1 never came
    assert seq.next_deadline() is None
    assert seq.push(1, "b", 3.0) == ([], True)  # too late: already skipped
    assert seq.push(3, "d", 3.0) == (["d"], False)
    assert seq.push(5, "f", 3.0) == ([], False)
    assert seq.flush() == ["f"]
