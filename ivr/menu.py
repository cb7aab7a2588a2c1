"""Menus as data: prompts (text templates), digit choices, timeouts, retries.

A :class:`Menu` is a set of named steps plus a few stand-alone messages. It holds no state; the
:class:`ivr.machine.MenuMachine` walks it. Two kinds of step exist:

* :class:`ChoiceStep` -- play a prompt, wait ``timeout_s`` after it ends for one digit; a digit in ``choices``
  either ends the call with an :class:`Outcome` (:class:`End`) or moves to another step (:class:`Goto`); any
  other digit plays ``invalid_prompt`` and the prompt again. Silence and invalid digits share one budget of
  ``retries`` (so ``retries=2`` means at most three plays of the prompt); when it runs out the outcome is
  ``no_input`` or ``invalid`` according to the last failure.
* :class:`CollectStep` -- play a prompt, collect digits until ``terminator`` (``#``), ``max_digits`` or a
  timeout (``timeout_s`` before the first digit, ``inter_digit_timeout_s`` after it), then ask the adapter to
  check them (the ``check`` name, e.g. ``"pin"``); the answer comes back as ``pin_checked(ok)``. Failures
  count against ``retries`` like in a choice step; an exhausted budget ends with ``invalid`` (or ``no_input``
  after silence).

Templates use ``str.format`` fields (``{severity}``, ``{room}``, ``{site}``, ``{code}``, ``{name}``). Values
that a text-to-speech engine reads badly are made speakable first (:func:`speakable_room`,
:func:`speakable_code`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from comms.errors import CommsError

DTMF_DIGITS = frozenset("0123456789*#ABCD")


class IvrError(CommsError):
    """Base of the errors raised by the ``ivr`` package."""


class Outcome(StrEnum):
    """How a menu ended."""

    ACCEPT = "accept"
    DECLINE = "decline"
    NO_INPUT = "no_input"
    INVALID = "invalid"
    HUNG_UP = "hung_up"


@dataclass(frozen=True)
class End:
    """A transition that ends the menu with ``outcome``."""

    outcome: Outcome


@dataclass(frozen=True)
class Goto:
    """A transition to another step of the same menu."""

    step: str


Transition = End | Goto


@dataclass(frozen=True)
class ChoiceStep:
    """Play ``prompt``, then take one digit from ``choices``."""

    id: str
    prompt: str
    choices: Mapping[str, Transition]
    timeout_s: float = 5.0
    retries: int = 2
    invalid_prompt: str = "Sorry, that is not an option."


@dataclass(frozen=True)
class CollectStep:
    """Play ``prompt``, collect digits until ``terminator``, then have them checked (``check``)."""

    id: str
    prompt: str
    on_success: Transition
    check: str = "pin"
    terminator: str = "#"
    max_digits: int = 8
    timeout_s: float = 8.0
    inter_digit_timeout_s: float = 5.0
    retries: int = 2
    invalid_prompt: str = "Sorry, that PIN is not correct."
    secret: bool = True
    """Secret digits reach the check action but are recorded as ``x`` in :class:`ivr.machine.Finish`."""


Step = ChoiceStep | CollectStep


@dataclass(frozen=True)
class Menu:
    """A named, validated set of steps and messages."""

    name: str
    steps: tuple[Step, ...]
    initial: str
    messages: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = [s.id for s in self.steps]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise IvrError(f"menu {self.name!r}: step ids must be unique, saw {dupes} more than once")
        if self.initial not in ids:
            raise IvrError(f"menu {self.name!r}: initial step {self.initial!r} is not one of {ids}")
        for step in self.steps:
            self._check_step(step, ids)

    def _check_step(self, step: Step, ids: list[str]) -> None:
        where = f"menu {self.name!r} step {step.id!r}"
        if step.timeout_s <= 0 or step.retries < 0:
            raise IvrError(
                f"{where}: expected timeout_s > 0 and retries >= 0, got {step.timeout_s} and {step.retries}"
            )
        transitions: list[Transition]
        if isinstance(step, ChoiceStep):
            bad = sorted(d for d in step.choices if d not in DTMF_DIGITS)
            if bad or not step.choices:
                raise IvrError(f"{where}: choices must be non-empty DTMF digits (0-9 * # A-D), got {bad}")
            transitions = list(step.choices.values())
        else:
            if step.terminator not in DTMF_DIGITS or step.max_digits < 1 or step.inter_digit_timeout_s <= 0:
                raise IvrError(
                    f"{where}: expected a DTMF terminator, max_digits >= 1 and inter_digit_timeout_s > 0, "
                    f"got {step.terminator!r}, {step.max_digits}, {step.inter_digit_timeout_s}"
                )
            transitions = [step.on_success]
        for t in transitions:
            if isinstance(t, Goto) and t.step not in ids:
                raise IvrError(f"{where}: transition to unknown step {t.step!r}; steps are {ids}")

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise IvrError(f"menu {self.name!r} has no step {step_id!r}; steps are {[s.id for s in self.steps]}")

    def fields(self) -> frozenset[str]:
        """Every template field used by the steps (not the messages)."""
        texts = [t for s in self.steps for t in (s.prompt, s.invalid_prompt)]
        return frozenset(name for t in texts for _, name, _, _ in string.Formatter().parse(t) if name)


def render(template: str, variables: Mapping[str, str], *, prompt_id: str) -> str:
    """Fill ``template`` from ``variables``; a missing field is an :class:`IvrError` naming the prompt."""
    try:
        return template.format_map(variables)
    except KeyError as exc:
        raise IvrError(
            f"prompt {prompt_id!r} needs variable {exc.args[0]!r}; given {sorted(variables)}"
        ) from exc
    except (ValueError, IndexError) as exc:
        raise IvrError(f"prompt {prompt_id!r} has a malformed template {template!r}: {exc}") from exc


_LETTER_DIGIT = re.compile(r"(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])")


def speakable_room(room: str) -> str:
    """``"CT2"`` -> ``"CT 2"``, ``"MR-1"`` -> ``"MR 1"``: a text-to-speech engine reads the parts clearly."""
    spaced = _LETTER_DIGIT.sub(" ", room.replace("-", " ").replace("_", " "))
    return " ".join(spaced.split())


def speakable_code(code: str) -> str:
    """``"K7R"`` -> ``"K 7 R"``: an incident code is read one character at a time."""
    return " ".join(ch for ch in code.upper() if not ch.isspace())


# --- the radiologist alert menu -------------------------------------------------------------------------

ALERT_PROMPT = (
    "Contrast reaction, {severity}, room {room}, {site}. Incident code {code}. "
    "Press 1 to accept, 2 to decline."
)
PIN_PROMPT = "Enter your PIN followed by pound."
ALREADY_ACCEPTED = "Doctor {name} has already accepted. Thank you."


def alert_menu(*, require_pin: bool = False, timeout_s: float = 5.0, retries: int = 2) -> Menu:
    """The menu played to a radiologist who answers an alert call.

    Pressing 1 accepts (after a PIN check when ``require_pin``), 2 declines.
    """
    accept: Transition = Goto("pin") if require_pin else End(Outcome.ACCEPT)
    steps: list[Step] = [
        ChoiceStep(
            id="alert",
            prompt=ALERT_PROMPT,
            choices={"1": accept, "2": End(Outcome.DECLINE)},
            timeout_s=timeout_s,
            retries=retries,
        )
    ]
    if require_pin:
        steps.append(
            CollectStep(id="pin", prompt=PIN_PROMPT, on_success=End(Outcome.ACCEPT), retries=retries)
        )
    return Menu(
        name="alert", steps=tuple(steps), initial="alert", messages={"already_accepted": ALREADY_ACCEPTED}
    )


def alert_variables(*, severity: str, room: str, site: str, code: str) -> dict[str, str]:
    """Variables for :func:`alert_menu`, made speakable. No PHI: site, room, severity and code only."""
    return {
        "severity": severity,
        "room": speakable_room(room),
        "site": site,
        "code": speakable_code(code),
    }


def message_text(menu: Menu, message_id: str, variables: Mapping[str, str]) -> str:
    """The text of one of ``menu.messages`` (e.g. ``"already_accepted"`` with ``name``), ready to render."""
    try:
        template = menu.messages[message_id]
    except KeyError as exc:
        raise IvrError(
            f"menu {menu.name!r} has no message {message_id!r}; messages are {sorted(menu.messages)}"
        ) from exc
    values = dict(variables)
    if "name" in values:  # the templates say "Doctor {name}"
        values["name"] = spoken_name(values["name"])
    return render(template, values, prompt_id=f"{menu.name}.{message_id}")


def spoken_name(display_name: str) -> str:
    """``"Dr. Ada Lee"`` -> ``"Ada Lee"``: prompts already say "Doctor"."""
    return re.sub(r"^\s*(dr\.?|doctor)\s+", "", display_name, flags=re.IGNORECASE).strip() or display_name
