"""The technologist dial-in: the menu as data, the dial plan and the spoken hold status. Pure: no I/O.

Theory of operation
-------------------
A technologist calls the dial-in extension (``sip:reaction@<our host>``, or a phone number that reaches it).

1. *Which room.* By caller ID first: a call from a room's SIP phone (``Room.sip_phone_uri``, compared on
   user and host only, so ports and parameters a phone adds do not matter) identifies its room, and the menu
   starts at the severity step. Otherwise the caller keys the room's **dial code** and ``#`` (step ``room``).
   The dial code of a room is its code spelled on the telephone keypad (ITU E.161 letters: ``CT2`` -> ``282``,
   ``MR4`` -> ``674``), so it can be read off the sign on the door with no table to print; a site may also
   configure explicit codes (digits -> room code) that win over the spelled ones. Two rooms that spell to the
   same digits are *ambiguous*: neither is reachable by those digits until one gets a configured code
   (:class:`DialPlan` reports them). An unknown code is apologised for and asked again (``retries`` times);
   then the caller is told to use the room button or the fallback number, and the call ends.
2. *Severity.* 1 severe, 2 moderate, 3 mild, 9 a question for the radiologist (severity ``unknown``). A
   technologist who does not choose (silence or wrong keys until the retries run out) still raises the
   incident, with severity ``unknown``: once the room is known, a dial-in is never dropped.
3. *Hold.* While paging, :func:`hold_status` folds the incident's events into what to say ("Doctor Lee is
   being called, attempt 2"); the adapter speaks it about every 10 s and the final words (accepted, exhausted,
   cancelled) from :data:`MESSAGES`.

The menu is walked by :class:`ivr.machine.MenuMachine`: the room step is a :class:`~ivr.menu.CollectStep` whose
``check`` is ``"room"`` (answered by the adapter from the :class:`DialPlan`); the severity step ends with
``accept`` for every listed digit and :func:`severity_from` reads which one it was.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ivr.machine import Finish
from ivr.menu import (
    ChoiceStep,
    CollectStep,
    End,
    Goto,
    IvrError,
    Menu,
    Outcome,
    Step,
    message_text,
    speakable_room,
)

__all__ = [
    "EXTENSION_USER",
    "MESSAGES",
    "SEVERITY_BY_DIGIT",
    "DialPlan",
    "HoldStatus",
    "dial_plan",
    "dialin_menu",
    "dialin_message",
    "hold_status",
    "keypad_code",
    "room_variables",
    "same_phone",
    "severity_from",
    "speakable_number",
    "spoken_name",
]

EXTENSION_USER = "reaction"
"""The Request-URI user of the dial-in extension (``sip:reaction@host``)."""

SEVERITY_BY_DIGIT: Mapping[str, str] = {"1": "severe", "2": "moderate", "3": "mild", "9": "unknown"}

ROOM_PROMPT = "Contrast reaction line. Enter the room code on the keypad, then press pound."
ROOM_INVALID = "Sorry, that room code is not known."
SEVERITY_PROMPT = (
    "Room {room}. Press 1 for a severe reaction, 2 for moderate, 3 for mild, "
    "or 9 for a question for the radiologist."
)
SEVERITY_INVALID = "Sorry, that is not an option."

MESSAGES: Mapping[str, str] = {
    "raised": "Paging the radiologist for room {room}, {severity}. Please stay on the line.",
    "paging": "We are paging the radiologist on call. Please stay on the line.",
    "calling": "Doctor {name} is being called, attempt {attempt}.",
    "accepted": "Doctor {name} has accepted. Connecting you now.",
    "accepted_elsewhere": "Doctor {name} has accepted and will contact the room. Goodbye.",
    "exhausted": (
        "Nobody has accepted. Activate the code team now. Call {fallback}. "
        "Again: activate the code team now, call {fallback}."
    ),
    "cancelled": "The alert was cancelled. Goodbye.",
    "unknown_room": "That room code is not known. Use the room button, or call {fallback}. Goodbye.",
    "no_input": "No room code was entered. Use the room button, or call {fallback}. Goodbye.",
    "failed": "Sorry, the alert could not be raised. Activate the code team now, call {fallback}. Goodbye.",
    "radiologist_left": "The doctor has left the call. Goodbye.",
    "caller_left": "The technologist has left the call. Goodbye.",
}

_KEYPAD = {
    **dict.fromkeys("ABC", "2"),
    **dict.fromkeys("DEF", "3"),
    **dict.fromkeys("GHI", "4"),
    **dict.fromkeys("JKL", "5"),
    **dict.fromkeys("MNO", "6"),
    **dict.fromkeys("PQRS", "7"),
    **dict.fromkeys("TUV", "8"),
    **dict.fromkeys("WXYZ", "9"),
}


def dialin_menu(
    *,
    room_known: bool,
    timeout_s: float = 6.0,
    inter_digit_timeout_s: float = 4.0,
    retries: int = 1,
    max_digits: int = 8,
) -> Menu:
    """The dial-in menu; it starts at the severity step when caller ID already identified the room.

    Variables: ``room`` (speakable; the adapter fills it in once the room is known) for the prompts, and
    ``severity``, ``name``, ``attempt``, ``fallback`` for the :data:`MESSAGES`.
    """
    choices = {digit: End(Outcome.ACCEPT) for digit in SEVERITY_BY_DIGIT}
    steps: list[Step] = [
        ChoiceStep(
            id="severity",
            prompt=SEVERITY_PROMPT,
            choices=choices,
            timeout_s=timeout_s,
            retries=retries,
            invalid_prompt=SEVERITY_INVALID,
        )
    ]
    if not room_known:
        steps.insert(
            0,
            CollectStep(
                id="room",
                prompt=ROOM_PROMPT,
                on_success=Goto("severity"),
                check="room",
                terminator="#",
                max_digits=max_digits,
                timeout_s=timeout_s,
                inter_digit_timeout_s=inter_digit_timeout_s,
                retries=retries,
                invalid_prompt=ROOM_INVALID,
                secret=False,
            ),
        )
    return Menu(
        name="dialin",
        steps=tuple(steps),
        initial="severity" if room_known else "room",
        messages=dict(MESSAGES),
    )


def dialin_message(menu: Menu, message_id: str, **variables: str) -> str:
    """One of :data:`MESSAGES`, rendered (a missing variable is an :class:`IvrError` naming it)."""
    return message_text(menu, message_id, variables)


def severity_from(finish: Finish) -> str:
    """The severity the caller chose (``unknown`` when the severity step ended without a valid choice)."""
    if finish.outcome is Outcome.ACCEPT and finish.step == "severity" and finish.presses:
        return SEVERITY_BY_DIGIT.get(finish.presses[-1].digit, "unknown")
    return "unknown"


# --- the dial plan ------------------------------------------------------------------------------------------


def keypad_code(room_code: str) -> str:
    """``"CT2"`` -> ``"282"``: the room code spelled on an E.161 keypad (digits kept, other characters dropped)."""
    out = []
    for ch in room_code.upper():
        if ch.isdigit():
            out.append(ch)
        elif ch in _KEYPAD:
            out.append(_KEYPAD[ch])
    return "".join(out)


@dataclass(frozen=True)
class DialPlan:
    """Digits -> room code. ``ambiguous`` lists spelled codes shared by several rooms (reachable by none)."""

    codes: Mapping[str, str]
    ambiguous: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def lookup(self, digits: str) -> str | None:
        return self.codes.get(digits)

    def code_of(self, room_code: str) -> str | None:
        """The digits that reach ``room_code`` (a configured code first), or None."""
        found = [d for d, r in self.codes.items() if r == room_code]
        return min(found, key=len) if found else None


_DIGITS = re.compile(r"[0-9]{1,16}")


def dial_plan(room_codes: Iterable[str], configured: Mapping[str, str] | None = None) -> DialPlan:
    """Build the dial plan of the active rooms: spelled codes, then ``configured`` (digits -> room) on top."""
    rooms = list(room_codes)
    spelled: dict[str, list[str]] = {}
    for room in rooms:
        digits = keypad_code(room)
        if digits:
            spelled.setdefault(digits, []).append(room)
    codes = {d: rs[0] for d, rs in spelled.items() if len(rs) == 1}
    ambiguous = {d: tuple(sorted(rs)) for d, rs in spelled.items() if len(rs) > 1}
    for digits, room in (configured or {}).items():
        if not _DIGITS.fullmatch(digits):
            raise IvrError(f"dial code {digits!r} for room {room!r} is not valid: expected 1-16 digits 0-9")
        if room not in rooms:
            continue  # a configured code for a room that is not active: not reachable, not an error
        codes[digits] = room
        ambiguous.pop(digits, None)
    return DialPlan(codes, ambiguous)


def same_phone(caller: tuple[str | None, str], room_phone: tuple[str | None, str]) -> bool:
    """Caller ID match on (user, host), case-insensitive host; ports and URI parameters are ignored."""
    return caller[0] is not None and caller[0] == room_phone[0] and caller[1].lower() == room_phone[1].lower()


# --- spoken values ------------------------------------------------------------------------------------------


def spoken_name(display_name: str) -> str:
    """``"Dr. Ada Lee"`` -> ``"Ada Lee"`` (the message already says "Doctor")."""
    return re.sub(r"^\s*(dr\.?|doctor)\s+", "", display_name, flags=re.IGNORECASE).strip() or display_name


def speakable_number(number: str) -> str:
    """``"+1 312 555 0100"`` -> ``"1 3 1 2 5 5 5 0 1 0 0"``; text that is not a number is left as it is."""
    digits = [ch for ch in number if ch.isdigit()]
    if len(digits) >= 3 and len(digits) >= len(re.sub(r"[\s()+.-]", "", number)):
        return " ".join(digits)
    return number


# --- hold status --------------------------------------------------------------------------------------------


class EventLike(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def data(self) -> dict[str, Any]: ...
    @property
    def leg_id(self) -> str | None: ...


Phase = Literal["paging", "calling", "accepted", "exhausted", "cancelled", "resolved"]
_FINAL_LEG = frozenset({"leg.ended", "leg.declined", "leg.failed"})


@dataclass(frozen=True)
class HoldStatus:
    """Where the paging stands, as the caller should hear it."""

    phase: Phase
    names: tuple[str, ...] = ()
    """Who is being called now (``calling``) or who accepted (``accepted``)."""
    attempt: int = 0
    """How many times the (last) person being called has been called for this incident, this call included."""

    def text(self, menu: Menu, *, fallback: str) -> str:
        names = " and Doctor ".join(spoken_name(n) for n in self.names)
        match self.phase:
            case "calling":
                return dialin_message(menu, "calling", name=names, attempt=str(self.attempt))
            case "accepted":
                return dialin_message(menu, "accepted", name=names)
            case "exhausted":
                return dialin_message(menu, "exhausted", fallback=fallback)
            case "cancelled" | "resolved":
                return dialin_message(menu, "cancelled")
        return dialin_message(menu, "paging")


def hold_status(events: Iterable[EventLike]) -> HoldStatus:
    """Fold an incident's events (in ``seq`` order) into its :class:`HoldStatus`."""
    calls_per_person: dict[str, int] = {}
    live: dict[str, tuple[str, str]] = {}  # leg id -> (person id, name), in creation order
    accepted_by: str | None = None
    phase: Phase = "paging"
    for ev in events:
        data = ev.data
        if ev.kind == "leg.created" and ev.leg_id is not None and data.get("person_id"):
            person = str(data["person_id"])
            calls_per_person[person] = calls_per_person.get(person, 0) + 1
            live[ev.leg_id] = (person, str(data.get("person") or "the radiologist"))
        elif ev.kind in _FINAL_LEG and ev.leg_id is not None:
            live.pop(ev.leg_id, None)
        elif ev.kind == "incident.accepted":
            phase, accepted_by = "accepted", str(data.get("person") or "the radiologist")
        elif ev.kind == "incident.exhausted":
            phase = "exhausted"
        elif ev.kind == "incident.cancelled":
            phase = "cancelled"
        elif ev.kind == "incident.resolved":
            phase = "resolved"
    if phase == "accepted" and accepted_by is not None:
        return HoldStatus("accepted", (accepted_by,))
    if phase != "paging":
        return HoldStatus(phase)
    if not live:
        return HoldStatus("paging")
    people = list(dict.fromkeys(live.values()))
    last_person = people[-1][0]
    return HoldStatus("calling", tuple(name for _, name in people), calls_per_person[last_person])


def room_variables(room_code: str) -> dict[str, str]:
    """Prompt variables once the room is known (speakable)."""
    return {"room": speakable_room(room_code)}
