"""The technologist dial-in over the Twilio number, end to end: a whole node (``CommsApp``), the real ``twilio``
library and the fake Twilio playing both the technologist's inbound call and the radiologist's alert call.

* Caller ID (room CT2's phone) or a keyed room code (MR4 = 674#) identifies the room; ``1`` raises a severe
  incident; the caller hears the supervised hold ("Doctor Lee is being called, attempt 1") through the
  ``<Pause>``/``<Redirect>`` loop; Dr Lee accepts on the phone and both calls are put in the same
  ``<Dial><Conference>`` (the caller's by a REST update). The conference callbacks make the incident connected.
* Nobody accepts: the caller is told to activate the code team and given the fallback number.
* A forged dial-in webhook, a forged or replayed media stream: 403 / refused, and a security event.
"""

from __future__ import annotations

import pytest
from aiohttp import ClientSession, WSServerHandshakeError

from comms.db.events import verify_chain
from comms.db.types import Direction
from escalation.twilio_streams import stream_url
from tests.twilio.app_node import DIALIN_NUMBER, ROOM_PHONE, SPOKEN_FALLBACK, AppNode, Rad
from tests.twilio.conftest import PUBLIC_BASE
from tests.twilio.fake_twilio import Phone

LEE = "+13125550111"
STRANGER = "+13125550177"


def kinds(events, leg_id):  # type: ignore[no-untyped-def]
    return [e.kind for e in events if e.leg_id == leg_id]


def in_order(seen: list[str], expected: list[str]) -> bool:
    """``expected`` is a subsequence of ``seen`` (other events may come between)."""
    rest = iter(seen)
    return all(any(k == want for k in rest) for want in expected)


@pytest.mark.parametrize(
    ("caller", "keys", "room", "by"),
    [(ROOM_PHONE, "1", "CT2", "caller_id"), (STRANGER, "674#1", "MR4", "keyed_code")],
    ids=["caller-id", "keyed-code"],
)
async def test_dialin_holds_then_joins_the_radiologist_in_one_conference(
    app_node: AppNode, phones: dict[str, Phone], caller: str, keys: str, room: str, by: str
) -> None:
    phones[LEE] = Phone("human", keys="1", ring_s=3.0)  # rings long enough for a hold status to be heard
    await app_node.directory([Rad("drlee", "Dr Lee", voice=LEE)])
    fake = app_node.fake
    tech = fake.dial_in(caller, DIALIN_NUMBER, Phone("human", keys=keys))

    incident_id = await app_node.wait_for(app_node.dialin_incident, 15, "the dial-in to raise an incident")
    await app_node.wait_event(incident_id, "incident.connected", timeout=30)
    radio = next(c for c in fake.calls.values() if c.to == LEE)
    conference = f"incident-{incident_id}"
    assert tech.conferences == [conference]
    assert radio.conferences == [conference]
    # the conference TwiML reached both calls: the caller's by a REST update, the radiologist's as the answer
    # to the Gather in which the radiologist pressed 1
    assert any(f">{conference}</Conference>" in doc for doc in tech.twiml)
    assert any(f">{conference}</Conference>" in doc for doc in radio.twiml)
    assert "calls.update" in fake.rest_requests

    assert "Doctor Lee is being called, attempt 1." in tech.spoken
    assert "Doctor Lee has accepted. Connecting you now." in tech.spoken
    assert tech.spoken.index("Doctor Lee is being called, attempt 1.") < tech.spoken.index(
        "Doctor Lee has accepted. Connecting you now."
    )
    assert (
        radio.spoken[-1]
        == "Thank you. Connecting you to the technologist of room "
        + ("CT 2" if room == "CT2" else "MR 4")
        + " now."
    )

    fake.hang_up(tech)  # the technologist hangs up: the conference ends, the radiologist is told
    await app_node.wait_for(lambda: _done(tech, radio), 15, "both calls over")
    assert radio.spoken[-1] == "The technologist has left the call. Goodbye."
    await app_node.wait_event(incident_id, "leg.ended", count=2, timeout=15)

    events = await app_node.events(incident_id)
    assert verify_chain(events) == []
    raised = events[0]
    assert raised.kind == "incident.raised"
    assert raised.data["source"] == "twilio_dialin"
    assert raised.data["room"] == room and raised.data["severity"] == "severe"
    legs = await app_node.legs(incident_id)
    (inbound,) = [leg for leg in legs if leg.direction == Direction.INBOUND]
    (outbound,) = [leg for leg in legs if leg.direction == Direction.OUTBOUND]
    assert inbound.external_ref == tech.sid and inbound.channel.value == "pstn_voice"
    seen = kinds(events, inbound.id)
    expected = [
        "leg.created",
        "leg.invite_received",
        "leg.answered",
        "dialin.room_identified",
        "dialin.severity_chosen",
        "dialin.hold_status",
        "dialin.accepted_announced",
        "bridge.started",
        "bridge.participant_joined",
        "bridge.participant_joined",
        "leg.ended",
    ]
    assert in_order(seen, expected), seen
    identified = next(e for e in events if e.kind == "dialin.room_identified")
    assert identified.data["by"] == by and identified.data["room"] == room
    status = next(e for e in events if e.kind == "dialin.hold_status")
    assert status.data["names"] == ["Dr Lee"] and status.data["attempt"] == 1
    if by == "keyed_code":
        assert "".join(
            e.data["digit"] for e in events if e.kind == "leg.dtmf" and e.leg_id == inbound.id
        ) == ("674#1")
    radio_kinds = kinds(events, outbound.id)
    assert radio_kinds.index("leg.accepted") < radio_kinds.index("leg.handed_over")
    assert next(e for e in events if e.kind == "leg.handed_over").data["to"] == "dialin_conference"
    assert "leg.bridged" in radio_kinds
    connected = next(e for e in events if e.kind == "incident.connected")
    assert connected.data == {
        "via": "twilio_conference",
        "caller_leg": inbound.id,
        "radiologist_leg": outbound.id,
    }
    assert (await app_node.incident(incident_id)).state.value == "connected"


async def _done(*calls) -> bool:  # type: ignore[no-untyped-def]
    return all(c.done.is_set() for c in calls)


async def test_tree_exhausted_the_caller_is_told_to_activate_the_code_team(
    app_node: AppNode, phones: dict[str, Phone]
) -> None:
    phones[LEE] = Phone("human", keys="2", ring_s=1.0)  # declines: the one-tier tree is exhausted
    await app_node.directory([Rad("drlee", "Dr Lee", voice=LEE)])
    fake = app_node.fake
    tech = fake.dial_in(ROOM_PHONE, DIALIN_NUMBER, Phone("human", keys="3"))
    incident_id = await app_node.wait_for(app_node.dialin_incident, 15, "the dial-in to raise an incident")
    await app_node.wait_for(lambda: _done(tech), 30, "the caller to be hung up")

    exhausted = (
        f"Nobody has accepted. Activate the code team now. Call {SPOKEN_FALLBACK}. "
        f"Again: activate the code team now, call {SPOKEN_FALLBACK}."
    )
    assert tech.spoken[-1] == exhausted
    assert "<Hangup />" in tech.twiml[-1]
    assert (await app_node.incident(incident_id)).state.value == "exhausted"
    await app_node.wait_event(incident_id, "leg.ended", count=2)
    events = await app_node.events(incident_id)
    inbound = next(leg for leg in await app_node.legs(incident_id) if leg.direction == Direction.INBOUND)
    seen = kinds(events, inbound.id)
    assert seen.index("dialin.exhausted_announced") < seen.index("leg.bye_sent") < seen.index("leg.ended")
    assert next(e for e in events if e.kind == "dialin.severity_chosen").data["severity"] == "mild"
    assert next(e for e in events if e.kind == "dialin.exhausted_announced").data["fallback"] == "555 0100"
    assert next(e for e in events if e.kind == "leg.bye_sent" and e.leg_id == inbound.id).data == {
        "reason": "exhausted"
    }


async def test_unknown_room_code_is_refused_politely(app_node: AppNode, phones: dict[str, Phone]) -> None:
    await app_node.directory([Rad("drlee", "Dr Lee", voice=LEE)])
    tech = app_node.fake.dial_in(STRANGER, DIALIN_NUMBER, Phone("human", keys="999#999#"))
    await app_node.wait_for(lambda: _done(tech), 20, "the caller to be hung up")
    assert tech.spoken.count("Sorry, that room code is not known.") == 1
    assert tech.spoken[-1].startswith(
        "That room code is not known. Use the room button, or call 5 5 5 0 1 0 0."
    )

    async def refused() -> list[dict[str, object]]:
        return [e.data for e in await app_node.events(None) if e.kind == "dialin.refused"]

    (event,) = await app_node.wait_for(refused, 10, "the refusal event")
    assert event["reason"] == "unknown_room" and event["call_sid"] == tech.sid
    steps = [s["kind"] for s in event["steps"]]  # type: ignore[index]
    assert steps.count("dialin.room_unknown") == 2 and "leg.answered" in steps


async def test_forged_dialin_webhook_and_streams_are_refused(
    app_node: AppNode, phones: dict[str, Phone]
) -> None:
    await app_node.directory([Rad("drlee", "Dr Lee", voice=LEE)])
    fake = app_node.fake
    params = {
        "AccountSid": fake.account_sid,
        "CallSid": "CA" + "2" * 32,
        "From": ROOM_PHONE,
        "To": DIALIN_NUMBER,
        "CallStatus": "ringing",
        "Direction": "inbound",
    }
    url = PUBLIC_BASE + "/twilio/dialin"
    status, _ = await fake.post_webhook(url, params, signature="bm90IGEgc2lnbmF0dXJl")
    assert status == 403
    status, _ = await fake.post_webhook(url, params, signature=None)
    assert status == 403
    status, _ = await fake.post_webhook(
        url, params, signature=fake.sign(fake.webhook_base + "/twilio/dialin", params)
    )
    assert status == 403
    hold = PUBLIC_BASE + f"/twilio/dialin/hold/{params['CallSid']}?n=1"
    status, _ = await fake.post_webhook(hold, params, signature=fake.sign(hold.replace("n=1", "n=2"), params))
    assert status == 403

    # the Media Streams WebSocket: a bad signature is refused before the upgrade ...
    ws_url = "ws" + fake.webhook_base[len("http") :] + "/twilio/media-stream"
    async with ClientSession() as http:
        with pytest.raises(WSServerHandshakeError) as info:
            await http.ws_connect(ws_url, headers={"X-Twilio-Signature": "bogus"})
        assert info.value.status == 403
        # ... and a genuine signature (it is the same for every stream) with no grant token is closed at start
        signature = fake.sign(stream_url(PUBLIC_BASE), {})
        async with http.ws_connect(ws_url, headers={"X-Twilio-Signature": signature}) as ws:
            start = {
                "streamSid": "MZ1",
                "callSid": params["CallSid"],
                "customParameters": {"token": "guessed", "incident": "x"},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            }
            await ws.send_json({"event": "start", "streamSid": "MZ1", "start": start})
            message = await ws.receive(timeout=5)
            assert message.type.name in ("CLOSE", "CLOSED", "CLOSING")

    async def refusals() -> list[dict[str, str]]:
        return [e.data for e in await app_node.events(None) if e.kind == "security.webhook_refused"]

    refused = await app_node.wait_for(lambda: _count(refusals, 6), 10, "six security events")
    reasons = [r["reason"] for r in refused]
    assert reasons[:4] == [
        "bad X-Twilio-Signature",
        "missing X-Twilio-Signature",
        "bad X-Twilio-Signature",
        "bad X-Twilio-Signature",
    ]
    assert reasons[4] == "bad X-Twilio-Signature" and refused[4]["path"] == "/twilio/media-stream"
    assert "stream token is unknown" in reasons[5]
    assert [r["path"] for r in refused[:3]] == ["/twilio/dialin"] * 3
    assert await app_node.dialin_incident() == ""  # nothing was raised


async def _count(query, n):  # type: ignore[no-untyped-def]
    found = await query()
    return found if len(found) >= n else None
