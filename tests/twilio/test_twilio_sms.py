"""SMS pages: no PHI, delivered is never accepted, a reply of "1" or "ACK <code>" accepts for the sender."""

from __future__ import annotations

from comms.db.events import leg_status
from comms.db.types import LegStatus
from escalation.twilio_channel import Reply, parse_reply
from tests.twilio.conftest import OUR_NUMBER, PUBLIC_BASE, Rad, TwilioNode
from tests.twilio.fake_twilio import Phone

LEE_SMS = "+13125550141"
PARK_SMS = "+13125550152"
STRANGER = "+13125550199"


async def _paged(node: TwilioNode, incident_id: str, count: int = 1) -> None:
    await node.wait_event(incident_id, "leg.delivered", count=count)


async def test_sms_reply_1_accepts_and_delivered_is_not_accept(
    twilio_node: TwilioNode, phones: dict[str, Phone]
) -> None:
    phones[LEE_SMS] = Phone(sms="delivered")
    await twilio_node.directory([[Rad("drlee", "Dr Lee", sms=LEE_SMS)]])
    incident_id = await twilio_node.runner.raise_incident(room_code="CT2", severity="severe", source="test")
    await _paged(twilio_node, incident_id)
    incident = await twilio_node.incident(incident_id)
    assert incident.state.value == "paging"  # delivered is not accepted

    (msg,) = twilio_node.fake.messages
    assert msg["from"] == OUR_NUMBER and msg["to"] == LEE_SMS
    assert msg["body"] == (
        f"CONTRAST ALERT SEVERE: Northside Imaging, room CT2. Code {incident.code}. "
        f"Reply 1 or ACK {incident.code} to accept. {PUBLIC_BASE}/incidents/{incident_id}"
    )
    reply = await twilio_node.fake.send_sms(LEE_SMS, " 1 ", OUR_NUMBER)
    assert reply == f"Accepted incident {incident.code}. The technologist has been told."
    incident = await twilio_node.wait_state(incident_id, {"accepted"})
    (leg,) = await twilio_node.legs(incident_id)
    assert incident.accepted_leg_id == leg.id and leg.external_ref == msg["sid"]

    await twilio_node.wait_event(incident_id, "leg.sms_status", count=2)
    events = [e for e in await twilio_node.events(incident_id) if e.leg_id == leg.id]
    kinds = [e.kind for e in events]
    statuses = [e.data["status"] for e in events if e.kind == "leg.sms_status"]
    assert sorted(statuses) == ["delivered", "sent"]  # shuffled and sent twice each: recorded once each
    assert kinds.count("leg.delivered") == 1
    assert kinds.index("leg.delivered") < kinds.index("leg.sms_reply") < kinds.index("leg.accepted")
    assert next(e for e in events if e.kind == "leg.accepted").data["method"] == "sms"
    assert leg_status(events) is LegStatus.ACCEPTED


async def test_ack_with_code_picks_the_incident_and_strangers_cannot_accept(
    twilio_node: TwilioNode, phones: dict[str, Phone]
) -> None:
    phones[LEE_SMS] = Phone()
    phones[PARK_SMS] = Phone()
    await twilio_node.directory(
        [[Rad("drlee", "Dr Lee", sms=LEE_SMS), Rad("drpark", "Dr Park", sms=PARK_SMS)]]
    )
    incident_id = await twilio_node.runner.raise_incident(room_code="CT2", severity="moderate", source="test")
    await _paged(twilio_node, incident_id, count=2)
    code = (await twilio_node.incident(incident_id)).code

    assert (
        await twilio_node.fake.send_sms(STRANGER, "1", OUR_NUMBER)
        == "No open contrast alert for this number."
    )
    assert (
        await twilio_node.fake.send_sms(LEE_SMS, "ACK ZZZZZZ", OUR_NUMBER)
        == "No open contrast alert for this number."
    )
    assert (await twilio_node.fake.send_sms(LEE_SMS, "what?", OUR_NUMBER)).startswith("Reply 1 or ACK")
    assert (await twilio_node.incident(incident_id)).state.value == "paging"

    reply = await twilio_node.fake.send_sms(PARK_SMS, f"ack {code.lower()}", OUR_NUMBER)
    assert reply.startswith(f"Accepted incident {code}")
    incident = await twilio_node.wait_state(incident_id, {"accepted"})
    late = await twilio_node.fake.send_sms(LEE_SMS, "1", OUR_NUMBER)
    assert late == f"Incident {code} is already accepted by Dr Park."
    legs = {leg.address: leg for leg in await twilio_node.legs(incident_id)}
    assert incident.accepted_leg_id == legs[PARK_SMS].id
    await twilio_node.wait_event(incident_id, "leg.ended")  # the runner cancels the loser's page
    events = await twilio_node.events(incident_id)
    lee = [e for e in events if e.leg_id == legs[LEE_SMS].id]
    assert "leg.accept_refused" in [e.kind for e in lee]
    assert leg_status(lee) is LegStatus.CANCELLED  # cancelled when Dr Park accepted


async def test_undelivered_sms_fails_the_leg(twilio_node: TwilioNode, phones: dict[str, Phone]) -> None:
    phones[LEE_SMS] = Phone(sms="undelivered")
    await twilio_node.directory([[Rad("drlee", "Dr Lee", sms=LEE_SMS)]])
    incident_id = await twilio_node.runner.raise_incident(room_code="CT2", severity="mild", source="test")
    await twilio_node.wait_state(incident_id, {"exhausted"})
    (leg,) = await twilio_node.legs(incident_id)
    events = [e for e in await twilio_node.events(incident_id) if e.leg_id == leg.id]
    ended = [e for e in events if e.kind == "leg.ended"]
    assert len(ended) == 1 and ended[0].data["cause"] == "failed" and "30003" in ended[0].data["reason"]
    assert "leg.delivered" not in [e.kind for e in events]


def test_reply_parsing() -> None:
    assert parse_reply("1") == Reply(True)
    assert parse_reply(" 1. ") == Reply(True)
    assert parse_reply("ACK k7rxm4") == Reply(True, "K7RXM4")
    assert parse_reply("Ack  K7R!") == Reply(True, "K7R")
    assert parse_reply("1 2468") == Reply(True, None, "2468")
    assert parse_reply("ack k7r 2468") == Reply(True, "K7R", "2468")
    assert parse_reply("ack k7r 2468").evidence == "ACK K7R +PIN"
    assert parse_reply("11") == Reply(False)
    assert parse_reply("ok") == Reply(False)
    assert parse_reply("ACK") == Reply(False)
    assert parse_reply("1 24") == Reply(False)


async def test_sms_accept_needs_the_pin_when_the_person_has_one(
    twilio_node: TwilioNode, phones: dict[str, Phone]
) -> None:
    phones[LEE_SMS] = Phone()
    await twilio_node.directory([[Rad("drlee", "Dr Lee", sms=LEE_SMS, pin="2468")]])
    incident_id = await twilio_node.runner.raise_incident(room_code="CT2", severity="severe", source="test")
    await _paged(twilio_node, incident_id)
    code = (await twilio_node.incident(incident_id)).code
    (msg,) = twilio_node.fake.messages
    assert f"Reply 1 <PIN> or ACK {code} <PIN> to accept." in msg["body"]
    fake = twilio_node.fake
    assert await fake.send_sms(LEE_SMS, "1", OUR_NUMBER) == f"Your PIN is needed: reply ACK {code} <PIN>."
    assert await fake.send_sms(LEE_SMS, "1 0000", OUR_NUMBER) == "That PIN is not correct."
    assert (await twilio_node.incident(incident_id)).state.value == "paging"
    assert (await fake.send_sms(LEE_SMS, f"ACK {code} 2468", OUR_NUMBER)).startswith("Accepted incident")
    await twilio_node.wait_state(incident_id, {"accepted"})
    events = await twilio_node.events(incident_id)
    checks = [e.data["ok"] for e in events if e.kind == "leg.pin_checked"]
    assert checks == [False, True]
    replies = [e.data["reply"] for e in events if e.kind == "leg.sms_reply"]
    assert replies == ["1", "1 +PIN", f"ACK {code} +PIN"]
    assert all("2468" not in str(e.data) and "0000" not in str(e.data) for e in events)
