"""Renderer 2: a :class:`~ivr.menu.Menu` as TwiML, driven by Twilio's ``<Gather>`` webhooks (sans-I/O).

Theory of operation
-------------------
The same :class:`~ivr.machine.MenuMachine` that the SIP renderer feeds with RTP digits and prompt ends runs
here; only the inputs are reconstructed from what Twilio reports. One :class:`TwimlCall` lives per call (the
adapter keeps it server-side, keyed by CallSid). Each *turn* renders the machine's pending prompts as
``<Say>`` (or ``<Play>`` when an audio URL is known for the text) inside one ``<Gather>`` whose ``action``
carries the turn number; Twilio plays them and posts the action once:

* ``Digits="d"`` for a :class:`~ivr.menu.ChoiceStep` (``numDigits=1``): the caller pressed ``d`` while the
  prompt played (barge-in) or within ``timeout`` after it. Fed as ``press_digit(d)``: the machine decides.
* ``Digits=""`` (``actionOnEmptyResult``): the prompts ended and the timeout ran out. Fed as ``timer`` at the
  machine's deadline (or now, if later).

Twilio receives every queued prompt of a turn in one document (e.g. "Sorry, that is not an option." and the
menu prompt), so the renderer reports each prompt finished as it renders it and takes the next from the
machine; the machine then waits from render time, and a digit during the prompts is a digit while waiting,
which the machine treats like a barge-in (same decision, no StopPrompt needed).
* For a :class:`~ivr.menu.CollectStep` (``numDigits=max_digits``, ``finishOnKey=terminator``): every digit is
  fed in order; ``FinishedOnKey`` equal to the terminator feeds the terminator, otherwise fewer than
  ``max_digits`` digits means the inter-digit timeout fired and ``timer`` is fed.

So a script of digits and silences produces the same :class:`~ivr.machine.Finish` here as through the SIP
renderer (``tests/twilio/test_twiml_parity.py``). A :class:`~ivr.machine.CheckDigits` is handed to the adapter
(the turn has ``check`` set and no TwiML); its answer comes back through :meth:`TwimlCall.pin_checked`.

Twilio retries a webhook it thinks failed: a Gather post for a turn already answered returns the same reply
again without feeding the machine twice. Time is passed in (``now``, monotonic seconds); nothing here reads a
clock or does I/O. TwiML is built with :mod:`xml.etree.ElementTree` (the ``ivr`` package does not import the
``twilio`` library; TwiML is five elements).
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from ivr.machine import Action, CheckDigits, Finish, MenuMachine, PlayPrompt, State
from ivr.menu import ChoiceStep, CollectStep, IvrError, Menu

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Voice:
    """How ``<Say>`` speaks: a Twilio voice name and language."""

    voice: str = "Polly.Joanna"
    language: str = "en-US"


@dataclass(frozen=True)
class Turn:
    """What one webhook answers: TwiML to return, or a check to perform first, or the end of the menu."""

    number: int
    twiml: str | None = None
    check: CheckDigits | None = None
    finish: Finish | None = None


def _response() -> ET.Element:
    return ET.Element("Response")


def _render(root: ET.Element) -> str:
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root, encoding="unicode")


def _add_speech(
    parent: ET.Element, texts: list[str], voice: Voice, audio_url: Callable[[str], str | None] | None
) -> None:
    for text in texts:
        url = audio_url(text) if audio_url is not None else None
        if url is not None:
            ET.SubElement(parent, "Play").text = url
        else:
            ET.SubElement(parent, "Say", voice=voice.voice, language=voice.language).text = text


def say_and_hang_up(texts: list[str], voice: Voice = Voice()) -> str:
    """TwiML that speaks ``texts`` then hangs up (the closing words of an alert call)."""
    root = _response()
    _add_speech(root, texts, voice, None)
    ET.SubElement(root, "Hangup")
    return _render(root)


def hang_up() -> str:
    """TwiML that hangs up at once (an answering machine, an unknown call)."""
    root = _response()
    ET.SubElement(root, "Hangup")
    return _render(root)


def hold(texts: list[str], *, pause_s: int, redirect_url: str, voice: Voice = Voice()) -> str:
    """One turn of a supervised hold: speak ``texts`` (may be empty), wait ``pause_s``, then ask us again.

    Each ``<Redirect>`` is answered from the incident's state at that moment, so the caller hears news within
    one pause; a call can also be moved on at once with a REST update that replaces this document.
    """
    root = _response()
    _add_speech(root, texts, voice, None)
    ET.SubElement(root, "Pause", length=str(max(1, pause_s)))
    ET.SubElement(root, "Redirect", method="POST").text = redirect_url
    return _render(root)


def conference(
    texts: list[str],
    name: str,
    *,
    after: list[str] | None = None,
    status_callback: str | None = None,
    voice: Voice = Voice(),
) -> str:
    """Speak ``texts``, then join conference ``name`` (it starts when this call enters and ends when it leaves,
    no beep, no hold music); ``after`` is spoken if the conference ends while this call is still up."""
    root = _response()
    _add_speech(root, texts, voice, None)
    dial = ET.SubElement(root, "Dial")
    attrs = {
        "startConferenceOnEnter": "true",
        "endConferenceOnExit": "true",
        "beep": "false",
        "waitUrl": "",
    }
    if status_callback is not None:
        attrs |= {
            "statusCallback": status_callback,
            "statusCallbackMethod": "POST",
            "statusCallbackEvent": "join leave end",
        }
    ET.SubElement(dial, "Conference", attrs).text = name
    if after:
        _add_speech(root, after, voice, None)
        ET.SubElement(root, "Hangup")
    return _render(root)


def connect_stream(
    texts: list[str],
    url: str,
    parameters: Mapping[str, str],
    *,
    after: list[str] | None = None,
    voice: Voice = Voice(),
) -> str:
    """Speak ``texts``, then connect the call to a bidirectional media stream at ``url`` (``wss://``; no query
    string: Twilio refuses one, values go in ``<Parameter>``s); ``after`` is spoken when we close the stream."""
    root = _response()
    _add_speech(root, texts, voice, None)
    stream = ET.SubElement(ET.SubElement(root, "Connect"), "Stream", url=url)
    for key, value in parameters.items():
        ET.SubElement(stream, "Parameter", name=key, value=value)
    if after:
        _add_speech(root, after, voice, None)
        ET.SubElement(root, "Hangup")
    return _render(root)


def reply_message(text: str | None) -> str:
    """Messaging TwiML: reply ``text`` to an inbound SMS, or say nothing when ``text`` is None."""
    root = _response()
    if text is not None:
        ET.SubElement(root, "Message").text = text
    return _render(root)


class TwimlCall:
    """One call's menu, as TwiML turns. Not thread-safe; one instance per CallSid."""

    def __init__(
        self,
        menu: Menu,
        variables: Mapping[str, str],
        *,
        action_url: str,
        voice: Voice = Voice(),
        audio_url: Callable[[str], str | None] | None = None,
    ) -> None:
        self.machine = MenuMachine(menu, variables)
        self._action_url = action_url
        self._voice = voice
        self._audio_url = audio_url
        self._turn = 0
        self._answers: dict[int, Turn] = {}
        self._pending: list[str] = []

    @property
    def finished(self) -> bool:
        return self.machine.state is State.FINISHED

    @property
    def turn(self) -> int:
        """The number of the turn whose Gather is outstanding."""
        return self._turn

    # --- inputs ---------------------------------------------------------------------------------------

    def start(self, now: float) -> Turn:
        """The call was answered by a person: the first TwiML of the menu."""
        return self._advance(self.machine.start(now), now)

    def gather(self, turn: int, digits: str, finished_on_key: str, now: float) -> Turn:
        """Twilio posted the Gather action of ``turn`` with ``Digits`` and ``FinishedOnKey``."""
        repeat = self._answers.get(turn)
        if repeat is not None:
            log.info(
                "menu %s: Gather of turn %d repeated (now at %d)", self.machine.menu.name, turn, self._turn
            )
            return repeat
        if turn != self._turn or self.machine.state not in (State.PLAYING, State.WAITING, State.COLLECTING):
            raise IvrError(
                f"cannot take a Gather for turn {turn} in state {self.machine.state.value} at turn {self._turn}: "
                "expected the outstanding turn while the menu waits for input"
            )
        m = self.machine
        step = m.step
        actions: list[Action] = []
        for digit in digits:
            actions += m.press_digit(digit, "twilio", now)
            if m.state is State.FINISHED or m.state is State.CHECKING or m.step is not step:
                break  # the machine moved on; Twilio would not have collected more for this step
        else:
            if isinstance(step, CollectStep) and finished_on_key == step.terminator:
                actions += m.press_digit(step.terminator, "twilio", now)
            elif not digits or isinstance(step, CollectStep):
                actions += self._silence(now)
        answer = self._advance(actions, now)
        if answer.twiml is not None:
            self._answers[turn] = answer
        return answer

    def close(self, twiml: str) -> None:
        """Record the closing TwiML the adapter answered a finishing turn with; a repeat gets it again."""
        self._answers[self._turn] = Turn(self._turn, twiml=twiml)

    def pin_checked(self, ok: bool, now: float) -> Turn:
        """The adapter's answer to the turn's :class:`~ivr.machine.CheckDigits`."""
        answer = self._advance(self.machine.pin_checked(ok, now), now)
        if answer.twiml is not None:
            self._answers[answer.number - 1] = answer
        return answer

    async def answer(
        self,
        turn: Turn,
        *,
        check: Callable[[str], Awaitable[bool]],
        finish: Callable[[Finish], Awaitable[str]],
        monotonic: Callable[[], float],
    ) -> str:
        """The TwiML for ``turn``: the adapter's ``check`` answers each digit check (a PIN, a room code) until
        the menu asks for input again; a finished menu gets the TwiML ``finish`` makes (and a repeat of it)."""
        while True:
            if turn.check is not None:
                turn = self.pin_checked(await check(turn.check.digits), monotonic())
                continue
            if turn.finish is not None:
                twiml = await finish(turn.finish)
                self.close(twiml)
                return twiml
            assert turn.twiml is not None
            return turn.twiml

    def hangup(self, now: float) -> Finish | None:
        """The caller hung up (a ``completed`` status callback): the menu's end, unless it had ended."""
        for action in self.machine.hangup(now):
            if isinstance(action, Finish):
                return action
        return None

    # --- internals ------------------------------------------------------------------------------------

    def _silence(self, now: float) -> list[Action]:
        """Twilio reports the end of the prompts and of the timeout at once: replay both, in order."""
        m = self.machine
        while m.state is State.PLAYING:
            m.prompt_finished(now)
        deadline = m.next_deadline()
        return m.timer(max(now, deadline) if deadline is not None else now)

    def _advance(self, actions: list[Action], now: float) -> Turn:
        texts: list[str] = []
        queue = list(actions)
        while queue:
            action = queue.pop(0)
            match action:
                case PlayPrompt(text=text, play_id=play_id):
                    texts.append(text)
                    # Twilio gets every queued prompt in this one document: take the next one now
                    queue += self.machine.prompt_finished(now, play_id)
                case Finish():
                    return Turn(self._turn, finish=action)
                case CheckDigits():
                    self._pending = texts  # nothing to play until the check is answered
                    return Turn(self._turn, check=action)
                case _:
                    pass  # StopPrompt: Twilio stops <Say> itself when a digit barges in
        texts = [*self._pending, *texts]
        self._pending = []
        self._turn += 1
        return Turn(self._turn, twiml=self._gather_twiml(texts))

    def _gather_twiml(self, texts: list[str]) -> str:
        step = self.machine.step
        attrs = {
            "input": "dtmf",
            "action": f"{self._action_url}{'&' if '?' in self._action_url else '?'}"
            + urlencode({"turn": self._turn}),
            "method": "POST",
            "actionOnEmptyResult": "true",
        }
        match step:
            case ChoiceStep():
                # finishOnKey defaults to "#" at Twilio: switch it off so "#" is a digit like any other
                attrs |= {"numDigits": "1", "finishOnKey": "", "timeout": str(math.ceil(step.timeout_s))}
            case CollectStep():
                attrs |= {
                    "numDigits": str(step.max_digits),
                    "finishOnKey": step.terminator,
                    "timeout": str(math.ceil(max(step.timeout_s, step.inter_digit_timeout_s))),
                }
        root = _response()
        gather = ET.SubElement(root, "Gather", attrs)
        _add_speech(gather, texts, self._voice, self._audio_url)
        return _render(root)
