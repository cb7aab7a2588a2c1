"""The Twilio dial-in's stream handover to a SIP radiologist when the stream never opens.

A technologist on the Twilio number (the fake Twilio), a radiologist on the pjsua2 softphone who accepts: the
caller's call is moved to ``<Connect><Stream>``, but here Twilio never opens the WebSocket (the fake is told
to keep the call waiting on the ``<Connect>`` until it is updated or hung up).

* Nothing within ``stream_timeout_s``: the grant is revoked (the token, replayed later, is refused as unknown),
  ``bridge.failed`` is written, the caller is told to activate the code team, and the radiologist hears that
  the call could not be connected and gets a BYE (``leg.released``).
* The caller hangs up first: the grant is revoked at once, the radiologist hears "The technologist has left
  the call" and gets a BYE (``leg.bridge_refused``), and the wait for the stream ends at once.
* The radiologist hangs up first: the wait ends at once, the grant is revoked, ``bridge.failed`` is written and
  the caller hears "The doctor has left the call" and is hung up.
"""

from __future__ import annotations

import secrets
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from comms.db.events import verify_chain
from comms.db.types import Direction
from escalation.twilio_dialin import TwilioDialIn
from tests.support import until
from tests.twilio.app_node import DIALIN_NUMBER, ROOM_PHONE, SPOKEN_FALLBACK, AppNode, Rad
from tests.twilio.fake_twilio import FakeCall, FakeStream, Phone
from tests.twilio.twiml_caller import Verb

FAILED = f"Sorry, the alert could not be raised. Activate the code team now, call {SPOKEN_FALLBACK}. Goodbye."


@pytest.fixture
def stalled_streams(app_node: AppNode, monkeypatch: pytest.MonkeyPatch) -> list[FakeStream]:
    """Twilio takes ``<Connect><Stream>`` but never opens the WebSocket: the call waits on the ``<Connect>``
    until it is updated or hung up. Returns the streams Twilio was asked for (status None: never opened). Only
    the dial-in's (inbound) calls stall: ``replay_stream`` still opens a real WebSocket."""
    asked: list[FakeStream] = []
    opens = app_node.fake._stream

    async def never_open(call: FakeCall, phone: Phone, verb: Verb) -> None:
        if call.direction != "inbound":
            await opens(call, phone, verb)
            return
        stream = FakeStream(verb.stream_url or "", dict(verb.parameters), "MZ" + secrets.token_hex(16))
        call.streams.append(stream)
        asked.append(stream)
        await call.interrupt.wait()

    monkeypatch.setattr(app_node.fake, "_stream", never_open)
    return asked


def dialin_of(app_node: AppNode) -> TwilioDialIn:
    dialin = app_node.app.twilio_dialin
    assert dialin is not None
    return dialin


def loud_runs(path: Path, *, window_s: float = 0.25, min_dbfs: float = -40.0) -> list[bool]:
    """For each ``window_s`` of the WAV at ``path``: is it louder than ``min_dbfs``?"""
    with wave.open(str(path), "rb") as w:
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        if w.getnchannels() > 1:
            data = data.reshape(-1, w.getnchannels())[:, 0]
    n = int(rate * window_s)
    loud = []
    for start in range(0, len(data) - n + 1, n):
        x = data[start : start + n].astype(np.float64)
        rms = float(np.sqrt(np.mean(x * x))) / 32768.0
        loud.append(rms > 0 and 20 * float(np.log10(rms)) >= min_dbfs)
    return loud


def spoken_after_silence(path: Path, *, quiet_s: float, spoken_s: float, window_s: float = 0.25) -> bool:
    """The recording has ``quiet_s`` of silence (waiting for the stream) followed, later, by at least
    ``spoken_s`` of sound (the prompt we play before hanging up)."""
    loud = loud_runs(path, window_s=window_s)
    need = int(quiet_s / window_s)
    run = 0
    for i, is_loud in enumerate(loud):
        run = 0 if is_loud else run + 1
        if run >= need:
            return sum(loud[i:]) * window_s >= spoken_s
    return False


async def _security_refusals(app_node: AppNode) -> list[str]:
    return [e.data["reason"] for e in await app_node.events(None) if e.kind == "security.webhook_refused"]


async def _accepted_by_softphone(app_node: AppNode, softphone: Any, tmp_path: Path) -> FakeCall:
    """Dr Pj on the softphone accepts (answers, presses 1) a severe incident raised by a caller on CT2's phone."""
    from sip.softphone import Behaviour

    records = tmp_path / "records"
    records.mkdir()
    softphone.set_behaviour(Behaviour(answer_after=0.5, press="1", press_after=1.0, record_dir=records))
    await app_node.directory([Rad("drpj", "Dr Pj", sip=softphone.uri())])
    return app_node.fake.dial_in(ROOM_PHONE, DIALIN_NUMBER, Phone("human", keys="1"))


async def _stream_refused_then_legs_ended(
    app_node: AppNode, tech: FakeCall, stream: FakeStream, incident_id: str
) -> tuple[Any, Any, list[Any]]:
    """Twilio opening the handed-over stream now (or anyone replaying its token) is refused; both legs end
    with an intact chain. Returns the caller's and the radiologist's legs and the incident's events."""
    replay = await app_node.fake.replay_stream(tech.sid, stream.url, stream.parameters)
    assert replay.status == 101 and replay.closed_by == "server" and replay.heard == []
    refusals = await app_node.wait_for(lambda: _security_refusals(app_node), 10, "the refused stream")
    assert any("stream token is unknown, used or expired" in r for r in refusals)
    legs = await app_node.legs(incident_id)
    (inbound,) = [leg for leg in legs if leg.direction == Direction.INBOUND]
    (outbound,) = [leg for leg in legs if leg.direction == Direction.OUTBOUND]
    await app_node.wait_event(incident_id, "leg.ended", count=2, timeout=15)
    events = await app_node.events(incident_id)
    assert verify_chain(events) == []
    return inbound, outbound, events


async def test_no_stream_in_time_fails_the_bridge_on_both_sides(
    app_node: AppNode, softphone: Any, tmp_path: Path, stalled_streams: list[FakeStream]
) -> None:
    from sip.softphone import Disconnected, RecordingClosed

    dialin = dialin_of(app_node)
    dialin.stream_timeout_s = 3.0
    tech = await _accepted_by_softphone(app_node, softphone, tmp_path)
    incident_id = await app_node.wait_for(app_node.dialin_incident, 15, "the dial-in to raise an incident")
    (failed,) = await app_node.wait_event(incident_id, "bridge.failed", timeout=40)
    await softphone.wait_for(Disconnected, timeout=20)  # we hung up the radiologist
    recording = await softphone.wait_for(RecordingClosed, timeout=10)
    await until(lambda: tech.done.is_set(), within=15)

    # the caller was sent to the stream, which never opened, then told to activate the code team
    (stream,) = stalled_streams
    assert stream.status is None and list(stream.parameters) == ["token"]
    assert "Doctor Pj has accepted. Connecting you now." in tech.spoken
    assert tech.spoken[-1] == FAILED
    assert "<Hangup />" in tech.twiml[-1]
    # the radiologist waited in silence for the stream, then heard why the call ends
    assert spoken_after_silence(recording.path, quiet_s=2.0, spoken_s=2.0)

    # the grant is gone: Twilio opening the stream now (or anyone replaying the token) is refused
    inbound, outbound, events = await _stream_refused_then_legs_ended(app_node, tech, stream, incident_id)
    assert failed.leg_id == inbound.id
    reason = f"no media stream from Twilio call {tech.sid} within 3 s"
    assert failed.data == {"via": "twilio_stream", "radiologist_leg": outbound.id, "reason": reason}
    caller = [e.kind for e in events if e.leg_id == inbound.id]
    assert caller.index("dialin.accepted_announced") < caller.index("bridge.failed")
    assert caller.index("bridge.failed") < caller.index("leg.bye_sent") < caller.index("leg.ended")
    assert "bridge.started" not in caller
    bye = next(e for e in events if e.kind == "leg.bye_sent" and e.leg_id == inbound.id)
    assert bye.data == {"reason": "bridge-failed"}
    radio = [e for e in events if e.leg_id == outbound.id]
    kinds = [e.kind for e in radio]
    assert kinds.index("leg.handed_over") < kinds.index("leg.released") < kinds.index("leg.ended")
    assert next(e for e in radio if e.kind == "leg.released").data == {"reason": reason}
    assert "leg.bridged" not in kinds
    assert (await app_node.incident(incident_id)).state.value == "accepted"  # never connected

    # nothing left behind: no task, no waiting caller
    await until(lambda: dialin.background_tasks == 0, within=10)
    assert not dialin.waiting(incident_id)


async def _waiting_for_a_slow_stream(
    app_node: AppNode, softphone: Any, tmp_path: Path, stalled_streams: list[FakeStream]
) -> tuple[TwilioDialIn, FakeCall, str]:
    """Dr Pj accepted and the caller waits on ``<Connect><Stream>`` for a stream that does not come; the
    timeout is long (60 s) so that a hang-up, not the timeout, must end the wait."""
    dialin = dialin_of(app_node)
    dialin.stream_timeout_s = 60.0
    tech = await _accepted_by_softphone(app_node, softphone, tmp_path)
    incident_id = await app_node.wait_for(app_node.dialin_incident, 15, "the dial-in to raise an incident")
    await until(lambda: bool(stalled_streams), within=30)
    return dialin, tech, incident_id


async def test_caller_hangs_up_before_the_stream_opens(
    app_node: AppNode, softphone: Any, tmp_path: Path, stalled_streams: list[FakeStream]
) -> None:
    from sip.softphone import Disconnected, RecordingClosed

    dialin, tech, incident_id = await _waiting_for_a_slow_stream(
        app_node, softphone, tmp_path, stalled_streams
    )
    await app_node.app.clock.sleep(2.0)  # ... for a stream that is slow to come, and gives up
    app_node.fake.hang_up(tech)
    await softphone.wait_for(Disconnected, timeout=20)  # we hung up the radiologist
    recording = await softphone.wait_for(RecordingClosed, timeout=10)
    await until(lambda: tech.done.is_set(), within=15)
    # the wait for the stream ended with the call, long before its timeout
    await until(lambda: dialin.background_tasks == 0, within=10)
    assert not dialin.waiting(incident_id)
    # the radiologist waited in silence, then heard "The technologist has left the call. Goodbye."
    assert spoken_after_silence(recording.path, quiet_s=1.5, spoken_s=1.5)

    (stream,) = stalled_streams
    inbound, outbound, events = await _stream_refused_then_legs_ended(app_node, tech, stream, incident_id)
    caller = [e for e in events if e.leg_id == inbound.id]
    ended = next(e for e in caller if e.kind == "leg.ended")
    assert ended.data == {"cause": "normal", "by": "twilio", "call_status": "completed"}
    assert not {"bridge.started", "bridge.failed"} & {e.kind for e in caller}
    radio = [e for e in events if e.leg_id == outbound.id]
    kinds = [e.kind for e in radio]
    assert kinds.index("leg.handed_over") < kinds.index("leg.bridge_refused") < kinds.index("leg.ended")
    refused = next(e for e in radio if e.kind == "leg.bridge_refused")
    assert refused.data == {"reason": "the technologist hung up before the media stream opened"}
    assert "leg.bridged" not in kinds and "leg.released" not in kinds


async def test_radiologist_hangs_up_before_the_stream_opens(
    app_node: AppNode, softphone: Any, tmp_path: Path, stalled_streams: list[FakeStream]
) -> None:
    from sip.softphone import Answered, Disconnected

    dialin, tech, incident_id = await _waiting_for_a_slow_stream(
        app_node, softphone, tmp_path, stalled_streams
    )
    answered = await softphone.wait_for(Answered, timeout=10)
    await app_node.app.clock.sleep(1.0)
    await softphone.hangup(answered.call)  # ... and the radiologist gives up first
    await softphone.wait_for(Disconnected, timeout=20)
    await until(lambda: tech.done.is_set(), within=15)  # the caller was told and hung up, long before 60 s
    await until(lambda: dialin.background_tasks == 0, within=10)
    assert not dialin.waiting(incident_id)
    assert tech.spoken[-1] == "The doctor has left the call. Goodbye."
    assert "<Hangup />" in tech.twiml[-1]

    (stream,) = stalled_streams
    inbound, outbound, events = await _stream_refused_then_legs_ended(app_node, tech, stream, incident_id)
    caller = [e for e in events if e.leg_id == inbound.id]
    failed = next(e for e in caller if e.kind == "bridge.failed")
    reason = "the radiologist hung up before the media stream opened"
    assert failed.data == {"via": "twilio_stream", "radiologist_leg": outbound.id, "reason": reason}
    kinds = [e.kind for e in caller]
    assert kinds.index("bridge.failed") < kinds.index("leg.bye_sent") < kinds.index("leg.ended")
    radio = [e for e in events if e.leg_id == outbound.id]
    radio_kinds = [e.kind for e in radio]
    assert radio_kinds.index("leg.handed_over") < radio_kinds.index("leg.ended")
    assert not {"leg.released", "leg.bridge_refused", "leg.bridged"} & set(radio_kinds)
    assert next(e for e in radio if e.kind == "leg.ended").data["by"] == "remote"
    assert (await app_node.incident(incident_id)).state.value == "accepted"  # never connected
