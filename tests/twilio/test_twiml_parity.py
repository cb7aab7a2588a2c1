"""One menu, two renderers: a script of keys and silences gives the same Finish through the SIP-style driver
(the MenuMachine fed with prompt ends, digits and timer firings) and through TwiML + Gather webhooks."""

from __future__ import annotations

from collections import deque

import pytest

from ivr.machine import CheckDigits, Finish, MenuMachine, PlayPrompt, State
from ivr.menu import ChoiceStep, CollectStep, End, Goto, Menu, Outcome, alert_menu, alert_variables
from ivr.twiml import TwimlCall, Voice, hang_up, reply_message, say_and_hang_up
from tests.twilio.twiml_caller import gather_input, parse

PIN = "1234"
VARS = alert_variables(severity="severe", room="CT2", site="Northside Imaging", code="K7R")


def two_level_menu() -> Menu:
    return Menu(
        name="triage",
        initial="top",
        steps=(
            ChoiceStep(
                id="top",
                prompt="Press 1 for options, 2 to decline, # to accept.",
                choices={"1": Goto("more"), "2": End(Outcome.DECLINE), "#": End(Outcome.ACCEPT)},
                retries=1,
            ),
            ChoiceStep(
                id="more",
                prompt="Press 9 to accept, 0 to go back.",
                choices={"9": Goto("pin"), "0": Goto("top")},
                retries=0,
            ),
            CollectStep(id="pin", prompt="PIN then pound.", on_success=End(Outcome.ACCEPT), max_digits=4),
        ),
    )


MENUS = {
    "alert": lambda: alert_menu(),
    "alert_pin": lambda: alert_menu(require_pin=True),
    "triage": two_level_menu,
}

SCRIPTS = [
    ("alert", "1"),
    ("alert", "2"),
    ("alert", "T1"),
    ("alert", "TT2"),
    ("alert", "TTT"),
    ("alert", "9T1"),
    ("alert", "99"),
    ("alert", "9#*"),
    ("alert", ""),
    ("alert", "T"),
    ("alert_pin", "11234#"),
    ("alert_pin", "11234"),
    ("alert_pin", "112T"),
    ("alert_pin", "11234T"),
    ("alert_pin", "1#1234#"),
    ("alert_pin", "10000#1234#"),
    ("alert_pin", "10000#0000#0000#"),
    ("alert_pin", "1TTT"),
    ("alert_pin", "2"),
    ("alert_pin", "112"),
    ("triage", "#"),
    ("triage", "19" + PIN),
    ("triage", "10#"),
    ("triage", "1T"),
    ("triage", "107"),
    ("triage", "3T"),
    ("triage", "33"),
    ("triage", "191234T"),
]


def outcome(finish: Finish | None) -> tuple[str, str, str] | None:
    return None if finish is None else (finish.outcome.value, finish.digits, finish.step)


def sip_driver(menu: Menu, script: str, *, barge_in: bool) -> Finish | None:
    """How the SIP renderer feeds the machine: prompt ends, digits (during or after prompts), timer firings."""
    m = MenuMachine(menu, VARS)
    now = 0.0
    actions = m.start(now)
    keys = deque(script)
    while True:
        for action in actions:
            if isinstance(action, Finish):
                return action
        check = next((a for a in actions if isinstance(a, CheckDigits)), None)
        if check is not None:
            actions = m.pin_checked(check.digits == PIN, now)
            continue
        if not keys:
            return next((a for a in m.hangup(now) if isinstance(a, Finish)), None)
        key = keys.popleft()
        now += 1.0
        if key == "T":
            while m.state is State.PLAYING:
                m.prompt_finished(now)
            deadline = m.next_deadline()
            assert deadline is not None
            now = deadline
            actions = m.timer(now)
        else:
            if not barge_in:
                while m.state is State.PLAYING:
                    m.prompt_finished(now)
            actions = m.press_digit(key, "rfc4733", now)


def twiml_driver(menu: Menu, script: str, *, repeat_each: bool) -> tuple[Finish | None, list[str]]:
    """Twilio's part: render each turn, let the caller's keys fill the Gather, post the action (maybe twice)."""
    call = TwimlCall(menu, VARS, action_url="https://comms.example.test/twilio/gather/leg-1")
    now = 0.0
    turn = call.start(now)
    keys = deque(script)
    spoken: list[str] = []
    while True:
        if turn.finish is not None:
            call.close(say_and_hang_up(["Goodbye."]))
            return turn.finish, spoken
        if turn.check is not None:
            turn = call.pin_checked(turn.check.digits == PIN, now)
            continue
        assert turn.twiml is not None
        doc = parse(turn.twiml)
        assert doc.gather is not None and doc.gather.action_on_empty
        spoken += doc.spoken
        posted = gather_input(doc.gather, keys)
        now += 1.0
        if posted is None:
            return call.hangup(now), spoken
        digits, key = posted
        number = doc.gather.turn
        turn = call.gather(number, digits, key, now)
        if (
            repeat_each and turn.twiml is not None
        ):  # Twilio retried the webhook: same answer, machine not fed twice
            assert call.gather(number, digits, key, now) == turn


@pytest.mark.parametrize(("menu_name", "script"), SCRIPTS)
@pytest.mark.parametrize("barge_in", [True, False])
def test_same_menu_same_decision_under_both_renderers(menu_name: str, script: str, barge_in: bool) -> None:
    menu = MENUS[menu_name]()
    via_sip = sip_driver(menu, script, barge_in=barge_in)
    via_twiml, _spoken = twiml_driver(menu, script, repeat_each=not barge_in)
    assert via_sip is not None and via_twiml is not None
    if via_sip.outcome is Outcome.HUNG_UP:
        # a caller who hangs up inside a Gather: Twilio posts no action, so the keys of that Gather are unknown
        assert (via_twiml.outcome, via_twiml.step) == (via_sip.outcome, via_sip.step)
        assert via_sip.digits.startswith(via_twiml.digits)
    else:
        assert outcome(via_twiml) == outcome(via_sip)


def test_parity_scripts_reach_every_outcome() -> None:
    seen = {outcome(sip_driver(MENUS[m](), s, barge_in=True))[0] for m, s in SCRIPTS}  # type: ignore[index]
    assert seen == {o.value for o in Outcome}


def test_gather_twiml_shape_for_a_choice_and_a_pin_step() -> None:
    call = TwimlCall(alert_menu(require_pin=True), VARS, action_url="https://h.test/twilio/gather/L1")
    first = parse(call.start(0.0).twiml or "")
    assert first.gather is not None
    assert (first.gather.num_digits, first.gather.finish_on_key, first.gather.timeout) == (1, "", 5)
    assert first.gather.action == "https://h.test/twilio/gather/L1?turn=1"
    assert first.spoken == [
        "Contrast reaction, severe, room CT 2, Northside Imaging. Incident code K 7 R. "
        "Press 1 to accept, 2 to decline."
    ]
    pin = parse(call.gather(1, "1", "", 1.0).twiml or "")
    assert pin.gather is not None
    assert (pin.gather.num_digits, pin.gather.finish_on_key, pin.gather.turn) == (8, "#", 2)
    assert pin.spoken == ["Enter your PIN followed by pound."]


def test_invalid_digit_says_sorry_then_the_prompt_in_one_gather() -> None:
    call = TwimlCall(alert_menu(), VARS, action_url="https://h.test/g")
    call.start(0.0)
    doc = parse(call.gather(1, "7", "", 1.0).twiml or "")
    assert doc.spoken[0] == "Sorry, that is not an option."
    assert doc.spoken[1].startswith("Contrast reaction")


def test_play_is_used_when_an_audio_url_is_known() -> None:
    urls = {"Press 9 to accept, 0 to go back.": "https://h.test/prompts/abc.wav"}
    call = TwimlCall(
        two_level_menu(), VARS, action_url="https://h.test/g", audio_url=urls.get, voice=Voice("man")
    )
    first = call.start(0.0).twiml or ""
    assert '<Say voice="man" language="en-US">Press 1 for options' in first
    second = call.gather(1, "1", "", 1.0).twiml or ""
    assert "<Play>https://h.test/prompts/abc.wav</Play>" in second


def test_a_stale_or_future_turn_is_refused() -> None:
    from ivr.menu import IvrError

    call = TwimlCall(alert_menu(), VARS, action_url="https://h.test/g")
    call.start(0.0)
    with pytest.raises(IvrError, match="turn 5"):
        call.gather(5, "1", "", 1.0)


def test_small_documents() -> None:
    assert parse(hang_up()).hangup
    closing = parse(say_and_hang_up(["Thank you."]))
    assert closing.spoken == ["Thank you."] and closing.hangup
    assert parse(reply_message("Accepted K7R")).messages == ["Accepted K7R"]
    assert parse(reply_message(None)).messages == []
    assert isinstance(PlayPrompt("x", "y", 1), PlayPrompt)
