"""The technologist dial-in over SIP: answer ``sip:reaction@…``, run the dial-in menu, raise the incident, keep
the caller on a supervised hold, and connect them to the radiologist who accepts.

How it runs
-----------
:meth:`DialIn.handle` is the user agent's incoming-call handler. A call whose Request-URI user is not one of
``settings.users`` is refused with 404. Otherwise, per call:

1. *Answer and menu.* The call is answered at once; the room comes from caller ID or a keyed dial code and the
   severity from one key (:mod:`ivr.dialin`), walked by the sans-I/O :class:`~ivr.machine.MenuMachine` exactly
   as the SIP alert channel walks the radiologist menu: digits (RFC 4733 or SIP INFO), prompt ends and one
   timer go in; prompts, "check this room code" and the finish come out.
2. *Evidence.* Until the incident exists, every fact (INVITE received, answered, each digit, room identified,
   severity chosen) is kept in memory with the instant it happened; when the incident is raised
   (``EscalationRunner.raise_incident(source="sip_dialin")``) an inbound :class:`~comms.db.models.CallLeg` is
   created and those facts are written as its leg events (``observed_at``/``observed_mono`` carry the real
   instants), then every later fact is written as it happens. A call that never raises an incident (unknown room,
   no input, hung up in the menu) is one ``dialin.refused``/``dialin.abandoned`` event in the global chain
   with its steps.
3. *Hold.* While the incident pages, the caller hears a status about every ``status_interval_s``, derived from
   the incident's events by :func:`ivr.dialin.hold_status` ("Doctor Lee is being called, attempt 2"); each is a
   ``dialin.hold_status`` event. The incident row is polled every ``poll_s``: *accepted* -> "Doctor Lee has
   accepted. Connecting you now."; *exhausted* -> "Activate the code team now, call <fallback>", then hang up;
   *cancelled* -> goodbye.
4. *Connect.* The SIP alert channel offers the radiologist's call to :meth:`DialIn.on_accepted` (an
   ``AcceptedCallHandler``) once they won the accept; it returns True when a technologist for that incident is
   on the line, and the caller's task cross-connects the two legs' audio with a :class:`~media.legbridge.
   LegBridge` (``bridge.started``, one ``bridge.media_established`` per direction, ``incident.connected`` when
   both flow, ``bridge.ended`` with the counters). When either side hangs up, the other is told and hung up.
   If the acceptor is not on a SIP call (SMS, pager…), the caller is told after ``accept_wait_s`` that the doctor
   will contact the room.

Nothing on this path dies silently: a failure is a ``dialin.failed`` event and the caller is told to activate
the code team.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comms.clock import Clock
from comms.db.events import append_event, format_at
from comms.db.models import CallLeg, Event, Incident, Room
from comms.db.types import Channel as ChannelKind
from comms.db.types import Direction
from comms.db.types import IncidentState as DbState
from comms.errors import CommsError, ValidationError
from comms.ids import new_id
from comms.phone import mask
from escalation.channel import LegOrder
from escalation.runner import EscalationRunner
from ivr.dialin import (
    EXTENSION_USER,
    DialPlan,
    dial_plan,
    dialin_menu,
    dialin_message,
    hold_status,
    same_phone,
    severity_from,
    speakable_number,
    spoken_name,
)
from ivr.driver import run_menu
from ivr.machine import Finish, MenuMachine
from ivr.menu import Outcome, speakable_room
from ivr.prompts import PromptError, PromptRenderer
from media.errors import MediaError
from media.legbridge import LegBridge
from sip.errors import SipError
from sip.message import URI
from sip.ua import Call, CallEnded, CallEvent, CallState, DtmfReceived, MediaStarted

__all__ = ["AcceptedCallHandler", "DialIn", "DialInSettings", "chain_accepted"]

log = logging.getLogger(__name__)

AcceptedCallHandler = Callable[[LegOrder, Call], Awaitable[bool]]
SOURCE = "sip_dialin"


@dataclass(frozen=True)
class DialInSettings:
    """How the dial-in behaves (the composition root builds it from the configuration)."""

    users: frozenset[str] = frozenset({EXTENSION_USER})
    """Request-URI users that reach the dial-in (``sip:reaction@host``)."""
    fallback_number: str = "the code team"
    """Spoken when nobody accepts: a number (read digit by digit) or words ("the code team on 5 5 5 5")."""
    dial_codes: Mapping[str, str] = field(default_factory=dict)
    """Configured dial codes (digits -> room code); they win over the keypad spelling of room codes."""
    status_interval_s: float = 10.0
    ivr_timeout_s: float = 6.0
    inter_digit_timeout_s: float = 4.0
    retries: int = 1
    accept_wait_s: float = 20.0
    """After an accept, how long to wait for the radiologist's call before saying they will contact the room."""
    poll_s: float = 0.5
    max_hold_s: float = 1800.0

    def __post_init__(self) -> None:
        for name in (
            "status_interval_s",
            "ivr_timeout_s",
            "inter_digit_timeout_s",
            "accept_wait_s",
            "poll_s",
        ):
            if getattr(self, name) <= 0:
                raise ValidationError(f"dial-in {name}={getattr(self, name)!r} is not valid: expected > 0")
        if not self.users:
            raise ValidationError("dial-in users is empty: expected at least one Request-URI user")


def chain_accepted(*handlers: AcceptedCallHandler) -> AcceptedCallHandler:
    """One handler that offers an accepted call to each of ``handlers`` in turn until one keeps it."""

    async def offer(order: LegOrder, call: Call) -> bool:
        for handler in handlers:
            if await handler(order, call):
                return True
        return False

    return offer


class _Log(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"[incident={extra.get('incident')} leg={extra.get('leg')}] {msg}", kwargs


@dataclass
class _Session:
    """One dial-in call."""

    call: Call
    log: _Log
    inputs: asyncio.Queue[tuple[Any, ...]] = field(default_factory=asyncio.Queue)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    incident_id: str | None = None
    leg_id: str | None = None
    room: str | None = None
    prompt: asyncio.Task[None] | None = None
    radio: asyncio.Future[tuple[LegOrder, Call]] | None = None
    bridged: bool = False
    refusal: tuple[str, dict[str, Any]] | None = None
    """For a call that raised no incident: the global event (kind, data) written once the call is over."""
    announced: bool = False
    radio_released: bool = False
    """For a call that raised no incident: the global event (kind, data) written once the call is over."""

    @property
    def ended(self) -> bool:
        return self.call.state is CallState.ENDED


class DialIn:
    """The dial-in service of one node (one instance; it serves every inbound call to the extension)."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        runner: EscalationRunner,
        prompts: PromptRenderer,
        clock: Clock,
        settings: DialInSettings | None = None,
        *,
        node_id: str,
    ) -> None:
        self._sf = session_factory
        self._runner = runner
        self._prompts = prompts
        self._clock = clock
        self.settings = settings or DialInSettings()
        self._node = node_id
        self._waiting: dict[str, _Session] = {}
        self._active: set[asyncio.Task[Any]] = set()
        self._fallback = speakable_number(self.settings.fallback_number)
        self._menu = dialin_menu(room_known=False)

    # --------------------------------------------------------------------------------------------- public

    def wants(self, call: Call) -> bool:
        """Whether ``call`` is addressed to the dial-in extension."""
        return call.request_uri.user in self.settings.users

    def waiting(self, incident_id: str) -> bool:
        """Whether a technologist for ``incident_id`` is on the line, not yet connected."""
        s = self._waiting.get(incident_id)
        return s is not None and not s.ended and s.radio is not None and not s.radio.done()

    async def handle(self, call: Call) -> None:
        """``UserAgent.on_incoming`` handler: serve calls to the extension, refuse the rest with 404."""
        if not self.wants(call):
            log.info("inbound call to %s is not for the dial-in: 404", mask(str(call.request_uri)))
            await call.reject(404, "Not Found")
            return
        task = asyncio.current_task()
        if task is not None:
            self._active.add(task)
            task.add_done_callback(self._active.discard)
        s = _Session(call, _Log(log, {"incident": None, "leg": None}))
        reader = asyncio.get_running_loop().create_task(self._read_events(s))
        try:
            await self._serve(s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            s.log.exception("dial-in failed")
            with contextlib.suppress(Exception):
                await self._fact(s, "dialin.failed", {"error": f"{type(exc).__name__}: {exc}"})
                if s.incident_id is None:
                    s.refusal = ("dialin.failed", {"reason": f"internal error: {type(exc).__name__}"})
            with contextlib.suppress(Exception):
                await self._say(s, dialin_message(self._menu, "failed", fallback=self._fallback))
            await self._hang_up(s, "failed")
        finally:
            if s.incident_id is not None and self._waiting.get(s.incident_id) is s:
                del self._waiting[s.incident_id]
            await self._stop_prompt(s)
            await self._release_radio(s)
            if not s.ended:
                await self._hang_up(s, "dial-in ended")
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            if s.incident_id is None and s.refusal is not None:
                # after the hang-up, so the event carries every step, BYE and end included
                await self._flush_refused(s, s.refusal[0], **s.refusal[1])

    async def close(self) -> None:
        """Stop every dial-in call in progress and wait for its evidence to be written (before the store
        closes)."""
        for task in list(self._active):
            task.cancel()
        if self._active:
            await asyncio.gather(*self._active, return_exceptions=True)

    async def on_accepted(self, order: LegOrder, call: Call) -> bool:
        """``SipChannel``'s ``AcceptedCallHandler``: take the radiologist's call when a technologist is waiting."""
        s = self._waiting.get(order.incident_id)
        if s is None or s.ended or s.radio is None or s.radio.done() or call.state is not CallState.CONFIRMED:
            return False
        s.radio.set_result((order, call))
        s.wake.set()
        s.log.info("radiologist leg %s handed over for bridging", order.leg_id)
        return True

    # ------------------------------------------------------------------------------------------- the call

    async def _serve(self, s: _Session) -> None:
        call = s.call
        await self._fact(
            s,
            "leg.invite_received",
            {"from": str(call.remote_uri), "to": str(call.request_uri), "call_id": call.call_id},
        )
        rooms = await self._rooms()
        plan = dial_plan([code for code, _ in rooms], self.settings.dial_codes)
        if plan.ambiguous:
            log.warning(
                "dial-in: room codes %s spell the same digits; give them configured codes", plan.ambiguous
            )
        s.room = self._room_by_caller_id(call.remote_uri, rooms)
        await call.answer()
        await self._fact(s, "leg.answered", {"status": 200})
        if s.room is not None:
            await self._fact(s, "dialin.room_identified", {"room": s.room, "by": "caller_id"})
        finish = await self._menu_phase(s, plan)
        if finish is None or s.ended:
            s.refusal = ("dialin.abandoned", {"reason": "caller hung up in the menu"})
            return
        if s.room is None:
            message = "no_input" if finish.outcome is Outcome.NO_INPUT else "unknown_room"
            await self._say(s, dialin_message(self._menu, message, fallback=self._fallback))
            s.refusal = ("dialin.refused", {"reason": message, "outcome": finish.outcome.value})
            await self._hang_up(s, message)
            return
        severity = severity_from(finish)
        await self._fact(
            s,
            "dialin.severity_chosen",
            {"severity": severity, "digits": finish.digits, "outcome": finish.outcome.value},
        )
        try:
            incident_id = await self._runner.raise_incident(
                room_code=s.room, severity=severity, source=SOURCE
            )
        except ValidationError as exc:
            s.log.error("could not raise an incident for room %s: %s", s.room, exc)
            await self._fact(s, "dialin.failed", {"error": str(exc)})
            s.refusal = ("dialin.failed", {"reason": "raise failed"})
            await self._say(s, dialin_message(self._menu, "failed", fallback=self._fallback))
            await self._hang_up(s, "failed")
            return
        # registered before any await: the radiologist's accepted call may come at any time from now on
        s.incident_id = incident_id
        s.radio = asyncio.get_running_loop().create_future()
        self._waiting[incident_id] = s
        await self._open_leg(s, incident_id)
        s.log.extra = {"incident": incident_id, "leg": s.leg_id}
        s.log.info("dial-in raised the incident for room %s, severity %s", s.room, severity)
        self._start_prompt(
            s,
            dialin_message(self._menu, "raised", room=speakable_room(s.room), severity=severity),
        )
        await self._hold(s)

    async def _read_events(self, s: _Session) -> None:
        """Turn the call's events into menu inputs and leg facts (a failed write is logged, never fatal)."""
        async for event in s.call.events():
            try:
                await self._on_call_event(s, event)
            except Exception:
                s.log.exception("could not record %s", type(event).__name__)
                if isinstance(event, CallEnded):
                    s.inputs.put_nowait(("hangup",))
                    s.wake.set()

    async def _on_call_event(self, s: _Session, event: CallEvent) -> None:
        match event:
            case DtmfReceived(digit=digit, method=method):
                s.inputs.put_nowait(("digit", digit, method))
                await self._fact(s, "leg.dtmf", {"digit": digit, "method": method}, event.utc, event.mono)
            case MediaStarted():
                await self._fact(s, "leg.media_started", {}, event.utc, event.mono)
            case CallEnded(status=status, reason=reason, by=by, sip_reason=sip_reason):
                s.inputs.put_nowait(("hangup",))
                s.wake.set()
                data: dict[str, Any] = {
                    "status": status,
                    "reason": reason,
                    "by": by,
                    "sip_reason": sip_reason,
                    "cause": "normal",
                }
                media = s.call.media
                if media is not None:
                    st = media.stats
                    data["rtp"] = {
                        "packets_sent": st.packets_sent,
                        "packets_received": st.packets_received,
                        "lost": st.lost,
                    }
                if by == "remote":
                    await self._fact(s, "leg.bye_received", {}, event.utc, event.mono)
                await self._fact(s, "leg.ended", data, event.utc, event.mono)

    # --------------------------------------------------------------------------------------------- menu

    async def _menu_phase(self, s: _Session, plan: DialPlan) -> Finish | None:
        st = self.settings
        menu = dialin_menu(
            room_known=s.room is not None,
            timeout_s=st.ivr_timeout_s,
            inter_digit_timeout_s=st.inter_digit_timeout_s,
            retries=st.retries,
        )
        machine = MenuMachine(menu, {"room": speakable_room(s.room or "")})
        inputs = s.inputs

        async def speak(text: str, play_id: int) -> None:
            await self._play(s, text)
            inputs.put_nowait(("prompt_done", play_id))

        def start_prompt(text: str, play_id: int) -> None:
            s.prompt = asyncio.get_running_loop().create_task(speak(text, play_id))

        async def stop_prompt() -> None:
            await self._stop_prompt(s)

        async def check(digits: str) -> bool:
            room = plan.lookup(digits)
            if room is None:
                await self._fact(s, "dialin.room_unknown", {"digits": digits})
                return False
            s.room = room
            machine.variables["room"] = speakable_room(room)
            await self._fact(
                s, "dialin.room_identified", {"room": room, "by": "keyed_code", "digits": digits}
            )
            return True

        finish = await run_menu(
            machine, self._clock, inputs, start_prompt=start_prompt, stop_prompt=stop_prompt, check=check
        )
        return None if finish.outcome is Outcome.HUNG_UP else finish

    # --------------------------------------------------------------------------------------------- hold

    async def _hold(self, s: _Session) -> None:
        st = self.settings
        assert s.incident_id is not None
        assert s.radio is not None
        start = self._clock.monotonic()
        next_status = start
        accepted_at: float | None = None
        while True:
            if s.radio.done():
                await self._connect(s)
                return
            if s.ended:
                return
            now = self._clock.monotonic()
            state = await self._incident_state(s.incident_id)
            if state in (DbState.ACCEPTED, DbState.CONNECTED):
                if accepted_at is None:
                    accepted_at = now
                    status = hold_status(await self._events(s.incident_id))
                    name = status.names[0] if status.names else "the radiologist"
                    await self._stop_prompt(s)
                    self._start_prompt(s, dialin_message(self._menu, "accepted", name=spoken_name(name)))
                    s.announced = True
                    await self._fact(s, "dialin.accepted_announced", {"person": name})
                elif now - accepted_at >= st.accept_wait_s:
                    status = hold_status(await self._events(s.incident_id))
                    name = status.names[0] if status.names else "the radiologist"
                    await self._stop_prompt(s)
                    await self._say(
                        s, dialin_message(self._menu, "accepted_elsewhere", name=spoken_name(name))
                    )
                    await self._fact(s, "dialin.not_connected", {"reason": "no SIP call from the acceptor"})
                    await self._hang_up(s, "accepted-elsewhere")
                    return
            elif state is DbState.EXHAUSTED:
                await self._stop_prompt(s)
                text = dialin_message(self._menu, "exhausted", fallback=self._fallback)
                await self._fact(s, "dialin.exhausted_announced", {"fallback": self.settings.fallback_number})
                await self._say(s, text)
                await self._hang_up(s, "exhausted")
                return
            elif state in (DbState.CANCELLED, DbState.RESOLVED):
                await self._stop_prompt(s)
                await self._fact(s, "dialin.closed_announced", {"state": state.value})
                await self._say(s, dialin_message(self._menu, "cancelled"))
                await self._hang_up(s, state.value)
                return
            elif now >= next_status and (s.prompt is None or s.prompt.done()):
                status = hold_status(await self._events(s.incident_id))
                text = status.text(self._menu, fallback=self._fallback)
                self._start_prompt(s, text)
                next_status = now + st.status_interval_s
                await self._fact(
                    s,
                    "dialin.hold_status",
                    {
                        "phase": status.phase,
                        "names": list(status.names),
                        "attempt": status.attempt,
                        "text": text,
                        # RTP from the caller so far: with an echoing peer it shows our status reaching them
                        "rtp_received": s.call.media.stats.packets_received if s.call.media else None,
                    },
                )
            if now - start > st.max_hold_s:
                await self._fact(s, "dialin.hold_limit", {"seconds": st.max_hold_s})
                await self._say(s, dialin_message(self._menu, "failed", fallback=self._fallback))
                await self._hang_up(s, "hold-limit")
                return
            await self._nap(s, st.poll_s)

    async def _nap(self, s: _Session, seconds: float) -> None:
        s.wake.clear()
        handle = self._clock.call_later(seconds, s.wake.set)
        try:
            await s.wake.wait()
        finally:
            handle.cancel()

    # ------------------------------------------------------------------------------------------ connect

    async def _connect(self, s: _Session) -> None:
        assert s.radio is not None
        assert s.incident_id is not None
        order, radio = s.radio.result()
        s.radio_released = True  # from here on this method ends the radiologist's call when it must
        if not s.announced and not s.ended:
            await self._stop_prompt(s)
            s.announced = True
            await self._fact(s, "dialin.accepted_announced", {"person": order.person_name})
            self._start_prompt(s, dialin_message(self._menu, "accepted", name=spoken_name(order.person_name)))
        # let "Doctor … has accepted. Connecting you now." finish: it is short and the caller needs it
        if s.prompt is not None and not s.prompt.done():
            with contextlib.suppress(asyncio.CancelledError, SipError, MediaError, PromptError):
                await asyncio.shield(s.prompt)
        await self._stop_prompt(s)
        if s.ended:
            await self._record_leg(order.leg_id, "leg.bridge_refused", {"reason": "the technologist hung up"})
            await self._say_on(radio, dialin_message(self._menu, "caller_left"))
            with contextlib.suppress(SipError):
                await radio.hangup()
            return
        if radio.state is CallState.ENDED or s.call.media is None or radio.media is None:
            await self._fact(
                s, "bridge.failed", {"radiologist_leg": order.leg_id, "reason": "a leg has no media"}
            )
            await self._say(s, dialin_message(self._menu, "radiologist_left"))
            await self._hang_up(s, "bridge-failed")
            return
        bridge = LegBridge(self._clock, s.call.media, radio.media, names=("caller", "radiologist"))
        try:
            bridge.start()
        except MediaError as exc:
            await self._fact(s, "bridge.failed", {"radiologist_leg": order.leg_id, "reason": str(exc)})
            await self._say(s, dialin_message(self._menu, "failed", fallback=self._fallback))
            await self._hang_up(s, "bridge-failed")
            with contextlib.suppress(SipError):
                await radio.hangup()
            return
        s.bridged = True
        started = self._clock.monotonic()
        await self._fact(
            s,
            "bridge.started",
            {"radiologist_leg": order.leg_id, "person": order.person_name, "caller_leg": s.leg_id},
        )
        await self._record_leg(order.leg_id, "leg.bridged", {"caller_leg": s.leg_id})
        s.log.info("bridged to %s (leg %s)", order.person_name, order.leg_id)
        reported: set[str] = set()
        connected = False
        radio_done = asyncio.get_running_loop().create_task(radio.wait_ended())
        radio_done.add_done_callback(lambda _t: s.wake.set())
        try:
            while not s.ended and not radio_done.done():
                for d in bridge.snapshot():
                    if d.established_mono is not None and d.name not in reported:
                        reported.add(d.name)
                        await self._fact(
                            s,
                            "bridge.media_established",
                            {"direction": d.name, "after_ms": round((d.established_mono - started) * 1000)},
                        )
                if not connected and len(reported) == 2:
                    connected = True
                    await self._mark_connected(s, order.leg_id)
                await self._nap(s, self.settings.poll_s)
        finally:
            bridge.stop()
            if not radio_done.done():
                radio_done.cancel()
        by = "caller" if s.ended else "radiologist"
        directions = {
            d.name: {
                "frames_in": d.frames_in,
                "frames_out": d.frames_out,
                "dropped": d.dropped,
                "underruns": d.underruns,
                "peak_dbfs": d.peak_dbfs,
                "established": d.established,
            }
            for d in bridge.snapshot()
        }
        seconds = round(self._clock.monotonic() - started, 3)
        await self._fact(s, "bridge.ended", {"by": by, "seconds": seconds, "directions": directions})
        if by == "caller":
            await self._say_on(radio, dialin_message(self._menu, "caller_left"))
            with contextlib.suppress(SipError):
                await radio.hangup()
        else:
            await self._say(s, dialin_message(self._menu, "radiologist_left"))
            await self._hang_up(s, "radiologist-left")

    async def _release_radio(self, s: _Session) -> None:
        """A radiologist's call handed over and still up when the dial-in ends (caller left, or a failure): end it."""
        if s.radio is None or not s.radio.done():
            return
        order, radio = s.radio.result()
        if radio.state is CallState.ENDED:
            return
        with contextlib.suppress(Exception):
            reason = "the dial-in failed" if s.radio_released else "the technologist left"
            await self._record_leg(order.leg_id, "leg.released", {"reason": reason})
        await self._say_on(radio, dialin_message(self._menu, "caller_left"))
        with contextlib.suppress(SipError):
            await radio.hangup()

    async def _mark_connected(self, s: _Session, radiologist_leg: str) -> None:
        assert s.incident_id is not None
        async with self._sf() as db, db.begin():
            done = await db.execute(
                sa.update(Incident)
                .where(Incident.id == s.incident_id, Incident.state == DbState.ACCEPTED)
                .values(state=DbState.CONNECTED)
                .execution_options(synchronize_session=False)
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                return
            incident = await db.get(Incident, s.incident_id, populate_existing=True)
            assert incident is not None
            await append_event(
                db,
                incident=incident,
                leg_id=None,
                kind="incident.connected",
                data={"via": "sip_dialin_bridge", "caller_leg": s.leg_id, "radiologist_leg": radiologist_leg},
                clock=self._clock,
                source=self._node,
            )
        s.log.info("incident connected: two-way audio between the technologist and the radiologist")

    # ------------------------------------------------------------------------------------------ prompts

    async def _play(self, s: _Session, text: str) -> None:
        await self._play_on(s.call, text)

    async def _play_on(self, call: Call, text: str) -> None:
        if call.state is CallState.ENDED:
            return
        try:
            await call.play(await self._prompts.render(text))
        except (SipError, MediaError, PromptError, OSError) as exc:
            log.info("[call=%s] could not play %r: %s", call.id, text[:40], exc)

    def _start_prompt(self, s: _Session, text: str) -> None:
        s.prompt = asyncio.get_running_loop().create_task(self._play(s, text))

    async def _stop_prompt(self, s: _Session) -> None:
        task, s.prompt = s.prompt, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _say(self, s: _Session, text: str) -> None:
        await self._stop_prompt(s)
        await self._play(s, text)

    async def _say_on(self, call: Call, text: str) -> None:
        await self._play_on(call, text)

    async def _hang_up(self, s: _Session, reason: str) -> None:
        if s.ended:
            return
        await self._fact(s, "leg.bye_sent", {"reason": reason})
        with contextlib.suppress(SipError):
            await s.call.hangup()

    # ----------------------------------------------------------------------------------------- evidence

    async def _fact(
        self, s: _Session, kind: str, data: dict[str, Any], utc: Any = None, mono: float | None = None
    ) -> None:
        """Record a leg fact: written at once once the leg exists, else kept (with its instant) until then."""
        async with s.lock:
            if s.leg_id is None:
                stamped = dict(data)
                stamped["observed_at"] = format_at(utc if utc is not None else self._clock.now())
                stamped["observed_mono"] = round(mono if mono is not None else self._clock.monotonic(), 6)
                s.pending.append((kind, stamped))
                return
            await self._append(s.incident_id, s.leg_id, kind, data)

    async def _open_leg(self, s: _Session, incident_id: str) -> None:
        call = s.call
        async with s.lock, self._sf() as db, db.begin():
            incident = await db.get(Incident, incident_id)
            assert incident is not None
            leg_id = new_id()
            db.add(
                CallLeg(
                    id=leg_id,
                    incident_id=incident_id,
                    tier=None,
                    person_id=None,
                    contact_method_id=None,
                    channel=ChannelKind.SIP,
                    direction=Direction.INBOUND,
                    address=str(call.remote_uri)[:255],
                    external_ref=call.call_id[:255],
                    created_at=self._clock.now(),
                )
            )
            await db.flush()
            facts: list[tuple[str, dict[str, Any]]] = [
                (
                    "leg.created",
                    {
                        "direction": "inbound",
                        "channel": "sip",
                        "from": str(call.remote_uri),
                        "to": str(call.request_uri),
                        "call_id": call.call_id,
                        "room": s.room,
                    },
                ),
                *s.pending,
            ]
            for kind, data in facts:
                await append_event(
                    db,
                    incident=incident,
                    leg_id=leg_id,
                    kind=kind,
                    data=data,
                    clock=self._clock,
                    source=self._node,
                )
            s.pending.clear()
            s.leg_id = leg_id

    async def _flush_refused(self, s: _Session, kind: str, **data: Any) -> None:
        """A call that raised no incident: one event in the global chain with every step it went through."""
        async with s.lock:
            steps = [{"kind": k, **d} for k, d in s.pending]
            s.pending.clear()
        payload = {
            "from": str(s.call.remote_uri),
            "to": str(s.call.request_uri),
            "call_id": s.call.call_id,
            "room": s.room,
            "steps": steps,
            **data,
        }
        await self._append(None, None, kind, payload)
        log.info("dial-in call %s: %s (%s)", s.call.call_id, kind, data.get("reason"))

    async def _append(
        self, incident_id: str | None, leg_id: str | None, kind: str, data: dict[str, Any]
    ) -> None:
        async with self._sf() as db, db.begin():
            incident = await db.get(Incident, incident_id) if incident_id is not None else None
            await append_event(
                db,
                incident=incident,
                leg_id=leg_id,
                kind=kind,
                data=data,
                clock=self._clock,
                source=self._node,
            )

    async def _record_leg(self, leg_id: str, kind: str, data: dict[str, Any]) -> None:
        async with self._sf() as db:
            incident_id = await db.scalar(sa.select(CallLeg.incident_id).where(CallLeg.id == leg_id))
        if incident_id is None:
            raise CommsError(f"leg {leg_id!r} is not known: cannot record {kind}")
        await self._append(incident_id, leg_id, kind, data)

    # ----------------------------------------------------------------------------------------- lookups

    async def _rooms(self) -> list[tuple[str, str | None]]:
        async with self._sf() as db:
            rows = (await db.execute(sa.select(Room.code, Room.sip_phone_uri).where(Room.active))).all()
        return [(str(code), uri) for code, uri in rows]

    def _room_by_caller_id(self, caller: URI, rooms: Sequence[tuple[str, str | None]]) -> str | None:
        found = []
        for code, phone in rooms:
            if phone is None:
                continue
            try:
                uri = URI.parse(phone)
            except SipError:
                continue
            if same_phone((caller.user, caller.host), (uri.user, uri.host)):
                found.append(code)
        return found[0] if len(found) == 1 else None

    async def _incident_state(self, incident_id: str) -> DbState:
        async with self._sf() as db:
            state = await db.scalar(sa.select(Incident.state).where(Incident.id == incident_id))
        if state is None:
            raise CommsError(f"incident {incident_id!r} vanished while a technologist was on hold")
        return DbState(state)

    async def _events(self, incident_id: str) -> list[Event]:
        async with self._sf() as db:
            return list(
                (
                    await db.scalars(
                        sa.select(Event).where(Event.incident_id == incident_id).order_by(Event.seq)
                    )
                ).all()
            )
