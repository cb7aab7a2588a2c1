"""Webhook security: every Twilio webhook is checked against the public URL; refusals are 403 + a security event."""

from __future__ import annotations

import pytest

from tests.twilio.conftest import OUR_NUMBER, PUBLIC_BASE, Rad, TwilioNode
from tests.twilio.fake_twilio import Phone

LEE = "+13125550111"
LEE_SMS = "+13125550141"


async def refusals(node: TwilioNode) -> list[dict[str, str]]:
    return [e.data for e in await node.events(None) if e.kind == "security.webhook_refused"]


async def test_forged_sms_accept_is_refused_and_recorded(
    twilio_node: TwilioNode, phones: dict[str, Phone]
) -> None:
    phones[LEE_SMS] = Phone()
    await twilio_node.directory([[Rad("drlee", "Dr Lee", sms=LEE_SMS)]])
    incident_id = await twilio_node.runner.raise_incident(room_code="CT2", severity="severe", source="test")
    await twilio_node.wait_event(incident_id, "leg.delivered")
    fake = twilio_node.fake
    params = {
        "AccountSid": fake.account_sid,
        "MessageSid": "SM" + "1" * 32,
        "From": LEE_SMS,
        "To": OUR_NUMBER,
        "Body": "1",
    }
    url = PUBLIC_BASE + "/twilio/sms"

    status, _ = await fake.post_webhook(url, params, signature="bm90IGEgc2lnbmF0dXJl")  # forged
    assert status == 403
    status, _ = await fake.post_webhook(url, params, signature=None)  # missing
    assert status == 403
    # signed over the URL the proxy shows us (the loopback address), not the public one Twilio called
    proxy_view = fake.sign(twilio_node.webhook_base + "/twilio/sms", params)
    status, _ = await fake.post_webhook(url, params, signature=proxy_view)
    assert status == 403
    # a valid signature for other parameters (the body was changed on the way)
    signed_other = fake.sign(url, {**params, "Body": "2"})
    status, _ = await fake.post_webhook(url, params, signature=signed_other)
    assert status == 403

    assert (await twilio_node.incident(incident_id)).state.value == "paging"  # nothing was accepted
    refused = await refusals(twilio_node)
    assert [r["reason"] for r in refused] == [
        "bad X-Twilio-Signature",
        "missing X-Twilio-Signature",
        "bad X-Twilio-Signature",
        "bad X-Twilio-Signature",
    ]
    assert all(r["path"] == "/twilio/sms" and r["peer"] == "127.0.0.1" for r in refused)

    reply = await fake.send_sms(LEE_SMS, "1", OUR_NUMBER)  # the genuine one, correctly signed
    assert reply.startswith("Accepted incident")
    await twilio_node.wait_state(incident_id, {"accepted"})


@pytest.mark.parametrize(
    "path",
    [
        "/twilio/voice/leg-x",
        "/twilio/gather/leg-x?turn=1",
        "/twilio/call-status/leg-x",
        "/twilio/sms-status/leg-x",
    ],
)
async def test_every_webhook_route_checks_the_signature(twilio_node: TwilioNode, path: str) -> None:
    params = {"CallSid": "CA" + "2" * 32, "CallStatus": "completed", "SequenceNumber": "0"}
    status, body = await twilio_node.fake.post_webhook(PUBLIC_BASE + path, params, signature="AAAA")
    assert status == 403 and body == "forbidden"
    (refused,) = await refusals(twilio_node)
    assert refused["path"] == path.split("?")[0]


async def test_signed_webhooks_for_unknown_legs_are_answered_harmlessly(twilio_node: TwilioNode) -> None:
    fake = twilio_node.fake
    params = {"CallSid": "CA" + "3" * 32, "CallStatus": "in-progress", "AnsweredBy": "human"}
    status, twiml = await fake.post_webhook(PUBLIC_BASE + "/twilio/voice/nope", params)
    assert status == 200 and "<Hangup />" in twiml
    status, _ = await fake.post_webhook(
        PUBLIC_BASE + "/twilio/call-status/nope", {**params, "SequenceNumber": "0"}
    )
    assert status == 204
    status, _ = await fake.post_webhook(PUBLIC_BASE + "/twilio/gather/nope?turn=x", params)
    assert status == 400
    assert await refusals(twilio_node) == []


async def test_webhooks_answer_fast(twilio_node: TwilioNode, phones: dict[str, Phone]) -> None:
    phones[LEE] = Phone("human", keys="T21")
    phones[LEE_SMS] = Phone()
    await twilio_node.directory([[Rad("drlee", "Dr Lee", voice=LEE, sms=LEE_SMS)]])
    incident_id = await twilio_node.runner.raise_incident(room_code="CT2", severity="severe", source="test")
    await twilio_node.wait_event(incident_id, "leg.declined")
    await twilio_node.wait_event(incident_id, "leg.delivered")
    await twilio_node.fake.send_sms(LEE_SMS, "1", OUR_NUMBER)
    await twilio_node.wait_state(incident_id, {"accepted"})
    await twilio_node.wait_calls_done()
    times = twilio_node.fake.webhook_times
    assert len(times) >= 10
    # Twilio gives up after 15 s; we answer in well under a second (database writes only)
    assert max(times) < 1.0, f"slowest webhook took {max(times):.3f} s"
