"""The dial-in's pure parts (menu, dial plan, hold status) and the leg bridge between two real RTP sessions."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from comms.clock import SystemClock
from comms.errors import ValidationError
from escalation.channel import LegOrder
from escalation.dialin import DialInSettings, chain_accepted
from ivr.dialin import (
    MESSAGES,
    dial_plan,
    dialin_menu,
    hold_status,
    keypad_code,
    same_phone,
    severity_from,
    speakable_number,
    spoken_name,
)
from ivr.machine import CheckDigits, Finish, MenuMachine, PlayPrompt
from ivr.menu import IvrError, Outcome
from media.errors import MediaError
from media.legbridge import LegBridge, _Direction
from media.sdp import NegotiatedMedia
from media.session import RtpSession
from tests.support import write_tone

# --- dial plan ----------------------------------------------------------------------------------------------


def test_keypad_spelling_follows_e161() -> None:
    assert keypad_code("CT2") == "282"
    assert keypad_code("MR4") == "674"
    assert keypad_code("us-1") == "871"
    assert keypad_code("PQRS TUV WXYZ") == "77778889999"


def test_dial_plan_spelled_ambiguous_and_configured_codes() -> None:
    plan = dial_plan(["CT2", "AT2", "MR4"], {"11": "CT2", "99": "GONE"})
    assert plan.lookup("674") == "MR4"
    assert plan.lookup("282") is None  # CT2 and AT2 both spell 282: reachable by neither
    assert plan.ambiguous == {"282": ("AT2", "CT2")}
    assert plan.lookup("11") == "CT2"  # a configured code wins
    assert plan.lookup("99") is None  # configured for a room that is not active
    assert plan.code_of("CT2") == "11" and plan.code_of("AT2") is None
    with pytest.raises(IvrError, match="dial code '1a'"):
        dial_plan(["CT2"], {"1a": "CT2"})


def test_caller_id_matches_user_and_host_only() -> None:
    assert same_phone(("phone", "127.0.0.1"), ("phone", "127.0.0.1"))
    assert same_phone(("ct2", "PBX.example.org"), ("ct2", "pbx.example.org"))
    assert not same_phone(("ct3", "pbx.example.org"), ("ct2", "pbx.example.org"))
    assert not same_phone((None, "pbx.example.org"), (None, "pbx.example.org"))


def test_spoken_values() -> None:
    assert spoken_name("Dr. Ada Lee") == "Ada Lee"
    assert spoken_name("Doctor Pj") == "Pj"
    assert spoken_name("Dr") == "Dr"
    assert speakable_number("+1 (312) 555-0100") == "1 3 1 2 5 5 5 0 1 0 0"
    assert speakable_number("the code team") == "the code team"


# --- the menu -----------------------------------------------------------------------------------------------


def _walk(machine: MenuMachine, presses: str, rooms: dict[str, str]) -> Finish:
    """Drive the machine like the adapter does: prompts end at once, room checks against ``rooms``."""
    now = 0.0
    actions = machine.start(now)
    queue = list(presses)
    while True:
        finish = next((a for a in actions if isinstance(a, Finish)), None)
        if finish is not None:
            return finish
        check = next((a for a in actions if isinstance(a, CheckDigits)), None)
        if check is not None:
            room = rooms.get(check.digits)
            if room is not None:
                machine.variables["room"] = room
            actions = machine.pin_checked(room is not None, now)
            continue
        play = next((a for a in actions if isinstance(a, PlayPrompt)), None)
        if play is not None:
            actions = machine.prompt_finished(now, play.play_id)
            continue
        now += 0.5
        if queue:
            actions = machine.press_digit(queue.pop(0), "rfc4733", now)
        else:
            now = machine.next_deadline() or now
            actions = machine.timer(now)


@pytest.mark.parametrize(
    ("digit", "severity"), [("1", "severe"), ("2", "moderate"), ("3", "mild"), ("9", "unknown")]
)
def test_keyed_room_then_severity(digit: str, severity: str) -> None:
    machine = MenuMachine(dialin_menu(room_known=False), {"room": ""})
    finish = _walk(machine, f"674#{digit}", {"674": "M R 4"})
    assert finish.outcome is Outcome.ACCEPT and finish.step == "severity"
    assert severity_from(finish) == severity
    assert finish.digits == f"674#{digit}"  # room codes are not secret: they are evidence


def test_unknown_room_is_asked_again_then_the_menu_ends_invalid() -> None:
    machine = MenuMachine(dialin_menu(room_known=False, retries=1), {"room": ""})
    finish = _walk(machine, "5#8#", {"674": "M R 4"})
    assert finish.outcome is Outcome.INVALID and finish.step == "room"
    assert severity_from(finish) == "unknown"


def test_caller_id_starts_at_severity_and_no_choice_still_means_unknown() -> None:
    machine = MenuMachine(dialin_menu(room_known=True, retries=1), {"room": "C T 2"})
    actions = machine.start(0.0)
    first = actions[0]
    assert isinstance(first, PlayPrompt) and first.text.startswith("Room C T 2. Press 1 for a severe")
    finish = _walk(MenuMachine(dialin_menu(room_known=True, retries=1), {"room": "C T 2"}), "7", {})
    assert finish.outcome in (Outcome.INVALID, Outcome.NO_INPUT) and finish.step == "severity"
    assert severity_from(finish) == "unknown"  # the adapter raises the incident anyway


def test_every_message_renders() -> None:
    menu = dialin_menu(room_known=False)
    variables = {"room": "M R 4", "severity": "severe", "name": "Lee", "attempt": "2", "fallback": "5 5 5"}
    for message_id, template in MESSAGES.items():
        assert menu.messages[message_id] == template
        text = template.format_map(variables)
        assert "{" not in text and text.strip()


# --- hold status --------------------------------------------------------------------------------------------


@dataclass
class Ev:
    kind: str
    data: dict[str, Any]
    leg_id: str | None = None


def created(leg: str, person: str, name: str) -> Ev:
    return Ev("leg.created", {"person_id": person, "person": name, "tier": 1}, leg)


def test_hold_status_follows_the_legs() -> None:
    menu = dialin_menu(room_known=False)
    events = [Ev("incident.raised", {}), Ev("leg.created", {"direction": "inbound"}, "in")]
    assert hold_status(events).phase == "paging"
    assert hold_status(events).text(menu, fallback="x").startswith("We are paging")
    events.append(created("l1", "p1", "Dr Lee"))
    status = hold_status(events)
    assert (status.phase, status.names, status.attempt) == ("calling", ("Dr Lee",), 1)
    assert status.text(menu, fallback="x") == "Doctor Lee is being called, attempt 1."
    events += [Ev("leg.ended", {"status": 480}, "l1"), created("l2", "p2", "Dr Kim")]
    assert hold_status(events).names == ("Dr Kim",)
    events += [Ev("leg.ended", {}, "l2"), created("l3", "p1", "Dr Lee")]
    status = hold_status(events)
    assert (status.names, status.attempt) == (("Dr Lee",), 2)
    assert status.text(menu, fallback="x") == "Doctor Lee is being called, attempt 2."
    events.append(Ev("incident.accepted", {"person": "Dr Lee"}))
    assert hold_status(events).text(menu, fallback="x") == "Doctor Lee has accepted. Connecting you now."
    assert "call 5 5 5" in hold_status([Ev("incident.exhausted", {})]).text(menu, fallback="5 5 5")


def test_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="status_interval_s=0"):
        DialInSettings(status_interval_s=0)
    with pytest.raises(ValidationError, match="users is empty"):
        DialInSettings(users=frozenset())


async def test_chain_accepted_offers_in_turn() -> None:
    seen: list[str] = []

    async def no(order: LegOrder, call: Any) -> bool:
        seen.append("no")
        return False

    async def yes(order: LegOrder, call: Any) -> bool:
        seen.append("yes")
        return True

    order = LegOrder("l", "i", "C", "severe", "S", "R", "R", "p", "P", "sip", "sip:x@y", 10.0, 1)
    assert await chain_accepted(no, yes, no)(order, object()) is True  # type: ignore[arg-type]
    assert seen == ["no", "yes"]
    assert await chain_accepted(no)(order, object()) is False  # type: ignore[arg-type]


# --- the leg bridge -----------------------------------------------------------------------------------------


def test_direction_queue_is_bounded() -> None:
    source = SimpleNamespace(stats=SimpleNamespace(packets_received=0))
    d = _Direction("a->b", source, SystemClock(), max_frames=3)  # type: ignore[arg-type]
    frame = np.full(160, 1000, dtype=np.int16)
    for _ in range(10):
        d.push(frame)
    stats = d.stats()
    assert (stats.frames_in, stats.dropped, len(d.queue)) == (10, 7, 3)
    assert not stats.established  # no RTP packet arrived since the bridge started
    assert d.pop() is frame and d.pop() is frame and d.pop() is frame and d.pop() is None
    assert d.stats().underruns == 1 and d.stats().frames_out == 3
    assert math.isclose(d.stats().peak_dbfs, -30.3, abs_tol=0.2)


def _media(port: int) -> NegotiatedMedia:
    return NegotiatedMedia("127.0.0.1", port, "PCMU", 0, 101, 20, "sendrecv")


async def test_bridge_carries_audio_both_ways_between_two_rtp_sessions(tmp_path: Path) -> None:
    clock = SystemClock()
    # phone A <-> caller leg (ours) | bridge | radiologist leg (ours) <-> phone B
    phone_a, caller, radio, phone_b = [await RtpSession.open(clock, "127.0.0.1") for _ in range(4)]
    sessions = [phone_a, caller, radio, phone_b]
    try:
        phone_a.start(_media(caller.local_port))
        caller.start(_media(phone_a.local_port))
        radio.start(_media(phone_b.local_port))
        phone_b.start(_media(radio.local_port))
        bridge = LegBridge(clock, caller, radio, names=("caller", "radiologist"))
        with pytest.raises(MediaError, match="expected two different legs"):
            LegBridge(clock, caller, caller)
        bridge.start()
        with pytest.raises(MediaError, match="expected idle"):
            bridge.start()
        tone_a = asyncio.ensure_future(
            phone_a.play(write_tone(tmp_path / "a.wav", seconds=1.5, freq=400, amplitude=0.3))
        )
        tone_b = asyncio.ensure_future(
            phone_b.play(write_tone(tmp_path / "b.wav", seconds=1.5, freq=900, amplitude=0.3))
        )
        await asyncio.sleep(1.2)
        assert phone_b.energy_dbfs(0.5) > -25, "phone B hears nothing from phone A"
        assert phone_a.energy_dbfs(0.5) > -25, "phone A hears nothing from phone B"
        assert bridge.both_established
        ab, ba = bridge.snapshot()
        assert ab.name == "caller->radiologist" and ba.name == "radiologist->caller"
        assert ab.frames_out > 30 and ba.frames_out > 30
        assert ab.dropped + ba.dropped < 10, (ab, ba)
        assert ab.established_mono is not None and bridge.started_mono is not None
        assert ab.established_mono - bridge.started_mono < 0.5
        await asyncio.gather(tone_a, tone_b)
        bridge.stop()
        bridge.stop()  # idempotent
        frames = bridge.snapshot()[0].frames_out
        await asyncio.sleep(0.2)
        assert bridge.snapshot()[0].frames_out == frames  # detached: nothing crosses any more
    finally:
        for session in sessions:
            await session.close()


async def test_bridge_refuses_sessions_that_do_not_run() -> None:
    clock = SystemClock()
    a, b = await RtpSession.open(clock, "127.0.0.1"), await RtpSession.open(clock, "127.0.0.1")
    try:
        with pytest.raises(MediaError, match="its RTP session is idle, expected running"):
            LegBridge(clock, a, b).start()
    finally:
        await a.close()
        await b.close()


def test_peak_dbfs_of_a_full_scale_frame() -> None:
    source = SimpleNamespace(stats=SimpleNamespace(packets_received=0))
    d = _Direction("x", source, SystemClock(), max_frames=1)  # type: ignore[arg-type]
    d.push(np.full(160, 32767, dtype=np.int16))
    assert math.isclose(d.stats().peak_dbfs, 0.0, abs_tol=0.1)
