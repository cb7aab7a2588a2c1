"""A technologist on the SIP dial-in, a radiologist who accepts on a Twilio call: the mirror of
``test_twilio_streams``'s Twilio caller bridged to a SIP radiologist.

The pjsua2 softphone calls ``sip:reaction@node`` from room CT2's phone (caller ID), presses 1 (RFC 4733) and
plays a 1000 Hz tone; Dr Lee's Twilio call (the fake Twilio) presses 1 and, once its answer is
``<Connect><Stream>``, says 700 Hz into the media stream. The stream is cross-connected with the caller's RTP
leg: the caller's 1000 Hz is heard on the stream, the radiologist's 700 Hz is in the softphone's recording.
Either side hanging up releases the other: the radiologist hangs up -> the caller hears "The doctor has left the
call" and gets a BYE; the caller hangs up -> we close the stream and Twilio tells the radiologist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from comms.db.events import verify_chain
from comms.db.types import Direction
from tests.dialin.conftest import ROOM_PHONE as SOFTPHONE_ROOM_PHONE
from tests.support import Rad, RoomSpec, seed_site, until, wav_tone_seconds, write_tone
from tests.twilio.app_node import AppNode
from tests.twilio.fake_twilio import Phone
from tests.twilio.test_twilio_streams import tone_seconds

LEE = "+13125550111"
CALLER_HZ = 1000.0
RADIOLOGIST_HZ = 700.0


@pytest.mark.parametrize("leaves", ["radiologist", "caller"])
async def test_sip_dialin_caller_is_streamed_to_the_radiologist_who_accepted_on_twilio(
    app_node: AppNode, phones: dict[str, Phone], softphone: Any, tmp_path: Path, leaves: str
) -> None:
    from sip.softphone import Behaviour, Disconnected, RecordingClosed

    phones[LEE] = Phone("human", keys="1", ring_s=2.0, tone_hz=RADIOLOGIST_HZ)
    await seed_site(
        app_node.sessions,
        [[Rad("drlee", "Dr Lee", voice=LEE)]],
        rooms=[RoomSpec("CT2", phone=SOFTPHONE_ROOM_PHONE), RoomSpec("MR4")],
        ring_timeout_s=20,
    )
    tone = write_tone(tmp_path / "tone1000.wav", seconds=60.0, freq=CALLER_HZ, amplitude=0.3)
    records = tmp_path / "records"
    records.mkdir()
    fake = app_node.fake
    # the caller presses 1 (severe) during the severity prompt; plays its tone and records what it hears; when
    # it is the one who leaves, it hangs up 20 s after the answer (well into the bridge)
    call = await softphone.dial(
        f"sip:reaction@{app_node.extension}",
        behaviour=Behaviour(
            press="1",
            press_after=1.0,
            play=tone,
            record_dir=records,
            hangup_after=20.0 if leaves == "caller" else None,
        ),
    )
    incident_id = await app_node.wait_for(app_node.dialin_incident, 15, "the dial-in to raise an incident")
    await app_node.wait_event(incident_id, "incident.connected", timeout=30)
    radio = next(c for c in fake.calls.values() if c.to == LEE)
    (stream,) = radio.streams
    assert stream.status == 101 and list(stream.parameters) == ["token"]
    assert radio.spoken[-1] == "Thank you. Connecting you to the technologist of room CT 2 now."
    # connected: both directions carry audio (the radiologist's once "Doctor Lee has accepted" was said); let
    # 3 s more of the radiologist's tone go out, and the caller's 1000 Hz reach the stream
    sent = stream.sent
    await until(lambda: stream.sent >= sent + 150, within=10)
    await until(lambda: tone_seconds(stream.heard[-100:], CALLER_HZ) >= 1.0, within=10)

    if leaves == "radiologist":
        fake.hang_up(radio)
        ended = await softphone.wait_for(Disconnected, call=call, timeout=15)  # we hung the caller up
        assert ended.status < 300 or ended.status == 0, ended
        assert stream.closed_by == "twilio"
    else:
        await softphone.wait_for(Disconnected, call=call, timeout=30)
        await until(lambda: radio.done.is_set(), within=15)
        assert stream.closed_by == "server"  # we closed the stream when the caller left ...
        assert radio.spoken[-1] == "The technologist has left the call. Goodbye."  # ... and Twilio said so
    recording = await softphone.wait_for(RecordingClosed, call=call, timeout=10)

    # the radiologist's 700 Hz reached the caller, the caller's 1000 Hz reached the radiologist
    assert wav_tone_seconds(recording.path, RADIOLOGIST_HZ) >= 2.0
    assert tone_seconds(stream.heard, CALLER_HZ) >= 2.0

    (bridge_ended,) = await app_node.wait_event(incident_id, "bridge.ended", timeout=10)
    await app_node.wait_event(incident_id, "leg.ended", count=2, timeout=15)
    events = await app_node.events(incident_id)
    assert verify_chain(events) == []
    assert events[0].data["source"] == "sip_dialin" and events[0].data["room"] == "CT2"
    legs = await app_node.legs(incident_id)
    (inbound,) = [leg for leg in legs if leg.direction == Direction.INBOUND]
    (outbound,) = [leg for leg in legs if leg.direction == Direction.OUTBOUND]
    assert inbound.channel.value == "sip" and outbound.channel.value == "pstn_voice"
    assert outbound.external_ref == radio.sid

    caller = [e for e in events if e.leg_id == inbound.id]
    kinds = [e.kind for e in caller]
    expected = [
        "leg.created",
        "leg.invite_received",
        "leg.answered",
        "dialin.room_identified",
        "dialin.severity_chosen",
        "dialin.accepted_announced",
        "bridge.started",
        "bridge.media_established",
        "bridge.media_established",
        "bridge.ended",
        "leg.ended",
    ]
    rest = iter(kinds)
    assert all(any(k == want for k in rest) for want in expected), kinds
    started = next(e for e in caller if e.kind == "bridge.started")
    assert started.data["via"] == "twilio_stream" and started.data["radiologist_leg"] == outbound.id
    assert started.data["call_sid"] == radio.sid and started.data["stream_sid"] == stream.stream_sid
    directions = {e.data["direction"] for e in caller if e.kind == "bridge.media_established"}
    assert directions == {"caller->radiologist", "radiologist->caller"}
    assert bridge_ended.leg_id == inbound.id and bridge_ended.data["by"] == leaves
    for d in bridge_ended.data["directions"].values():
        assert d["established"] and d["frames_out"] > 100 and d["peak_dbfs"] > -20, bridge_ended.data
    if leaves == "radiologist":
        bye = next(e for e in caller if e.kind == "leg.bye_sent")
        assert bye.data == {"reason": "radiologist-left"}

    (connected,) = [e for e in events if e.kind == "incident.connected"]
    assert connected.data == {
        "via": "sip_dialin_stream_bridge",
        "caller_leg": inbound.id,
        "radiologist_leg": outbound.id,
    }
    radio_kinds = [e.kind for e in events if e.leg_id == outbound.id]
    assert (
        radio_kinds.index("leg.accepted")
        < radio_kinds.index("leg.handed_over")
        < radio_kinds.index("leg.bridged")
    )
    assert next(e for e in events if e.kind == "leg.handed_over").data["to"] == "dialin_stream"
    assert next(e for e in events if e.kind == "leg.bridged").data == {
        "caller_leg": inbound.id,
        "via": "stream",
    }
