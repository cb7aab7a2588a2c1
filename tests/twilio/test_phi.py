"""No PHI leaves: the scanner finds the patterns, and every payload sent through Twilio passes it."""

from __future__ import annotations

import pytest

from comms import phi
from escalation.channel import LegOrder
from escalation.twilio_channel import page_text
from ivr.menu import alert_menu, alert_variables, message_text, render
from ivr.twiml import TwimlCall
from tests.twilio.conftest import OUR_NUMBER, Rad, TwilioNode
from tests.twilio.fake_twilio import Phone


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Patient Jane Doe, CT2", "patient_name"),
        ("pt DOE, JANE in room 3", "patient_name"),
        ("maria garcia reacting", "patient_name"),
        ("MRN 00123456", "mrn"),
        ("mrn: A1234567", "mrn"),
        ("Medical record number 7654321", "mrn"),
        ("DOB 3/14/1961", "dob_label"),
        ("born 1961", "dob_label"),
        ("seen 03/14/1961", "date_us"),
        ("1961-03-14", "date_iso"),
        ("14.03.1961", "date_eu"),
        ("SSN 123-45-6789", "ssn"),
        ("accession 123456789", "long_number"),
    ],
)
def test_scanner_finds_each_pattern(text: str, kind: str) -> None:
    assert kind in {h.kind for h in phi.scan(text)}


def test_configured_names_are_found_and_guard_redacts() -> None:
    assert phi.scan("Pat Quinn in CT2", names=["Pat Quinn"])[0].kind == "patient_name"
    assert (
        phi.guard("Pat Quinn MRN 1234567 CT2", where="test", names=["Pat Quinn"])
        == "[redacted] [redacted] CT2"
    )
    assert phi.guard("nothing here", where="test") == "nothing here"


ORDER = LegOrder(
    leg_id="0f4c2a4e-1a3b-4c5d-9e8f-0123456789ab",
    incident_id="0f4c2a4e-1a3b-4c5d-9e8f-0123456789ab",
    incident_code="K7RXM4",
    severity="severe",
    site_name="Northside Imaging",
    room_code="CT2",
    room_name="CT 2",
    person_id="p1",
    person_name="Dr Lee",
    kind="sms",
    address="+13125550141",
    ring_timeout_s=30.0,
    tier=0,
)


def test_what_we_build_is_clean() -> None:
    texts = [page_text(ORDER, "https://comms.example.org")]
    menu = alert_menu(require_pin=True)
    variables = alert_variables(severity="severe", room="CT2", site="Northside Imaging", code="K7RXM4")
    texts += [render(s.prompt, variables, prompt_id=s.id) for s in menu.steps]
    texts.append(message_text(menu, "already_accepted", {"name": "Dr Lee"}))
    texts.append(
        TwimlCall(menu, variables, action_url="https://comms.example.org/twilio/gather/x").start(0.0).twiml
        or ""
    )
    for text in texts:
        assert phi.scan(text) == [], text


async def test_every_payload_sent_through_twilio_is_clean(
    twilio_node: TwilioNode, phones: dict[str, Phone]
) -> None:
    phones["+13125550111"] = Phone("human", keys="9T2")
    phones["+13125550122"] = Phone("human", keys="1", ring_s=0.2)
    phones["+13125550152"] = Phone()
    await twilio_node.directory(
        [
            [Rad("drlee", "Dr Lee", voice="+13125550111")],
            [Rad("drpark", "Dr Park", voice="+13125550122", sms="+13125550152")],
        ]
    )
    incident_id = await twilio_node.runner.raise_incident(room_code="CT2", severity="severe", source="test")
    await twilio_node.wait_state(incident_id, {"accepted"})
    await twilio_node.fake.send_sms("+13125550152", "hello", OUR_NUMBER)
    await twilio_node.fake.send_sms("+13125550152", "1", OUR_NUMBER)  # too late: "already accepted by"
    await twilio_node.wait_calls_done()
    kinds = {kind for kind, _ in twilio_node.fake.payloads}
    assert kinds == {"say", "sms", "sms_reply"}
    for kind, text in twilio_node.fake.payloads:
        assert phi.scan(text) == [], f"{kind}: {text}"
