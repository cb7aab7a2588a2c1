"""Twilio Media Streams end to end: a whole node, the fake Twilio opening the real WebSocket (signed, with the
one-time grant token from our ``<Parameter>``) and sending/receiving 20 ms µ-law frames of real tones.

* A room-button incident accepted on a Twilio alert call: the answer to the radiologist's "1" is
  ``<Connect><Stream>``; the room (an aiortc tablet sending 440 Hz) is heard on the stream and the radiologist's
  700 Hz reaches the room. The token works once, for that CallSid only.
* A technologist on the Twilio number, a radiologist on a SIP softphone (pjsua2) who accepts: the caller's call
  is moved to ``<Connect><Stream>`` and the stream is cross-connected with the SIP leg's RTP. The caller's
  1000 Hz is in the softphone's recording, the softphone's 700 Hz is on the stream; when the softphone hangs up
  the stream is closed and the caller is told.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aioice.ice
import numpy as np
import pytest

from comms.db.types import Direction
from escalation.twilio_streams import stream_url
from tests.gateway.support import AiortcRoom
from tests.support import tone_seconds_in, until, wav_tone_seconds, write_tone
from tests.twilio.app_node import DIALIN_NUMBER, ROOM_PHONE, AppNode, Rad
from tests.twilio.conftest import PUBLIC_BASE
from tests.twilio.fake_twilio import Phone

LEE = "+13125550111"


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host candidates on 127.0.0.1 only (aioice leaves loopback out by default)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


def tone_seconds(frames: list[Any], hz: float, *, window: int = 2000, min_dbfs: float = -40.0) -> float:
    """Seconds of 8 kHz PCM ``frames`` dominated (> 60 % of the energy within ±25 Hz) by a tone at ``hz``."""
    if not frames:
        return 0.0
    return tone_seconds_in(np.concatenate(frames), 8000, hz, window=window, min_dbfs=min_dbfs)


async def test_room_incident_accepted_on_twilio_is_streamed_to_the_room(
    app_node: AppNode, phones: dict[str, Phone]
) -> None:
    phones[LEE] = Phone("human", keys="1", tone_hz=700.0)
    await app_node.directory([Rad("drlee", "Dr Lee", voice=LEE)])
    gateway = app_node.app.gateway
    assert gateway is not None
    room = AiortcRoom(freq=440.0)
    try:
        await room.answer(await gateway.room_offer("CT2", await room.offer()))
        await until(lambda: gateway.rooms["CT2"].session.state == "connected")
        assert app_node.app.runner is not None
        incident_id = await app_node.app.runner.raise_incident(
            room_code="CT2", severity="severe", source="test"
        )
        fake = app_node.fake
        call = await app_node.wait_for(lambda: _call_to(fake, LEE), 15, "the alert call")
        await until(lambda: bool(call.streams) and len(call.streams[0].heard) > 100, within=20)
        (stream,) = call.streams
        assert stream.status == 101
        assert stream.url == stream_url(PUBLIC_BASE) == "wss://comms.example.test/twilio/media-stream"
        assert list(stream.parameters) == ["token"] and len(stream.parameters["token"]) >= 32
        assert "<Connect><Stream" in call.twiml[-1]
        assert call.spoken[-1].startswith("Thank you. You have accepted incident")
        # the room's 440 Hz reaches the radiologist's stream; the radiologist's 700 Hz reaches the room
        await until(lambda: tone_seconds(stream.heard[-50:], 440.0) >= 0.5, within=10)
        await until(lambda: room.listener is not None and room.listener.dbfs() > -30.0, within=10)

        # the token was for one stream of this call: a replay (same signature, same token) is closed at once
        replay = await fake.replay_stream(call.sid, stream.url, stream.parameters)
        assert replay.status == 101 and replay.closed_by == "server" and replay.heard == []
        refused = [e.data for e in await app_node.events(None) if e.kind == "security.webhook_refused"]
        assert any("stream token is unknown, used or expired" in r["reason"] for r in refused)

        fake.hang_up(call)
        await until(lambda: stream.closed_by == "twilio", within=10)
        await until(lambda: any(e.kind == "media.phone_left" for e in gateway.history), within=10)
        legs = await app_node.legs(incident_id)
        events = await app_node.events(incident_id)
        (leg,) = legs
        handed = next(e for e in events if e.kind == "leg.handed_over")
        assert handed.leg_id == leg.id and handed.data == {"to": "room_stream"}
        joined = next(e for e in gateway.history if e.kind == "media.phone_joined")
        assert joined.leg_id == leg.id and joined.data["via"] == "stream"
    finally:
        await room.close()


async def _call_to(fake: Any, number: str) -> Any:
    return next((c for c in fake.calls.values() if c.to == number), None)


async def test_twilio_dialin_bridged_to_a_sip_radiologist_audio_both_ways(
    app_node: AppNode, phones: dict[str, Phone], softphone: Any, tmp_path: Path
) -> None:
    from sip.softphone import Behaviour, RecordingClosed

    tone = write_tone(tmp_path / "tone700.wav", seconds=40.0, freq=700.0, amplitude=0.3)
    records = tmp_path / "records"
    records.mkdir()
    # answers after 2 s (the caller hears a hold status meanwhile), presses 1 during the alert prompt, hangs up
    # 16 s after answering
    softphone.set_behaviour(
        Behaviour(
            answer_after=2.0, press="1", press_after=2.0, play=tone, record_dir=records, hangup_after=16.0
        )
    )
    await app_node.directory([Rad("drpj", "Dr Pj", sip=softphone.uri())])
    fake = app_node.fake
    tech = fake.dial_in(ROOM_PHONE, DIALIN_NUMBER, Phone("human", keys="1", tone_hz=1000.0))
    incident_id = await app_node.wait_for(app_node.dialin_incident, 15, "the dial-in to raise an incident")
    await app_node.wait_event(incident_id, "incident.connected", timeout=30)
    await until(
        lambda: bool(tech.streams) and tone_seconds(tech.streams[0].heard[-100:], 700.0) >= 1.0, within=10
    )
    recording = await softphone.wait_for(RecordingClosed, timeout=25)
    await until(lambda: tech.done.is_set(), within=15)

    (stream,) = tech.streams
    assert stream.status == 101 and stream.closed_by == "server"  # we closed it when the radiologist left
    assert "Doctor Pj has accepted. Connecting you now." in tech.spoken
    assert tech.spoken[-1] == "The doctor has left the call. Goodbye."
    assert tone_seconds(stream.heard, 700.0) >= 2.0  # the softphone's tone reached the caller
    assert wav_tone_seconds(recording.path, 1000.0) >= 2.0  # and the caller's tone reached the softphone
    assert "calls.update" in fake.rest_requests

    await app_node.wait_event(incident_id, "bridge.ended", timeout=10)
    events = await app_node.events(incident_id)
    legs = await app_node.legs(incident_id)
    (inbound,) = [leg for leg in legs if leg.direction == Direction.INBOUND]
    (outbound,) = [leg for leg in legs if leg.direction == Direction.OUTBOUND]
    mine = [e for e in events if e.leg_id == inbound.id]
    started = next(e for e in mine if e.kind == "bridge.started")
    assert started.data["via"] == "twilio_stream" and started.data["radiologist_leg"] == outbound.id
    directions = {e.data["direction"] for e in mine if e.kind == "bridge.media_established"}
    assert directions == {"caller->radiologist", "radiologist->caller"}
    ended = next(e for e in mine if e.kind == "bridge.ended")
    assert ended.data["by"] == "radiologist"
    for d in ended.data["directions"].values():
        assert d["established"] and d["frames_out"] > 100 and d["peak_dbfs"] > -20
    connected = next(e for e in events if e.kind == "incident.connected")
    assert connected.data["via"] == "twilio_stream_bridge"
    radio = [e.kind for e in events if e.leg_id == outbound.id]
    assert radio.index("leg.accepted") < radio.index("leg.handed_over") and "leg.bridged" in radio


async def test_the_caller_hangs_up_during_the_sip_bridge_and_the_radiologist_is_released(
    app_node: AppNode, phones: dict[str, Phone], softphone: Any, tmp_path: Path
) -> None:
    from sip.softphone import Behaviour, RecordingClosed

    tone = write_tone(tmp_path / "tone700.wav", seconds=40.0, freq=700.0, amplitude=0.3)
    records = tmp_path / "records"
    records.mkdir()
    softphone.set_behaviour(
        Behaviour(answer_after=0.5, press="1", press_after=1.0, play=tone, record_dir=records)
    )
    await app_node.directory([Rad("drpj", "Dr Pj", sip=softphone.uri())])
    fake = app_node.fake
    tech = fake.dial_in(ROOM_PHONE, DIALIN_NUMBER, Phone("human", keys="2", tone_hz=1000.0))
    incident_id = await app_node.wait_for(app_node.dialin_incident, 15, "the dial-in to raise an incident")
    await app_node.wait_event(incident_id, "incident.connected", timeout=30)
    fake.hang_up(tech)
    await softphone.wait_for(RecordingClosed, timeout=20)  # we hung up the radiologist's call
    (ended,) = await app_node.wait_event(incident_id, "bridge.ended", timeout=10)
    assert ended.data["by"] == "caller"
    assert tech.streams[0].closed_by == "twilio"
    legs = await app_node.legs(incident_id)
    (outbound,) = [leg for leg in legs if leg.direction == Direction.OUTBOUND]

    async def radio_ended() -> bool:
        return any(
            e.kind == "leg.ended" and e.leg_id == outbound.id for e in await app_node.events(incident_id)
        )

    await app_node.wait_for(radio_ended, 10, "the radiologist's leg to end")
