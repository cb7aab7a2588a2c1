"""The technologist dial-in end to end on loopback, with real peers and no mocks.

* SIPp dials ``sip:reaction@node``, keys room MR4's dial code ``674#`` and severity ``1`` as RFC 4733 events,
  hears the hold status, and is connected to the pjsua2 softphone radiologist who accepted. SIPp runs with
  ``-rtp_echo``: it sends back every RTP packet it receives. The softphone plays a 700 Hz tone; once the bridge is
  up the tone goes softphone -> bridge -> SIPp -> (echo) -> bridge -> softphone, so the softphone's recording
  holds seconds of its own tone only if audio crossed the bridge both ways and SIPp received it. Before the bridge
  the softphone hears only our spoken prompts (no 700 Hz tone). Our status prompts reaching SIPp are proved the
  same way: the echoed packets our caller leg receives grow between two status events.
* An unknown room code is asked again, then the caller is sent away politely (a ``dialin.refused`` event).
* The softphone calls from room CT2's phone (caller ID), presses 1; nobody can be reached: the caller is told to
  activate the code team and given the fallback number.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from comms.db.events import verify_chain
from comms.db.models import Event
from comms.db.types import Direction
from tests.dialin.conftest import FALLBACK, DialInNode
from tests.slice.conftest import Radiologist
from tests.support import dialin_incident, wait_for, wav_tone_seconds, write_tone

Sipp = Callable[..., Any]
TONE_HZ = 700.0


async def only_incident(node: DialInNode) -> str:
    return await dialin_incident(node.sessions)


async def global_events(node: DialInNode) -> list[Event]:
    async with node.sessions() as s:
        return list(
            (await s.scalars(sa.select(Event).where(Event.incident_id.is_(None)).order_by(Event.seq))).all()
        )


def kinds_of(events: list[Event], leg_id: str) -> list[str]:
    return [e.kind for e in events if e.leg_id == leg_id]


async def test_sipp_keys_room_and_severity_holds_and_is_bridged_to_the_radiologist(
    node: DialInNode, sipp: Sipp, softphone: Any, tmp_path: Path
) -> None:
    from sip.softphone import Behaviour, RecordingClosed

    tone = write_tone(tmp_path / "tone700.wav", seconds=40.0, freq=TONE_HZ, amplitude=0.3)
    records = tmp_path / "records"
    records.mkdir()
    # rings 4 s, presses 1 7 s after answering (two hold statuses are heard by then), hangs up 20 s after answer
    softphone.set_behaviour(
        Behaviour(
            answer_after=4.0, press="1", press_after=7.0, play=tone, record_dir=records, hangup_after=20.0
        )
    )
    await node.dialin_directory([Radiologist("drpj", "Dr Pj", softphone.uri())])
    tech = sipp(
        "dialin_keyed_674_1.xml", remote=node.extension, service="reaction", timeout=60, extra=["-rtp_echo"]
    )
    await tech.start()

    incident_id = await wait_for(lambda: only_incident(node), 15, "the dial-in to raise an incident")
    await node.wait_event(incident_id, "bridge.started", timeout=30)
    result = await tech.wait(45)
    assert result.ok, result.report()
    recording = await softphone.wait_for(RecordingClosed, timeout=10)
    await node.wait_event(incident_id, "leg.ended", timeout=5)

    events = await node.events(incident_id)
    assert verify_chain(events) == []
    raised = events[0]
    assert raised.kind == "incident.raised"
    assert raised.data["source"] == "sip_dialin"
    assert raised.data["room"] == "MR4"
    assert raised.data["severity"] == "severe"
    legs = await node.legs(incident_id)
    (inbound,) = [leg for leg in legs if leg.direction == Direction.INBOUND]
    (outbound,) = [leg for leg in legs if leg.direction == Direction.OUTBOUND]

    # every step of the caller's leg, in order
    caller = kinds_of(events, inbound.id)
    expected = [
        "leg.created",
        "leg.invite_received",
        "leg.answered",
        "dialin.room_identified",
        "dialin.severity_chosen",
        "dialin.hold_status",
        "dialin.accepted_announced",
        "bridge.started",
        "bridge.media_established",
        "bridge.ended",
        "leg.bye_sent",
        "leg.ended",
    ]
    seen = [k for k in caller if k in expected]
    assert [k for i, k in enumerate(seen) if i == 0 or seen[i - 1] != k] == expected, caller
    digits = [e.data["digit"] for e in events if e.leg_id == inbound.id and e.kind == "leg.dtmf"]
    assert digits == ["6", "7", "4", "#", "1"]
    assert all(
        e.data["method"] == "rfc4733" for e in events if e.kind == "leg.dtmf" and e.leg_id == inbound.id
    )
    identified = next(e for e in events if e.kind == "dialin.room_identified")
    assert identified.data["by"] == "keyed_code" and identified.data["digits"] == "674"
    observed = [
        e.data["observed_mono"] for e in events if e.leg_id == inbound.id and "observed_mono" in e.data
    ]
    assert observed == sorted(observed) and len(observed) >= 8

    # supervised hold: spoken status from the incident's legs, every ~4 s here, and our RTP reaches SIPp
    statuses = [e for e in events if e.kind == "dialin.hold_status"]
    timeline = [(round(e.mono - events[0].mono, 2), e.kind, e.leg_id == inbound.id) for e in events]
    assert len(statuses) >= 2, "\n".join(map(str, timeline))
    assert statuses[0].data["phase"] == "calling"
    assert statuses[0].data["text"].startswith("Doctor Pj is being called, attempt 1")
    gaps = [b.mono - a.mono for a, b in itertools.pairwise(statuses)]
    assert all(3.5 <= g <= 5.5 for g in gaps), gaps
    echoed = [e.data["rtp_received"] for e in statuses]
    assert echoed[1] - echoed[0] > 50, f"SIPp echoed too few of our packets between two statuses: {echoed}"

    # the radiologist accepted and was handed over to the bridge; both directions carried audio
    radio = kinds_of(events, outbound.id)
    for kind in ("leg.answered", "leg.accepted", "leg.handed_over", "leg.bridged", "leg.ended"):
        assert kind in radio, radio
    established = {e.data["direction"] for e in events if e.kind == "bridge.media_established"}
    assert established == {"caller->radiologist", "radiologist->caller"}
    assert "incident.connected" in [e.kind for e in events]
    ended = next(e for e in events if e.kind == "bridge.ended")
    assert ended.data["by"] == "radiologist"
    assert ended.data["seconds"] > 3
    for stats in ended.data["directions"].values():
        assert stats["established"] and stats["frames_out"] > 100 and stats["peak_dbfs"] > -30, ended.data
    accepted = next(e for e in events if e.kind == "incident.accepted")
    bridge_started = next(e for e in events if e.kind == "bridge.started")
    assert bridge_started.mono - accepted.mono < 10

    # the softphone heard its own tone back through bridge -> SIPp echo -> bridge
    heard = wav_tone_seconds(recording.path, TONE_HZ)
    assert heard >= 2.0, f"only {heard:.2f} s of the 700 Hz tone came back through SIPp"


async def test_unknown_room_code_is_asked_again_then_the_caller_is_sent_away(
    node: DialInNode, sipp: Sipp
) -> None:
    await node.dialin_directory([Radiologist("drx", "Dr X", "sip:drx@127.0.0.1:9")])
    tech = sipp("dialin_unknown_room.xml", remote=node.extension, service="reaction", timeout=40)
    await tech.start()
    result = await tech.wait(35)
    assert result.ok, result.report()
    assert "BYE sip:" in result.messages  # we ended the call, SIPp did not time out
    refused = await wait_for(
        lambda: _kinds(node, "dialin.refused"), 5, "the dialin.refused event in the global chain"
    )
    (event,) = refused
    assert event.data["reason"] == "unknown_room"
    steps = [step["kind"] for step in event.data["steps"]]
    assert steps.count("dialin.room_unknown") == 2
    tried = [step["digits"] for step in event.data["steps"] if step["kind"] == "dialin.room_unknown"]
    assert tried == ["5", "8"]
    assert steps[-2:] == ["leg.bye_sent", "leg.ended"]
    assert steps.index("leg.answered") < steps.index("dialin.room_unknown")
    assert await only_incident(node) == ""


async def _kinds(node: DialInNode, kind: str) -> list[Event]:
    return [e for e in await global_events(node) if e.kind == kind]


async def test_caller_id_identifies_the_room_and_exhausted_tree_tells_the_caller_to_call_the_code_team(
    node: DialInNode, softphone: Any
) -> None:
    import socket

    from sip.softphone import Behaviour, Disconnected

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    await node.dialin_directory([Radiologist("drgone", "Dr Gone", f"sip:drgone@127.0.0.1:{dead}")])
    call = await softphone.dial(
        f"sip:reaction@{node.extension}", behaviour=Behaviour(press="2", press_after=1.0)
    )
    incident_id = await wait_for(lambda: only_incident(node), 15, "the dial-in to raise an incident")
    ended = await softphone.wait_for(Disconnected, call=call, timeout=30)
    assert ended.status in (200, 0) or ended.status < 300, ended
    await node.wait_event(incident_id, "leg.ended", timeout=5)
    events = await node.events(incident_id)
    assert verify_chain(events) == []
    assert events[0].data["severity"] == "moderate"
    assert events[0].data["room"] == "CT2"
    identified = next(e for e in events if e.kind == "dialin.room_identified")
    assert identified.data["by"] == "caller_id"
    assert "incident.exhausted" in [e.kind for e in events]
    announced = next(e for e in events if e.kind == "dialin.exhausted_announced")
    assert announced.data["fallback"] == FALLBACK
    legs = await node.legs(incident_id)
    (inbound,) = [leg for leg in legs if leg.direction == Direction.INBOUND]
    caller = kinds_of(events, inbound.id)
    assert (
        caller.index("dialin.exhausted_announced") < caller.index("leg.bye_sent") < caller.index("leg.ended")
    )
    bye = next(e for e in events if e.kind == "leg.bye_sent" and e.leg_id == inbound.id)
    assert bye.data["reason"] == "exhausted"
    # the message took its time to be spoken before the BYE (it is ~8 s long)
    assert bye.mono - announced.mono > 4


async def test_a_call_to_another_user_is_refused_with_404(node: DialInNode) -> None:
    from comms.clock import SystemClock
    from sip.ua import UaConfig, UserAgent

    peer = await UserAgent.start(SystemClock(), UaConfig(tcp_port=None))
    try:
        call = await peer.dial(f"sip:someone@{node.extension}", from_uri="sip:tech@127.0.0.1", ring_timeout=5)
        ended = await call.wait_ended()
        assert (ended.status, ended.by) == (404, "remote")
    finally:
        await peer.close()
    assert await only_incident(node) == ""
