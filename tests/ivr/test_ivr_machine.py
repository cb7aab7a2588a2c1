"""Every path of the alert menu under controlled time (a plain float ``now`` and a FakeClock-driven loop)."""

from __future__ import annotations

import functools

import pytest

from comms.clock import FakeClock, TimerHandle
from ivr.machine import (
    Action,
    CheckDigits,
    Finish,
    MenuMachine,
    PlayPrompt,
    State,
    StopPrompt,
)
from ivr.menu import (
    ALREADY_ACCEPTED,
    ChoiceStep,
    CollectStep,
    End,
    Goto,
    IvrError,
    Menu,
    Outcome,
    alert_menu,
    alert_variables,
    message_text,
    speakable_code,
    speakable_room,
)

ALERT_TEXT = (
    "Contrast reaction, severe, room CT 2, Northside Imaging. Incident code K 7 R. "
    "Press 1 to accept, 2 to decline."
)
VARS = alert_variables(severity="severe", room="CT2", site="Northside Imaging", code="K7R")


def machine(*, require_pin: bool = False) -> MenuMachine:
    return MenuMachine(alert_menu(require_pin=require_pin), VARS)


def only(actions: list[Action], kind: type) -> list[Action]:
    return [a for a in actions if isinstance(a, kind)]


def test_answer_speaks_the_alert_with_speakable_room_and_code() -> None:
    m = machine()
    actions = m.start(0.0)
    assert actions == [PlayPrompt(ALERT_TEXT, "alert", 1)]
    assert m.state is State.PLAYING
    assert m.next_deadline() is None  # the timeout runs from the end of the prompt


def test_press_1_after_prompt_accepts_with_digits() -> None:
    m = machine()
    m.start(0.0)
    assert m.prompt_finished(7.0, play_id=1) == []
    assert m.next_deadline() == 12.0
    [finish] = m.press_digit("1", "rfc4733", 8.5)
    assert isinstance(finish, Finish)
    assert finish.outcome is Outcome.ACCEPT
    assert finish.digits == "1"
    assert finish.presses[0].method == "rfc4733"
    assert finish.presses[0].at == 8.5
    assert m.next_deadline() is None


def test_press_2_declines() -> None:
    m = machine()
    m.start(0.0)
    m.prompt_finished(7.0)
    [finish] = m.press_digit("2", "info", 9.0)
    assert isinstance(finish, Finish)
    assert (finish.outcome, finish.step, finish.digits) == (Outcome.DECLINE, "alert", "2")


def test_barge_in_stops_the_prompt_and_accepts() -> None:
    m = machine()
    m.start(0.0)
    actions = m.press_digit("1", "rfc4733", 2.0)
    assert actions[0] == StopPrompt(1)
    assert isinstance(actions[1], Finish)
    assert actions[1].outcome is Outcome.ACCEPT
    # the adapter may still report the stopped prompt as finished: absorbed
    assert m.prompt_finished(2.1, play_id=1) == []


def test_silence_reprompts_twice_then_no_input() -> None:
    m = machine()
    now = 0.0
    plays = m.start(now)
    for n in range(2):
        now += 7.0
        m.prompt_finished(now)
        assert m.timer(now + 4.9) == []  # not yet due
        now += 5.0
        plays = m.timer(now)
        assert plays == [PlayPrompt(ALERT_TEXT, "alert", n + 2)]
    now += 7.0
    m.prompt_finished(now)
    now += 5.0
    [finish] = m.timer(now)
    assert isinstance(finish, Finish)
    assert finish.outcome is Outcome.NO_INPUT
    assert finish.digits == ""
    assert m.state is State.FINISHED


def test_invalid_digit_apologises_and_reprompts_counting_a_retry() -> None:
    m = machine()
    m.start(0.0)
    m.prompt_finished(7.0)
    actions = m.press_digit("9", "rfc4733", 8.0)
    assert actions == [PlayPrompt("Sorry, that is not an option.", "alert.invalid", 2)]
    assert m.prompt_finished(9.5, play_id=2) == [PlayPrompt(ALERT_TEXT, "alert", 3)]
    m.prompt_finished(16.0, play_id=3)
    [finish] = m.press_digit("1", "rfc4733", 17.0)
    assert isinstance(finish, Finish)
    assert finish.outcome is Outcome.ACCEPT
    assert finish.digits == "91"


def test_three_invalid_digits_end_invalid() -> None:
    m = machine()
    m.start(0.0)
    actions: list[Action] = []
    for i, digit in enumerate("9*#"):
        actions = m.press_digit(digit, "rfc4733", float(i))  # barge-in each time
    assert isinstance(actions[-1], Finish)
    assert actions[-1].outcome is Outcome.INVALID
    assert actions[-1].digits == "9*#"
    assert only(actions, StopPrompt) == [StopPrompt(3)]  # the second apology, barged in on


def test_silence_and_invalid_share_one_retry_budget_last_failure_names_outcome() -> None:
    m = machine()
    m.start(0.0)
    m.prompt_finished(7.0)
    m.timer(12.0)  # silence: retry 1
    m.prompt_finished(19.0)
    m.press_digit("5", "rfc4733", 20.0)  # invalid: retry 2
    m.prompt_finished(21.0)
    m.prompt_finished(28.0)
    [finish] = m.timer(33.0)  # silence: budget spent
    assert isinstance(finish, Finish)
    assert finish.outcome is Outcome.NO_INPUT


def test_barge_in_during_apology_skips_the_rest_of_the_queue() -> None:
    m = machine()
    m.start(0.0)
    m.press_digit("7", "rfc4733", 1.0)  # StopPrompt(1), play apology (2)
    actions = m.press_digit("2", "rfc4733", 1.5)
    assert actions[0] == StopPrompt(2)
    assert isinstance(actions[1], Finish)
    assert actions[1].outcome is Outcome.DECLINE
    assert m.prompt_finished(2.0, play_id=2) == []


def test_hangup_in_any_state_finishes_hung_up_once() -> None:
    for steps in range(4):
        m = machine(require_pin=True)
        m.start(0.0)
        if steps >= 1:
            m.prompt_finished(7.0)
        if steps >= 2:
            m.press_digit("1", "rfc4733", 8.0)  # -> PIN prompt
        if steps >= 3:
            m.press_digit("4", "rfc4733", 9.0)  # collecting
        [finish] = m.hangup(10.0)
        assert isinstance(finish, Finish)
        assert finish.outcome is Outcome.HUNG_UP
        assert m.hangup(11.0) == []
        assert m.press_digit("1", "rfc4733", 12.0) == []
        assert m.timer(100.0) == []
        assert m.next_deadline() is None


def test_start_twice_is_an_error_naming_the_state() -> None:
    m = machine()
    m.start(0.0)
    with pytest.raises(IvrError, match="in state playing: expected idle"):
        m.start(1.0)


def test_non_dtmf_digit_is_refused() -> None:
    m = machine()
    m.start(0.0)
    with pytest.raises(IvrError, match="cannot accept digit 'x'"):
        m.press_digit("x", "rfc4733", 1.0)


# --- PIN step -------------------------------------------------------------------------------------


def pin_machine_at_pin_prompt() -> MenuMachine:
    m = machine(require_pin=True)
    m.start(0.0)
    m.prompt_finished(7.0)
    actions = m.press_digit("1", "rfc4733", 8.0)
    assert actions == [PlayPrompt("Enter your PIN followed by pound.", "pin", 2)]
    return m


def test_pin_until_pound_then_checked_ok_accepts_and_masks_the_pin() -> None:
    m = pin_machine_at_pin_prompt()
    m.prompt_finished(10.0)
    for i, d in enumerate("4321"):
        assert m.press_digit(d, "rfc4733", 11.0 + i) == []
        assert m.state is State.COLLECTING
        assert m.next_deadline() == 11.0 + i + 5.0
    assert m.press_digit("#", "rfc4733", 15.0) == [CheckDigits("pin", "4321", "pin")]
    assert m.state is State.CHECKING
    assert m.next_deadline() is None
    assert m.press_digit("9", "rfc4733", 15.5) == []  # ignored while the check runs
    [finish] = m.pin_checked(True, 16.0)
    assert isinstance(finish, Finish)
    assert finish.outcome is Outcome.ACCEPT
    assert finish.digits == "1xxxx#"  # the PIN never reaches the evidence
    assert finish.step == "pin"


def test_pin_barge_in_then_inter_digit_timeout_submits() -> None:
    m = pin_machine_at_pin_prompt()
    actions = m.press_digit("7", "rfc4733", 9.0)
    assert actions == [StopPrompt(2)]
    m.press_digit("7", "rfc4733", 10.0)
    assert m.timer(14.9) == []
    assert m.timer(15.0) == [CheckDigits("pin", "77", "pin")]


def test_wrong_pin_apologises_reprompts_then_invalid_after_retries() -> None:
    m = pin_machine_at_pin_prompt()
    now = 10.0
    for attempt in range(3):
        m.prompt_finished(now)
        m.press_digit("0", "rfc4733", now + 1)
        assert m.press_digit("#", "rfc4733", now + 2) == [CheckDigits("pin", "0", "pin")]
        actions = m.pin_checked(False, now + 3)
        if attempt < 2:
            assert actions[0] == PlayPrompt("Sorry, that PIN is not correct.", "pin.invalid", 3 + 2 * attempt)
            assert m.prompt_finished(now + 4) == [
                PlayPrompt("Enter your PIN followed by pound.", "pin", 4 + 2 * attempt)
            ]
        now += 10
    assert isinstance(actions[0], Finish)
    assert actions[0].outcome is Outcome.INVALID


def test_pin_silence_reprompts_then_no_input() -> None:
    m = pin_machine_at_pin_prompt()
    now = 10.0
    for _ in range(2):
        m.prompt_finished(now)
        assert only(m.timer(now + 8.0), PlayPrompt)
        now += 10.0
    m.prompt_finished(now)
    [finish] = m.timer(now + 8.0)
    assert isinstance(finish, Finish)
    assert finish.outcome is Outcome.NO_INPUT


def test_pound_alone_counts_as_silence() -> None:
    m = pin_machine_at_pin_prompt()
    m.prompt_finished(10.0)
    assert m.press_digit("#", "rfc4733", 11.0) == [PlayPrompt("Enter your PIN followed by pound.", "pin", 3)]


def test_max_digits_submits_without_pound() -> None:
    menu = Menu(
        name="m",
        steps=(CollectStep(id="pin", prompt="PIN", on_success=End(Outcome.ACCEPT), max_digits=3),),
        initial="pin",
    )
    m = MenuMachine(menu, {})
    m.start(0.0)
    m.press_digit("1", "info", 1.0)
    m.press_digit("2", "info", 1.1)
    assert m.press_digit("3", "info", 1.2) == [CheckDigits("pin", "123", "pin")]


def test_pin_checked_outside_checking_is_an_error() -> None:
    m = machine()
    m.start(0.0)
    with pytest.raises(IvrError, match="in state playing: expected checking"):
        m.pin_checked(True, 1.0)


# --- under a FakeClock: the adapter loop in miniature ---------------------------------------------


class Harness:
    """What an adapter does: feed inputs with clock time, perform actions, re-arm one timer."""

    def __init__(self, m: MenuMachine, clock: FakeClock, prompt_seconds: float) -> None:
        self.m, self.clock, self.prompt_seconds = m, clock, prompt_seconds
        self.log: list[tuple[float, Action]] = []
        self.finished: Finish | None = None
        self._timer: TimerHandle | None = None
        self._prompt: TimerHandle | None = None

    def perform(self, actions: list[Action]) -> None:
        for a in actions:
            self.log.append((self.clock.monotonic(), a))
            match a:
                case PlayPrompt(play_id=pid):
                    ended = functools.partial(self._ended, pid)
                    self._prompt = self.clock.call_later(self.prompt_seconds, ended)
                case StopPrompt():
                    if self._prompt is not None:
                        self._prompt.cancel()
                case Finish():
                    self.finished = a
        if self._timer is not None:
            self._timer.cancel()
        deadline = self.m.next_deadline()
        if deadline is not None:
            self._timer = self.clock.call_later(deadline - self.clock.monotonic(), self._tick)

    def _ended(self, pid: int) -> None:
        self.perform(self.m.prompt_finished(self.clock.monotonic(), play_id=pid))

    def _tick(self) -> None:
        self.perform(self.m.timer(self.clock.monotonic()))


def test_fake_clock_silent_callee_hears_three_prompts_then_no_input() -> None:
    clock = FakeClock()
    h = Harness(machine(), clock, prompt_seconds=6.0)
    t0 = clock.monotonic()
    h.perform(h.m.start(t0))
    clock.advance(60.0)
    assert h.finished is not None
    assert h.finished.outcome is Outcome.NO_INPUT
    plays = [t - t0 for t, a in h.log if isinstance(a, PlayPrompt)]
    assert plays == [0.0, 11.0, 22.0]  # 6 s prompt + 5 s timeout
    assert [t - t0 for t, a in h.log if isinstance(a, Finish)] == [33.0]


def test_fake_clock_accept_during_second_play() -> None:
    clock = FakeClock()
    h = Harness(machine(), clock, prompt_seconds=6.0)
    t0 = clock.monotonic()
    h.perform(h.m.start(t0))
    clock.advance(13.0)  # second play started at 11
    h.perform(h.m.press_digit("1", "rfc4733", clock.monotonic()))
    clock.advance(60.0)
    assert h.finished is not None
    assert h.finished.outcome is Outcome.ACCEPT
    assert [a for _, a in h.log if isinstance(a, StopPrompt)] == [StopPrompt(2)]
    assert len([a for _, a in h.log if isinstance(a, PlayPrompt)]) == 2


# --- menu data ------------------------------------------------------------------------------------


def test_speakable_forms() -> None:
    assert speakable_room("CT2") == "CT 2"
    assert speakable_room("MR-10b") == "MR 10 b"
    assert speakable_code("k7r") == "K 7 R"


def test_already_accepted_message() -> None:
    text = message_text(alert_menu(), "already_accepted", {"name": "Patel"})
    assert text == ALREADY_ACCEPTED.format(name="Patel") == "Doctor Patel has already accepted. Thank you."
    with pytest.raises(IvrError, match="needs variable 'name'"):
        message_text(alert_menu(), "already_accepted", {})
    with pytest.raises(IvrError, match="no message 'nope'"):
        message_text(alert_menu(), "nope", {})


def test_missing_variable_is_refused_at_construction() -> None:
    with pytest.raises(IvrError, match=r"needs variables \['code'\]"):
        MenuMachine(alert_menu(), {k: v for k, v in VARS.items() if k != "code"})


@pytest.mark.parametrize(
    ("steps", "initial", "message"),
    [
        ((ChoiceStep("a", "x", {"1": Goto("b")}),), "a", "unknown step 'b'"),
        ((ChoiceStep("a", "x", {"1": End(Outcome.ACCEPT)}),), "z", "initial step 'z'"),
        ((ChoiceStep("a", "x", {"Q": End(Outcome.ACCEPT)}),), "a", r"DTMF digits .* got \['Q'\]"),
        ((ChoiceStep("a", "x", {"1": End(Outcome.ACCEPT)}, timeout_s=0),), "a", "timeout_s > 0"),
        (
            (
                ChoiceStep("a", "x", {"1": End(Outcome.ACCEPT)}),
                ChoiceStep("a", "y", {"1": End(Outcome.ACCEPT)}),
            ),
            "a",
            "unique",
        ),
    ],
)
def test_menu_validation(steps: tuple[ChoiceStep, ...], initial: str, message: str) -> None:
    with pytest.raises(IvrError, match=message):
        Menu(name="bad", steps=steps, initial=initial)


def test_already_accepted_does_not_say_doctor_twice() -> None:
    from ivr.menu import alert_menu, message_text

    text = message_text(alert_menu(), "already_accepted", {"name": "Dr. Ada Lee"})
    assert text == "Doctor Ada Lee has already accepted. Thank you."
