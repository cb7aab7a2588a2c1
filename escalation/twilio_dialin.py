"""The technologist dial-in over a Twilio phone number: the same menus, hold and evidence as the SIP dial-in
(:mod:`escalation.dialin`), driven by Twilio's webhooks instead of RTP.

How it runs
-----------
Twilio posts every inbound call to our dial-in number to ``/twilio/dialin`` (signed; checked by
:mod:`comms.twilio_web` against the public base URL). Per call (keyed by CallSid), webhooks only, no task:

1. *Menu.* The room comes from caller ID (the caller's E.164 number equals the number in a room phone's
   ``Room.sip_phone_uri`` user part: the room-phone map the SIP dial-in uses) or a keyed dial code and the
   severity from one key (:func:`ivr.dialin.dialin_menu`), walked by :class:`ivr.twiml.TwimlCall` -- the same
   :class:`~ivr.machine.MenuMachine` the SIP dial-in drives with RTP digits. The room check is answered from the
   :class:`~ivr.dialin.DialPlan`.
2. *Raise and evidence.* As in the SIP dial-in: facts before the incident exists are kept with their instant;
   ``EscalationRunner.raise_incident(source="twilio_dialin")`` raises it, an inbound ``pstn_voice``
   :class:`~comms.db.models.CallLeg` (``external_ref`` = CallSid) is created and the kept facts written as its
   leg events; every later step is a leg event. A call that raises nothing is one ``dialin.refused`` /
   ``dialin.abandoned`` event in the global chain.
3. *Hold.* Each hold document is ``<Say>``? + ``<Pause length=hold_pause_s>`` + ``<Redirect>``; every redirect is
   answered from the incident's state at that moment: a status (:func:`ivr.dialin.hold_status`) about every
   ``status_interval_s`` ("Doctor Lee is being called, attempt 2", a ``dialin.hold_status`` event); *exhausted*
   -> "Activate the code team now, call <fallback>" and hang up; *cancelled*/*resolved* -> goodbye; *accepted*
   by someone we cannot connect (SMS, pager) -> "Doctor … has accepted", then after ``accept_wait_s`` "will
   contact the room".
4. *Connect.* The channels offer the accepted radiologist's call: a Twilio voice leg
   (:meth:`on_twilio_accepted`) gets ``<Dial><Conference>`` in the answer to its Gather, and the caller's live
   call is updated (REST, the real ``twilio`` library, in the background) with the same conference; a SIP leg
   (:meth:`on_sip_accepted`) stays up while the caller's call is updated with ``<Connect><Stream>`` carrying a
   one-time grant (:class:`~escalation.twilio_streams.StreamGrants`); when Twilio opens the stream it is
   cross-connected with the SIP leg's RTP session (:class:`~escalation.twilio_streams.RtpStreamBridge`). If the
   REST update fails, the caller's next ``<Redirect>`` gets the same document. Conference participant callbacks
   and the stream bridge's counters become ``bridge.*`` events and ``incident.connected``.
5. *A stream that never comes.* After the handover to a SIP radiologist one task waits at most
   ``stream_timeout_s`` for Twilio to open the stream. None by then: the grant is revoked (a late stream is
   refused), ``bridge.failed`` is written on the caller's leg, the caller's call is updated to "activate the
   code team, call <fallback>", and the radiologist is told the call could not be connected (``leg.released``)
   and hung up. The caller hanging up first (status ``completed`` before any stream) revokes the grant at once
   and releases the radiologist the way a hang-up mid-bridge does ("the technologist has left"), with
   ``leg.bridge_refused`` on the radiologist's leg. The radiologist hanging up first ends the wait at once:
   ``bridge.failed`` (reason: hung up before the stream opened), and the caller hears "The doctor has left the
   call" and is hung up, as when the radiologist leaves a bridged call.

The evidence, the reads and the bridge report are the SIP dial-in's, from :mod:`escalation.dialin_common`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from twilio.base.exceptions import TwilioRestException

from comms.clock import Clock
from comms.db.events import format_at
from comms.db.types import Channel as ChannelKind
from comms.db.types import IncidentState as DbState
from comms.errors import ValidationError
from comms.phone import PhoneNumberError, mask, normalize_e164
from comms.tasks import TaskSet
from escalation.channel import LegOrder
from escalation.dialin import DialInSettings
from escalation.dialin_common import (
    RADIOLOGIST_CONNECTING,
    BridgeReport,
    CallFacts,
    CallLog,
    DialInStore,
    FactsOwner,
    acceptor_name,
    hold_status_data,
    nap,
    raise_from_menu,
    room_by_phone,
    wake_when_ended,
)
from escalation.runner import EscalationRunner
from escalation.twilio_channel import TwilioSettings
from escalation.twilio_streams import (
    Handover,
    RtpStreamBridge,
    StreamContext,
    StreamEndpoint,
    StreamGrants,
    TwilioCallRef,
    stream_url,
)
from ivr.dialin import (
    DialPlan,
    dial_plan,
    dialin_menu,
    dialin_message,
    speakable_number,
    spoken_name,
)
from ivr.machine import Finish
from ivr.menu import IvrError, Outcome, speakable_room
from ivr.prompts import PromptError, PromptRenderer
from ivr.twiml import Turn, TwimlCall, Voice, conference, connect_stream, hang_up, hold, say_and_hang_up
from media.errors import MediaError
from sip.errors import SipError
from sip.message import URI
from sip.ua import Call, CallState

__all__ = ["SOURCE", "TwilioDialIn"]

log = logging.getLogger(__name__)

SOURCE = "twilio_dialin"
_FINAL = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
STREAM_TIMEOUT_S = 10.0
"""How long Twilio may take to open a handed-over stream (it usually opens within a second or two)."""
STREAM_FAILED_TEXT = (
    "Sorry, the technologist's call could not be connected. Please call room {room} now. Goodbye."
)


@dataclass
class _Radio:
    order: LegOrder
    kind: str  # "twilio" | "sip"
    call_sid: str | None = None
    call: Call | None = None


@dataclass
class _Caller(FactsOwner):
    call_sid: str
    caller: str
    to: str
    log: CallLog
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Serialises this call's webhooks."""
    facts: CallFacts = field(default_factory=CallFacts)
    ivr: TwimlCall | None = None
    first_twiml: str | None = None
    plan: DialPlan | None = None
    room: str | None = None
    hold_n: int = 0
    hold_started: float = 0.0
    last_status: float | None = None
    accepted_at: float | None = None
    announced: bool = False
    final: str | None = None
    """The document that ends or hands over the call: every later webhook of it gets the same."""
    radio: _Radio | None = None
    bridge: RtpStreamBridge | None = None
    joined: set[str] = field(default_factory=set)
    connected: bool = False
    ended: bool = False
    stream_wake: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the stream opens or the caller leaves: ends the wait for the stream early."""
    radio_released: bool = False
    """The SIP radiologist has been released without a bridge (no stream in time): nothing more to tell them."""
    seen: set[tuple[str, str]] = field(default_factory=set)


class TwilioDialIn:
    """The Twilio dial-in of one node: webhook handlers (called by :mod:`comms.twilio_web`) and accept hooks."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        runner: EscalationRunner,
        client: Any,
        twilio: TwilioSettings,
        clock: Clock,
        grants: StreamGrants,
        settings: DialInSettings | None = None,
        *,
        node_id: str,
        prompts: PromptRenderer | None = None,
        stream_timeout_s: float = STREAM_TIMEOUT_S,
    ) -> None:
        if twilio.dialin_number is None:
            raise ValidationError("the Twilio dial-in needs twilio.dialin_number: expected an E.164 number")
        if not stream_timeout_s > 0:
            raise ValidationError(
                f"stream_timeout_s is {stream_timeout_s!r}: expected a positive number of seconds"
            )
        self._store = DialInStore(session_factory, clock, node_id=node_id)
        self._runner = runner
        self._client = client
        self._twilio = twilio
        self._clock = clock
        self._grants = grants
        self.settings = settings or DialInSettings()
        self._prompts = prompts
        self.stream_timeout_s = stream_timeout_s
        """After a handover to a SIP radiologist, how long to wait for Twilio to open the caller's stream."""
        self._number = normalize_e164(twilio.dialin_number)
        self._voice = Voice(twilio.voice, twilio.language)
        self._fallback = speakable_number(self.settings.fallback_number)
        self._menu = dialin_menu(room_known=False)
        self._callers: dict[str, _Caller] = {}
        self._waiting: dict[str, _Caller] = {}
        self._tasks = TaskSet(log, "Twilio dial-in")

    # ------------------------------------------------------------------------------------------ public

    def waiting(self, incident_id: str) -> bool:
        """Whether a technologist for ``incident_id`` is on hold on the Twilio number, not yet connected."""
        c = self._waiting.get(incident_id)
        return c is not None and not c.ended and c.radio is None

    @property
    def background_tasks(self) -> int:
        """How many background tasks (REST updates, stream waits, bridges) are running."""
        return len(self._tasks)

    async def close(self) -> None:
        await self._tasks.close()
        for c in self._callers.values():
            if c.bridge is not None:
                c.bridge.close("shutdown")

    # --------------------------------------------------------------------------------- webhooks: menu

    async def incoming(self, params: Mapping[str, str]) -> str:
        """A call to our number: answer with the first TwiML of the dial-in menu."""
        sid = params.get("CallSid", "")
        try:
            to = normalize_e164(params.get("To", ""))
        except PhoneNumberError:
            to = ""
        if not sid or to != self._number:
            log.info("inbound Twilio call %s to %s is not for the dial-in: hung up", sid, mask(to))
            return hang_up()
        existing = self._callers.get(sid)
        if existing is not None:
            async with existing.lock:
                return existing.final or existing.first_twiml or hang_up()
        c = self._callers[sid] = _Caller(sid, params.get("From", ""), to, CallLog(log, {"incident": None}))
        async with c.lock:
            await self._fact(
                c, "leg.invite_received", {"from": c.caller, "to": to, "call_sid": sid, "via": "twilio"}
            )
            rooms = await self._store.rooms()
            c.plan = dial_plan([code for code, _ in rooms], self.settings.dial_codes)
            c.room = self._room_by_caller_id(c.caller, rooms)
            await self._fact(c, "leg.answered", {"call_sid": sid})
            if c.room is not None:
                await self._fact(c, "dialin.room_identified", {"room": c.room, "by": "caller_id"})
            c.ivr = TwimlCall(
                self.settings.menu(room_known=c.room is not None),
                {"room": speakable_room(c.room or "")},
                action_url=self._twilio.url(f"/twilio/dialin/gather/{sid}"),
                voice=self._voice,
            )
            c.first_twiml = await self._answer_turn(c, c.ivr.start(self._clock.monotonic()))
            return c.first_twiml

    async def gather(self, call_sid: str, turn: int, params: Mapping[str, str]) -> str:
        """The Gather action of ``turn`` (``Digits``, ``FinishedOnKey``)."""
        c = self._caller(call_sid, params)
        if c is None:
            return hang_up()
        async with c.lock:
            if c.final is not None:
                return c.final
            ivr = c.ivr
            if ivr is None:
                return hang_up()
            digits, key = params.get("Digits", ""), params.get("FinishedOnKey", "")
            if turn == ivr.turn and not ivr.finished:
                for digit in digits + key:
                    await self._fact(c, "leg.dtmf", {"digit": digit, "method": "twilio", "turn": turn})
            try:
                answer = ivr.gather(turn, digits, key, self._clock.monotonic())
            except IvrError as exc:
                c.log.info("Gather for turn %d refused: %s", turn, exc)
                return hang_up()
            return await self._answer_turn(c, answer)

    async def _answer_turn(self, c: _Caller, turn: Turn) -> str:
        assert c.ivr is not None

        async def check(digits: str) -> bool:
            return await self._check_room(c, digits)

        async def finish(done: Finish) -> str:
            return await self._menu_done(c, done)

        return await c.ivr.answer(turn, check=check, finish=finish, monotonic=self._clock.monotonic)

    async def _check_room(self, c: _Caller, digits: str) -> bool:
        assert c.plan is not None
        assert c.ivr is not None
        room = c.plan.lookup(digits)
        if room is None:
            await self._fact(c, "dialin.room_unknown", {"digits": digits})
            return False
        c.room = room
        c.ivr.machine.variables["room"] = speakable_room(room)
        await self._fact(c, "dialin.room_identified", {"room": room, "by": "keyed_code", "digits": digits})
        return True

    async def _menu_done(self, c: _Caller, finish: Finish) -> str:
        if finish.outcome is Outcome.HUNG_UP:
            return hang_up()
        if c.room is None:
            message = "no_input" if finish.outcome is Outcome.NO_INPUT else "unknown_room"
            await self._fact(c, "leg.bye_sent", {"reason": message})
            await self._flush_refused(c, "dialin.refused", reason=message, outcome=finish.outcome.value)
            return self._end(c, [dialin_message(self._menu, message, fallback=self._fallback)])
        incident_id, severity = await raise_from_menu(
            self._store, self._runner, c.facts, c.room, finish, source=SOURCE, log=c.log
        )
        if incident_id is None:
            await self._fact(c, "leg.bye_sent", {"reason": "failed"})
            await self._flush_refused(c, "dialin.failed", reason="raise failed")
            return self._end(c, [dialin_message(self._menu, "failed", fallback=self._fallback)])
        # registered before any await: an accepted radiologist may be offered to us from now on
        c.facts.incident_id = incident_id
        self._waiting[incident_id] = c
        await self._store.open_leg(
            c.facts,
            incident_id,
            channel=ChannelKind.PSTN_VOICE,
            address=c.caller,
            external_ref=c.call_sid,
            created={"from": c.caller, "to": c.to, "call_sid": c.call_sid, "room": c.room},
        )
        c.log.extra = {"incident": incident_id, "leg": c.leg_id}
        c.log.info("Twilio dial-in raised the incident for room %s, severity %s", c.room, severity)
        c.hold_started = self._clock.monotonic()
        raised = dialin_message(self._menu, "raised", room=speakable_room(c.room), severity=severity)
        return self._hold_twiml(c, [raised])

    # --------------------------------------------------------------------------------- webhooks: hold

    async def hold(self, call_sid: str, params: Mapping[str, str]) -> str:
        """A hold ``<Redirect>``: what the caller hears next, from the incident's state now."""
        c = self._caller(call_sid, params)
        if c is None:
            return hang_up()
        async with c.lock:
            if c.final is not None:
                return c.final
            if c.incident_id is None:
                return hang_up()
            try:
                return await self._hold(c, c.incident_id)
            except Exception as exc:  # never leave a technologist on a silent line
                c.log.exception("hold failed")
                with contextlib.suppress(Exception):
                    await self._fact(c, "dialin.failed", {"error": f"{type(exc).__name__}: {exc}"})
                    await self._fact(c, "leg.bye_sent", {"reason": "failed"})
                return self._end(c, [dialin_message(self._menu, "failed", fallback=self._fallback)])

    async def _hold(self, c: _Caller, incident_id: str) -> str:
        st = self.settings
        now = self._clock.monotonic()
        state = await self._store.incident_state(incident_id)
        menu = self._menu
        if state in (DbState.ACCEPTED, DbState.CONNECTED):
            name = spoken_name(acceptor_name(await self._store.hold_status(incident_id)))
            if c.accepted_at is None:
                c.accepted_at = now
                c.announced = True
                await self._fact(c, "dialin.accepted_announced", {"person": name})
                return self._hold_twiml(c, [dialin_message(menu, "accepted", name=name)])
            if now - c.accepted_at >= st.accept_wait_s:
                await self._fact(c, "dialin.not_connected", {"reason": "no voice call from the acceptor"})
                await self._fact(c, "leg.bye_sent", {"reason": "accepted-elsewhere"})
                return self._end(c, [dialin_message(menu, "accepted_elsewhere", name=name)])
            return self._hold_twiml(c, [])
        if state is DbState.EXHAUSTED:
            await self._fact(c, "dialin.exhausted_announced", {"fallback": st.fallback_number})
            await self._fact(c, "leg.bye_sent", {"reason": "exhausted"})
            return self._end(c, [dialin_message(menu, "exhausted", fallback=self._fallback)])
        if state in (DbState.CANCELLED, DbState.RESOLVED):
            await self._fact(c, "dialin.closed_announced", {"state": state.value})
            await self._fact(c, "leg.bye_sent", {"reason": state.value})
            return self._end(c, [dialin_message(menu, "cancelled")])
        if now - c.hold_started > st.max_hold_s:
            await self._fact(c, "dialin.hold_limit", {"seconds": st.max_hold_s})
            await self._fact(c, "leg.bye_sent", {"reason": "hold-limit"})
            return self._end(c, [dialin_message(menu, "failed", fallback=self._fallback)])
        texts: list[str] = []
        if c.last_status is None or now - c.last_status >= st.status_interval_s:
            c.last_status = now
            status = await self._store.hold_status(incident_id)
            text = status.text(menu, fallback=self._fallback)
            texts.append(text)
            await self._fact(c, "dialin.hold_status", hold_status_data(status, text))
        return self._hold_twiml(c, texts)

    def _hold_twiml(self, c: _Caller, texts: list[str]) -> str:
        c.hold_n += 1
        url = self._twilio.url(f"/twilio/dialin/hold/{c.call_sid}?n={c.hold_n}")
        return hold(texts, pause_s=self._twilio.hold_pause_s, redirect_url=url, voice=self._voice)

    def _end(self, c: _Caller, texts: list[str]) -> str:
        c.final = say_and_hang_up(texts, self._voice)
        return c.final

    # ------------------------------------------------------------------------------ webhooks: status

    async def status(self, params: Mapping[str, str]) -> None:
        """The caller's call status callback (configure it on the number: ``/twilio/dialin/status``)."""
        sid = params.get("CallSid", "")
        c = self._callers.get(sid)
        if c is None:
            log.info("dial-in status for unknown call %s: %s", sid, params.get("CallStatus"))
            return
        call_status = params.get("CallStatus", "")
        key = (params.get("SequenceNumber", ""), call_status)
        async with c.lock:
            if key in c.seen:
                return
            c.seen.add(key)
            if c.ended:
                return
            await self._fact(
                c,
                "leg.twilio_status",
                {
                    "call_sid": sid,
                    "sequence": params.get("SequenceNumber") or None,
                    "call_status": call_status,
                    "duration_s": params.get("CallDuration") or None,
                    "twilio_timestamp": params.get("Timestamp") or None,
                    "received_at": format_at(self._clock.now()),
                },
            )
            if call_status not in _FINAL:
                return
            c.ended = True
            # before any await: a stream opened from now on is refused, and a wait for one ends
            self._grants.revoke(c.call_sid)
            c.stream_wake.set()
            await self._fact(c, "leg.ended", {"cause": "normal", "by": "twilio", "call_status": call_status})
            if c.incident_id is None and c.final is None:
                await self._flush_refused(c, "dialin.abandoned", reason="caller hung up in the menu")
        await self._caller_gone(c)

    async def _caller_gone(self, c: _Caller) -> None:
        if c.incident_id is not None and self._waiting.get(c.incident_id) is c:
            del self._waiting[c.incident_id]
        self._grants.revoke(c.call_sid)
        self._callers.pop(c.call_sid, None)
        radio = c.radio
        if radio is not None and radio.call is not None and c.bridge is None and not c.radio_released:
            # handed over, but the stream never came: the radiologist must not stay on a dead line
            c.radio_released = True
            try:
                await self._store.record_leg(
                    radio.order.leg_id,
                    "leg.bridge_refused",
                    {"reason": "the technologist hung up before the media stream opened"},
                )
            finally:
                await self._say_and_hang_up(radio.call, dialin_message(self._menu, "caller_left"))

    # --------------------------------------------------------------------------------- accept hooks

    async def on_twilio_accepted(self, order: LegOrder, call: TwilioCallRef) -> Handover | None:
        """``TwilioVoiceChannel``'s accept hook: put the radiologist and the waiting caller in one conference."""
        c = self._waiting.get(order.incident_id)
        if c is None or c.ended or c.radio is not None:
            return None
        async with c.lock:
            if c.ended or c.radio is not None or c.final is not None:
                return None
            c.radio = _Radio(order, "twilio", call_sid=call.call_sid)
            name = f"incident-{order.incident_id}"
            callback = self._twilio.url(f"/twilio/dialin/conference/{c.call_sid}")
            person = spoken_name(order.person_name)
            c.final = conference(
                [dialin_message(self._menu, "accepted", name=person)],
                name,
                after=[dialin_message(self._menu, "radiologist_left")],
                status_callback=callback,
                voice=self._voice,
            )
            radio_twiml = conference(
                [RADIOLOGIST_CONNECTING.format(room=speakable_room(order.room_code))],
                name,
                after=[dialin_message(self._menu, "caller_left")],
                status_callback=callback,
                voice=self._voice,
            )
            c.announced = True
            await self._fact(c, "dialin.accepted_announced", {"person": order.person_name})
            await self._fact(
                c,
                "bridge.started",
                {
                    "via": "twilio_conference",
                    "conference": name,
                    "radiologist_leg": order.leg_id,
                    "person": order.person_name,
                    "caller_leg": c.leg_id,
                },
            )
            await self._store.record_leg(
                order.leg_id, "leg.bridged", {"caller_leg": c.leg_id, "via": "conference"}
            )
            self._update_caller(c, c.final)
        c.log.info("radiologist leg %s joins the caller in conference %s", order.leg_id, name)
        return Handover(radio_twiml, "dialin_conference")

    async def on_sip_accepted(self, order: LegOrder, call: Call) -> bool:
        """``SipChannel``'s accept hook: connect the waiting caller's Twilio call to this SIP leg (a media
        stream bridged to its RTP session). False when no Twilio caller waits for the incident."""
        c = self._waiting.get(order.incident_id)
        if c is None or c.ended or c.radio is not None or call.state is not CallState.CONFIRMED:
            return False
        if call.media is None:
            return False
        async with c.lock:
            if c.ended or c.radio is not None or c.final is not None:
                return False
            c.radio = _Radio(order, "sip", call=call)

            def attach(ctx: StreamContext) -> StreamEndpoint:
                return self._attach_sip(c, ctx)

            token = self._grants.issue(
                incident_id=order.incident_id,
                leg_id=c.leg_id,
                call_sid=c.call_sid,
                purpose="dialin",
                attach=attach,
            )
            c.final = connect_stream(
                [dialin_message(self._menu, "accepted", name=spoken_name(order.person_name))],
                stream_url(self._twilio.public_base_url),
                {"token": token},
                after=[dialin_message(self._menu, "radiologist_left")],
                voice=self._voice,
            )
            c.announced = True
            await self._fact(c, "dialin.accepted_announced", {"person": order.person_name})
            self._update_caller(c, c.final)
            self._tasks.spawn(self._await_stream(c, c.radio))
        c.log.info("radiologist SIP leg %s handed over: the caller is sent to a media stream", order.leg_id)
        return True

    async def _await_stream(self, c: _Caller, radio: _Radio) -> None:
        """Wait at most :attr:`stream_timeout_s` for Twilio to open the stream handed to the caller; if it does
        not, fail the bridge on both sides (an emergency call never waits on a dead line). The radiologist
        hanging up meanwhile ends the wait at once: the caller is told the doctor has left."""
        assert radio.call is not None
        order, call = radio.order, radio.call
        give_up = self._clock.monotonic() + self.stream_timeout_s
        with wake_when_ended(call, c.stream_wake) as radio_done:
            while c.bridge is None and not c.ended and not radio_done.done():
                left = give_up - self._clock.monotonic()
                if left <= 0:
                    break
                await nap(self._clock, c.stream_wake, left)
        left_early = call.state is CallState.ENDED
        if left_early:
            reason = "the radiologist hung up before the media stream opened"
            tell = [dialin_message(self._menu, "radiologist_left")]
        else:
            reason = f"no media stream from Twilio call {c.call_sid} within {self.stream_timeout_s:g} s"
            tell = [dialin_message(self._menu, "failed", fallback=self._fallback)]
        async with c.lock:
            if c.bridge is not None or c.ended:
                return  # bridged (_bridged reports it), or the caller left (_caller_gone releases the radiologist)
            # before any await: a stream opened from now on is refused, a hang-up does not release twice
            self._grants.revoke(c.call_sid)
            c.radio_released = True
            c.log.warning("radiologist SIP leg %s released: %s", order.leg_id, reason)
            self._update_caller(c, self._end(c, tell))  # moved on whatever the evidence writes do
            try:
                await self._fact(
                    c,
                    "bridge.failed",
                    {"via": "twilio_stream", "radiologist_leg": order.leg_id, "reason": reason},
                )
                await self._fact(c, "leg.bye_sent", {"reason": "bridge-failed"})
                if not left_early:
                    await self._store.record_leg(order.leg_id, "leg.released", {"reason": reason})
            finally:
                if not left_early:
                    failed = STREAM_FAILED_TEXT.format(room=speakable_room(order.room_code))
                    self._tasks.spawn(self._say_and_hang_up(call, failed))

    def _attach_sip(self, c: _Caller, ctx: StreamContext) -> StreamEndpoint:
        radio = c.radio
        if radio is None or radio.call is None or radio.call.media is None or c.bridge is not None:
            raise MediaError("no SIP leg waits for this stream: expected one handed over radiologist call")
        if radio.call.state is CallState.ENDED:
            raise MediaError("the radiologist's SIP call has ended: nothing to bridge the stream to")
        if c.ended or c.radio_released:
            raise MediaError(
                f"the stream of call {c.call_sid} came too late (caller ended={c.ended}, radiologist released="
                f"{c.radio_released}): expected it while both sides wait"
            )
        wake = asyncio.Event()
        bridge = RtpStreamBridge(self._clock, radio.call.media, ctx, on_close=lambda _reason: wake.set())
        c.bridge = bridge
        c.stream_wake.set()
        self._tasks.spawn(self._bridged(c, radio, bridge, wake))
        return bridge

    async def _bridged(self, c: _Caller, radio: _Radio, bridge: RtpStreamBridge, wake: asyncio.Event) -> None:
        """Evidence of a stream bridge while it lasts; when one side leaves, the other is told and hung up."""
        assert radio.call is not None
        order, call = radio.order, radio.call
        report = BridgeReport(
            self._store, c.facts, self._clock, radiologist_leg=order.leg_id, via="twilio_stream_bridge"
        )
        await self._fact(
            c,
            "bridge.started",
            {
                "via": "twilio_stream",
                "stream_sid": bridge.stream_sid,
                "call_sid": c.call_sid,
                "radiologist_leg": order.leg_id,
                "person": order.person_name,
                "caller_leg": c.leg_id,
            },
        )
        await self._store.record_leg(order.leg_id, "leg.bridged", {"caller_leg": c.leg_id, "via": "stream"})
        with wake_when_ended(call, wake) as radio_done:
            while bridge.closed is None and not radio_done.done():
                if await report.update(bridge.snapshot()):
                    c.connected = True
                    c.log.info("incident connected: the technologist and the radiologist talk (stream)")
                await nap(self._clock, wake, self.settings.poll_s)
        by = "caller" if bridge.closed is not None else "radiologist"
        if by == "radiologist":
            bridge.hang_up("radiologist left")  # Twilio then says "the doctor has left" and hangs up
        await report.ended(by, {d.name: d.snapshot() for d in bridge.snapshot()})
        if by == "caller":
            await self._say_and_hang_up(call, dialin_message(self._menu, "caller_left"))

    # ---------------------------------------------------------------------------- conference callbacks

    async def conference(self, caller_sid: str, params: Mapping[str, str]) -> None:
        """Conference status callbacks (participant join/leave, end): ``bridge.*`` events, connected."""
        c = self._callers.get(caller_sid)
        if c is None:
            log.info("conference callback for a dial-in call not live here: %s", caller_sid)
            return
        event = params.get("StatusCallbackEvent", "")
        sid = params.get("CallSid", "")
        key = (params.get("SequenceNumber", "") + ":" + sid, event)
        async with c.lock:
            if key in c.seen or c.radio is None:
                return
            c.seen.add(key)
            radio = c.radio
            who = "caller" if sid == c.call_sid else "radiologist" if sid == radio.call_sid else "other"
            match event:
                case "participant-join":
                    c.joined.add(who)
                    await self._fact(c, "bridge.participant_joined", {"who": who, "call_sid": sid})
                    if {"caller", "radiologist"} <= c.joined and not c.connected:
                        c.connected = True
                        await self._mark_connected(c, radio.order.leg_id, "twilio_conference")
                case "participant-leave":
                    await self._fact(c, "bridge.participant_left", {"who": who, "call_sid": sid})
                case "conference-end":
                    await self._fact(c, "bridge.ended", {"via": "twilio_conference"})
                case _:
                    pass

    # ------------------------------------------------------------------------------------- REST/SIP

    def _update_caller(self, c: _Caller, twiml: str) -> None:
        """Move the caller's live call on now (the next hold redirect would get the same document anyway)."""
        self._tasks.spawn(self._update(c, twiml))

    async def _update(self, c: _Caller, twiml: str) -> None:
        try:
            await self._client.calls(c.call_sid).update_async(twiml=twiml)
        except TwilioRestException as exc:
            c.log.info("could not update the caller's call %s: %s", c.call_sid, exc)
            await self._fact(c, "dialin.update_failed", {"reason": f"HTTP {exc.status}, code {exc.code}"})
            return
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            c.log.warning("could not reach Twilio to update call %s: %s", c.call_sid, exc)
            await self._fact(c, "dialin.update_failed", {"reason": f"{type(exc).__name__}: {exc}"})
            return
        await self._fact(c, "dialin.call_updated", {"call_sid": c.call_sid})

    async def _say_on(self, call: Call, text: str) -> None:
        if self._prompts is None or call.state is CallState.ENDED:
            return
        try:
            await call.play(await self._prompts.render(text))
        except (SipError, MediaError, PromptError, OSError) as exc:
            log.info("[call=%s] could not play %r: %s", call.id, text[:40], exc)

    async def _say_and_hang_up(self, call: Call, text: str) -> None:
        """Tell the SIP radiologist why the call ends (unless they already left), then hang up."""
        await self._say_on(call, text)
        if call.state is not CallState.ENDED:
            with contextlib.suppress(SipError):
                await call.hangup()

    # ------------------------------------------------------------------------------------- evidence

    def _caller(self, call_sid: str, params: Mapping[str, str]) -> _Caller | None:
        c = self._callers.get(call_sid)
        if c is None or params.get("CallSid", "") != call_sid:
            log.info(
                "dial-in webhook for call %s not live here (CallSid %s)", call_sid, params.get("CallSid")
            )
            return None
        return c

    async def _fact(self, c: _Caller, kind: str, data: dict[str, Any]) -> None:
        """A leg fact: written at once when the leg exists, else kept with its instant until it does."""
        await self._store.fact(c.facts, kind, data)

    async def _flush_refused(self, c: _Caller, kind: str, **data: Any) -> None:
        call = {"from": c.caller, "to": c.to, "call_sid": c.call_sid, "room": c.room}
        await self._store.flush_refused(c.facts, kind, call, **data)
        log.info("Twilio dial-in call %s: %s (%s)", c.call_sid, kind, data.get("reason"))

    async def _mark_connected(self, c: _Caller, radiologist_leg: str, via: str) -> None:
        if await self._store.mark_connected(c.facts, radiologist_leg, via=via):
            c.log.info("incident connected: the technologist and the radiologist talk (%s)", via)

    @staticmethod
    def _room_by_caller_id(caller: str, rooms: Sequence[tuple[str, str | None]]) -> str | None:
        """The room whose phone's number (the user part of its SIP URI, as E.164) is the caller's number."""
        try:
            number = normalize_e164(caller)
        except PhoneNumberError:
            return None

        def same_number(uri: URI) -> bool:
            try:
                return uri.user is not None and normalize_e164(uri.user) == number
            except PhoneNumberError:
                return False

        return room_by_phone(rooms, same_number)
