"""The menu machine: a sans-I/O walk of an :class:`ivr.menu.Menu`.

Inputs (each takes ``now``, float seconds of a monotonic clock, and returns the actions to perform):
``start``, ``prompt_finished``, ``press_digit``, ``timer``, ``pin_checked``, ``hangup``. Actions:
:class:`PlayPrompt` (text + id + ``play_id``), :class:`StopPrompt`, :class:`CheckDigits` (ask the adapter to
verify collected digits, answer with ``pin_checked``), :class:`Finish` (outcome + the digits pressed).
``next_deadline()`` says when ``timer`` must next be called; the adapter re-arms one timer from it.

States::

    idle --start--> playing --prompt_finished (queue empty)--> waiting --timer--> playing (retry) | finished
                      |  \\--digit (barge-in: StopPrompt)--\\        |
                      |                                    v       v
                      |                     choice: End -> finished, Goto -> playing (next step),
                      |                             other digit -> playing ("sorry" + prompt) | finished
                      |                     collect: digits -> collecting --#/max/timeout--> checking
                      |                              checking --pin_checked--> finished | playing
    any state but finished --hangup--> finished (hung_up)

A prompt is a queue of texts (e.g. "Sorry, that is not an option." then the menu prompt). ``prompt_finished``
carries the ``play_id`` of the :class:`PlayPrompt` it ends, so a late "finished" for a prompt that a barge-in
already stopped is ignored. The timeout of a step runs from the end of its prompt (not from its start), as in
VoiceXML and TwiML ``<Gather>``. Inputs after ``finished`` are absorbed; ``start`` twice is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from ivr.menu import (
    DTMF_DIGITS,
    ChoiceStep,
    CollectStep,
    End,
    IvrError,
    Menu,
    Outcome,
    Step,
    Transition,
    render,
)

log = logging.getLogger(__name__)


class State(Enum):
    IDLE = "idle"
    PLAYING = "playing"
    WAITING = "waiting"
    COLLECTING = "collecting"
    CHECKING = "checking"
    FINISHED = "finished"


@dataclass(frozen=True)
class DigitPress:
    """One digit as the machine saw it. Digits of a secret step are recorded as ``"x"``."""

    digit: str
    method: str
    at: float
    step: str


@dataclass(frozen=True)
class PlayPrompt:
    text: str
    prompt_id: str
    play_id: int


@dataclass(frozen=True)
class StopPrompt:
    play_id: int


@dataclass(frozen=True)
class CheckDigits:
    """Verify ``digits`` with the named check (``"pin"``); answer with :meth:`MenuMachine.pin_checked`."""

    check: str
    digits: str
    step: str


@dataclass(frozen=True)
class Finish:
    outcome: Outcome
    presses: tuple[DigitPress, ...]
    step: str

    @property
    def digits(self) -> str:
        """The digits pressed, in order (secret ones as ``x``)."""
        return "".join(p.digit for p in self.presses)


Action = PlayPrompt | StopPrompt | CheckDigits | Finish


class MenuMachine:
    """Walks one :class:`Menu` for one call. Not thread-safe; one instance per call."""

    def __init__(self, menu: Menu, variables: Mapping[str, str]) -> None:
        self.menu = menu
        self.variables = dict(variables)
        missing = sorted(menu.fields() - set(self.variables))
        if missing:
            raise IvrError(f"menu {menu.name!r} needs variables {missing}; given {sorted(self.variables)}")
        self.state = State.IDLE
        self.step: Step = menu.step(menu.initial)
        self.outcome: Outcome | None = None
        self._failures = 0
        self._queue: list[tuple[str, str]] = []
        self._play_id = 0
        self._deadline: float | None = None
        self._collected = ""
        self._presses: list[DigitPress] = []

    # --- inputs ---------------------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        if self.state is not State.IDLE:
            raise IvrError(f"cannot start menu {self.menu.name!r} in state {self.state.value}: expected idle")
        return self._enter(self.step, now)

    def prompt_finished(self, now: float, play_id: int | None = None) -> list[Action]:
        if self.state is not State.PLAYING or (play_id is not None and play_id != self._play_id):
            return []  # late report for a prompt a barge-in already stopped, or after the end
        if self._queue:
            return [self._play_next()]
        if isinstance(self.step, CollectStep) and self._collected:
            self._set_state(State.COLLECTING)
            self._deadline = now + self.step.inter_digit_timeout_s
        else:
            self._set_state(State.WAITING)
            self._deadline = now + self.step.timeout_s
        return []

    def press_digit(self, digit: str, method: str, now: float) -> list[Action]:
        if digit not in DTMF_DIGITS:
            raise IvrError(
                f"cannot accept digit {digit!r} in state {self.state.value}: expected one of 0-9 * # A-D"
            )
        if self.state in (State.IDLE, State.FINISHED, State.CHECKING):
            log.info("menu %s: digit %r ignored in state %s", self.menu.name, digit, self.state.value)
            return []
        step = self.step
        secret = isinstance(step, CollectStep) and step.secret and digit != step.terminator
        self._presses.append(DigitPress("x" if secret else digit, method, now, step.id))
        actions: list[Action] = []
        if self.state is State.PLAYING:
            actions.append(StopPrompt(self._play_id))  # barge-in
            self._queue.clear()
        match step:
            case ChoiceStep():
                target = step.choices.get(digit)
                if target is None:
                    return actions + self._fail(Outcome.INVALID, now, with_apology=True)
                return actions + self._follow(target, now)
            case CollectStep():
                if digit != step.terminator:
                    self._collected += digit
                if digit == step.terminator or len(self._collected) >= step.max_digits:
                    return actions + self._submit(step, now)
                self._set_state(State.COLLECTING)
                self._deadline = now + step.inter_digit_timeout_s
                return actions
        raise AssertionError(f"unknown step type {type(step).__name__}")  # pragma: no cover

    def timer(self, now: float) -> list[Action]:
        if self._deadline is None or now < self._deadline:
            return []
        self._deadline = None
        match self.state:
            case State.WAITING:
                return self._fail(Outcome.NO_INPUT, now, with_apology=False)
            case State.COLLECTING:
                assert isinstance(self.step, CollectStep)
                return self._submit(self.step, now)
        return []  # pragma: no cover - a deadline exists only in waiting/collecting

    def pin_checked(self, ok: bool, now: float) -> list[Action]:
        if self.state is not State.CHECKING:
            raise IvrError(f"cannot take a PIN check result in state {self.state.value}: expected checking")
        step = self.step
        assert isinstance(step, CollectStep)
        if ok:
            return self._follow(step.on_success, now)
        return self._fail(Outcome.INVALID, now, with_apology=True)

    def hangup(self, now: float) -> list[Action]:
        if self.state is State.FINISHED:
            return []
        return self._finish(Outcome.HUNG_UP)

    def next_deadline(self) -> float | None:
        return self._deadline

    # --- internals ------------------------------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        if state is not self.state:
            log.debug(
                "menu %s step %s: %s -> %s", self.menu.name, self.step.id, self.state.value, state.value
            )
            self.state = state

    def _text(self, template: str, prompt_id: str) -> str:
        return render(template, self.variables, prompt_id=prompt_id)

    def _enter(self, step: Step, now: float) -> list[Action]:
        self.step = step
        self._failures = 0
        self._collected = ""
        self._queue = [(self._text(step.prompt, step.id), step.id)]
        return [self._play_next()]

    def _play_next(self) -> PlayPrompt:
        text, prompt_id = self._queue.pop(0)
        self._play_id += 1
        self._deadline = None
        self._set_state(State.PLAYING)
        return PlayPrompt(text, prompt_id, self._play_id)

    def _follow(self, target: Transition, now: float) -> list[Action]:
        if isinstance(target, End):
            return self._finish(target.outcome)
        return self._enter(self.menu.step(target.step), now)

    def _submit(self, step: CollectStep, now: float) -> list[Action]:
        digits, self._collected = self._collected, ""
        self._deadline = None
        if not digits:
            return self._fail(Outcome.NO_INPUT, now, with_apology=False)
        self._set_state(State.CHECKING)
        return [CheckDigits(step.check, digits, step.id)]

    def _fail(self, kind: Outcome, now: float, *, with_apology: bool) -> list[Action]:
        """A silence or a wrong entry: re-prompt while retries remain, else finish with ``kind``."""
        self._failures += 1
        self._collected = ""
        step = self.step
        if self._failures > step.retries:
            return self._finish(kind)
        self._queue = []
        if with_apology:
            self._queue.append((self._text(step.invalid_prompt, f"{step.id}.invalid"), f"{step.id}.invalid"))
        self._queue.append((self._text(step.prompt, step.id), step.id))
        return [self._play_next()]

    def _finish(self, outcome: Outcome) -> list[Action]:
        self._deadline = None
        self._queue.clear()
        self.outcome = outcome
        self._set_state(State.FINISHED)
        log.info("menu %s finished at step %s: %s", self.menu.name, self.step.id, outcome.value)
        return [Finish(outcome, tuple(self._presses), self.step.id)]
