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
   with its steps. (The store, the facts and the bridge report are shared with the Twilio dial-in:
   :mod:`escalation.dialin_common`.)
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
   A radiologist who accepted on a Twilio voice call is offered by :meth:`DialIn.twilio_accepted_handler`'s
   handler (a ``TwilioAcceptedHandler``): their call gets ``<Connect><Stream>`` with a one-time grant, and when
   Twilio opens the stream it is cross-connected with the caller's RTP session by
   :class:`~escalation.twilio_streams.RtpStreamBridge` (the same bridge the Twilio dial-in uses the other way
   round), with the same events. When the caller hangs up the stream is closed from our side and Twilio tells
   the radiologist; when the radiologist hangs up the stream stops and the caller is told.
   If the acceptor is not on a voice call (SMS, pager…), the caller is told after ``accept_wait_s`` that the
   doctor will contact the room.

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

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comms.clock import Clock
from comms.db.types import Channel as ChannelKind
from comms.db.types import IncidentState as DbState
from comms.errors import ValidationError
from comms.phone import mask
from escalation.channel import LegOrder
from escalation.dialin_common import (
    RADIOLOGIST_CONNECTING,
    BridgeReport,
    CallFacts,
    CallLog,
    DialInStore,
    DirectionLike,
    FactsOwner,
    acceptor_name,
    hold_status_data,
    nap,
    raise_from_menu,
    room_by_phone,
    wake_when_ended,
)
from escalation.runner import EscalationRunner
from escalation.twilio_streams import (
    Handover,
    RtpStreamBridge,
    StreamContext,
    StreamEndpoint,
    StreamGrants,
    TwilioAcceptedHandler,
    TwilioCallRef,
    stream_url,
)
from ivr.dialin import (
    EXTENSION_USER,
    DialPlan,
    dial_plan,
    dialin_menu,
    dialin_message,
    same_phone,
    speakable_number,
    spoken_name,
)
from ivr.driver import run_menu
from ivr.machine import Finish, MenuMachine
from ivr.menu import Menu, Outcome, speakable_room
from ivr.prompts import PromptError, PromptRenderer
from ivr.twiml import Voice, connect_stream
from media.errors import MediaError
from media.legbridge import LegBridge
from sip.errors import SipError
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

    def menu(self, *, room_known: bool) -> Menu:
        """The dial-in menu with these timeouts and retries (from the severity step when the room is known)."""
        return dialin_menu(
            room_known=room_known,
            timeout_s=self.ivr_timeout_s,
            inter_digit_timeout_s=self.inter_digit_timeout_s,
            retries=self.retries,
        )


def chain_accepted(*handlers: AcceptedCallHandler) -> AcceptedCallHandler:
    """One handler that offers an accepted call to each of ``handlers`` in turn until one keeps it."""

    async def offer(order: LegOrder, call: Call) -> bool:
        for handler in handlers:
            if await handler(order, call):
                return True
        return False

    return offer


Radio = Call | TwilioCallRef
"""The accepted radiologist's call handed over: a SIP call, or a Twilio call to be joined by a media stream."""


@dataclass
class _Session(FactsOwner):
    """One dial-in call."""

    call: Call
    log: CallLog
    inputs: asyncio.Queue[tuple[Any, ...]] = field(default_factory=asyncio.Queue)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    facts: CallFacts = field(default_factory=CallFacts)
    room: str | None = None
    prompt: asyncio.Task[None] | None = None
    radio: asyncio.Future[tuple[LegOrder, Radio]] | None = None
    stream: RtpStreamBridge | None = None
    """A Twilio radiologist's media stream, bridged to this call once Twilio opened it."""
    takes_stream: bool = True
    """False once a stream that opens now must be refused (the caller left, or it came too late)."""
    stream_refused: bool = False
    """The caller left before the radiologist's stream opened (``leg.bridge_refused`` is written)."""
    bridged: bool = False
    refusal: tuple[str, dict[str, Any]] | None = None
    """For a call that raised no incident: the global event (kind, data) written once the call is over."""
    announced: bool = False
    radio_released: bool = False
    """Set once :meth:`DialIn._connect` owns the radiologist's call (it ends it when it must)."""

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
        self._store = DialInStore(session_factory, clock, node_id=node_id)
        self._runner = runner
        self._prompts = prompts
        self._clock = clock
        self.settings = settings or DialInSettings()
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
        s = _Session(call, CallLog(log, {"incident": None, "leg": None}))
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

    def twilio_accepted_handler(
        self, grants: StreamGrants, public_base_url: str, voice: Voice | None = None
    ) -> TwilioAcceptedHandler:
        """``TwilioVoiceChannel``'s accept hook: when a technologist waits on this dial-in, the radiologist's
        Twilio call is answered with ``<Connect><Stream>`` (a one-time grant from ``grants``) and the stream is
        bridged to the caller's RTP leg. None (not kept) when no SIP caller waits for the incident."""
        url = stream_url(public_base_url)
        speech = voice or Voice()

        async def offer(order: LegOrder, call: TwilioCallRef) -> Handover | None:
            s = self._waiting.get(order.incident_id)
            if s is None or s.ended or s.radio is None or s.radio.done() or s.call.media is None:
                return None

            def attach(ctx: StreamContext) -> StreamEndpoint:
                return self._attach_stream(s, ctx)

            token = grants.issue(
                incident_id=order.incident_id,
                leg_id=order.leg_id,
                call_sid=call.call_sid,
                purpose="dialin",
                attach=attach,
            )
            s.radio.set_result((order, call))
            s.wake.set()
            s.log.info(
                "radiologist Twilio leg %s handed over: its call is sent to a media stream", order.leg_id
            )
            twiml = connect_stream(
                [RADIOLOGIST_CONNECTING.format(room=speakable_room(order.room_code))],
                url,
                {"token": token},
                after=[dialin_message(self._menu, "caller_left")],
                voice=speech,
            )
            return Handover(twiml, "dialin_stream")

        return offer

    def _attach_stream(self, s: _Session, ctx: StreamContext) -> StreamEndpoint:
        """The radiologist's stream opened: cross-connect it with the caller's RTP session."""
        if s.ended or not s.takes_stream or s.stream is not None or s.call.media is None:
            raise MediaError(
                "no technologist waits for this stream: the dial-in call has ended or is bridged"
            )
        s.stream = RtpStreamBridge(
            self._clock, s.call.media, ctx, names=("radiologist", "caller"), on_close=lambda _r: s.wake.set()
        )
        s.wake.set()
        return s.stream

    # ------------------------------------------------------------------------------------------- the call

    async def _serve(self, s: _Session) -> None:
        call = s.call
        await self._fact(
            s,
            "leg.invite_received",
            {"from": str(call.remote_uri), "to": str(call.request_uri), "call_id": call.call_id},
        )
        rooms = await self._store.rooms()
        plan = dial_plan([code for code, _ in rooms], self.settings.dial_codes)
        if plan.ambiguous:
            log.warning(
                "dial-in: room codes %s spell the same digits; give them configured codes", plan.ambiguous
            )
        caller = call.remote_uri
        s.room = room_by_phone(
            rooms, lambda uri: same_phone((caller.user, caller.host), (uri.user, uri.host))
        )
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
        incident_id, severity = await raise_from_menu(
            self._store, self._runner, s.facts, s.room, finish, source=SOURCE, log=s.log
        )
        if incident_id is None:
            s.refusal = ("dialin.failed", {"reason": "raise failed"})
            await self._say(s, dialin_message(self._menu, "failed", fallback=self._fallback))
            await self._hang_up(s, "failed")
            return
        # registered before any await: the radiologist's accepted call may come at any time from now on
        s.facts.incident_id = incident_id
        s.radio = asyncio.get_running_loop().create_future()
        self._waiting[incident_id] = s
        await self._store.open_leg(
            s.facts,
            incident_id,
            channel=ChannelKind.SIP,
            address=str(call.remote_uri),
            external_ref=call.call_id,
            created={
                "from": str(call.remote_uri),
                "to": str(call.request_uri),
                "call_id": call.call_id,
                "room": s.room,
            },
        )
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
        menu = self.settings.menu(room_known=s.room is not None)
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
            state = await self._store.incident_state(s.incident_id)
            if state in (DbState.ACCEPTED, DbState.CONNECTED):
                if accepted_at is None:
                    accepted_at = now
                    name = acceptor_name(await self._store.hold_status(s.incident_id))
                    await self._stop_prompt(s)
                    self._start_prompt(s, dialin_message(self._menu, "accepted", name=spoken_name(name)))
                    s.announced = True
                    await self._fact(s, "dialin.accepted_announced", {"person": name})
                elif now - accepted_at >= st.accept_wait_s:
                    name = acceptor_name(await self._store.hold_status(s.incident_id))
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
                status = await self._store.hold_status(s.incident_id)
                text = status.text(self._menu, fallback=self._fallback)
                self._start_prompt(s, text)
                next_status = now + st.status_interval_s
                data = hold_status_data(status, text)
                # RTP from the caller so far: with an echoing peer it shows our status reaching them
                data["rtp_received"] = s.call.media.stats.packets_received if s.call.media else None
                await self._fact(s, "dialin.hold_status", data)
            if now - start > st.max_hold_s:
                await self._fact(s, "dialin.hold_limit", {"seconds": st.max_hold_s})
                await self._say(s, dialin_message(self._menu, "failed", fallback=self._fallback))
                await self._hang_up(s, "hold-limit")
                return
            await self._nap(s, st.poll_s)

    async def _nap(self, s: _Session, seconds: float) -> None:
        await nap(self._clock, s.wake, seconds)

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
        if isinstance(radio, TwilioCallRef):
            await self._connect_stream(s, order, radio)
            return
        if s.ended:
            await self._store.record_leg(
                order.leg_id, "leg.bridge_refused", {"reason": "the technologist hung up"}
            )
            await self._end_radio_call(radio)
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
        report = await self._bridge_started(s, order, "sip_dialin_bridge", {}, {})
        try:
            with wake_when_ended(radio, s.wake) as radio_done:
                by = await self._supervise(s, report, bridge.snapshot, radio_done.done)
        finally:
            bridge.stop()
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
        await report.ended(by, directions)
        if by == "caller":
            await self._end_radio_call(radio)
        else:
            await self._say(s, dialin_message(self._menu, "radiologist_left"))
            await self._hang_up(s, "radiologist-left")

    async def _connect_stream(self, s: _Session, order: LegOrder, radio: TwilioCallRef) -> None:
        """The radiologist accepted on a Twilio call, answered with ``<Connect><Stream>``: wait for Twilio to open
        the stream (:meth:`_attach_stream` bridges it), report it, and release the other side at the end."""
        give_up = self._clock.monotonic() + self.settings.accept_wait_s
        while s.stream is None and not s.ended and self._clock.monotonic() < give_up:
            await self._nap(s, self.settings.poll_s)
        bridge = s.stream
        if bridge is None:
            s.takes_stream = False  # a stream opened from now on is closed: Twilio tells the radiologist
        if s.ended:
            s.stream_refused = True
            await self._store.record_leg(
                order.leg_id, "leg.bridge_refused", {"reason": "the technologist hung up"}
            )
            if bridge is not None:
                bridge.hang_up("the technologist left")
            return
        if bridge is None:
            reason = (
                f"no media stream from Twilio call {radio.call_sid} within {self.settings.accept_wait_s} s"
            )
            await self._fact(s, "bridge.failed", {"radiologist_leg": order.leg_id, "reason": reason})
            await self._say(s, dialin_message(self._menu, "failed", fallback=self._fallback))
            await self._hang_up(s, "bridge-failed")
            return
        extra = {"via": "twilio_stream", "stream_sid": bridge.stream_sid, "call_sid": radio.call_sid}
        report = await self._bridge_started(s, order, "sip_dialin_stream_bridge", extra, {"via": "stream"})
        by = await self._supervise(s, report, bridge.snapshot, lambda: bridge.closed is not None)
        if by == "caller":
            bridge.hang_up(
                "the technologist left"
            )  # Twilio then says "the technologist has left" and hangs up
        await report.ended(by, {d.name: d.snapshot() for d in bridge.snapshot()})
        if by == "radiologist":
            await self._say(s, dialin_message(self._menu, "radiologist_left"))
            await self._hang_up(s, "radiologist-left")

    async def _bridge_started(
        self, s: _Session, order: LegOrder, via: str, started: dict[str, Any], bridged: dict[str, Any]
    ) -> BridgeReport:
        s.bridged = True
        report = BridgeReport(self._store, s.facts, self._clock, radiologist_leg=order.leg_id, via=via)
        await self._fact(
            s,
            "bridge.started",
            {**started, "radiologist_leg": order.leg_id, "person": order.person_name, "caller_leg": s.leg_id},
        )
        await self._store.record_leg(order.leg_id, "leg.bridged", {"caller_leg": s.leg_id, **bridged})
        s.log.info("bridged to %s (leg %s)", order.person_name, order.leg_id)
        return report

    async def _supervise(
        self,
        s: _Session,
        report: BridgeReport,
        directions: Callable[[], Sequence[DirectionLike]],
        radio_gone: Callable[[], bool],
    ) -> str:
        """Report the bridge until one side leaves; returns who left (``caller`` or ``radiologist``)."""
        while not s.ended and not radio_gone():
            if await report.update(directions()):
                s.log.info("incident connected: two-way audio between the technologist and the radiologist")
            await self._nap(s, self.settings.poll_s)
        return "caller" if s.ended else "radiologist"

    async def _release_radio(self, s: _Session) -> None:
        """A radiologist's call handed over and still up when the dial-in ends (caller left, or a failure): end it."""
        if s.radio is None or not s.radio.done():
            return
        order, radio = s.radio.result()
        if isinstance(radio, TwilioCallRef):
            s.takes_stream = False
            if s.stream_refused or (s.stream is not None and s.stream.closed is not None):
                return
        elif radio.state is CallState.ENDED:
            return
        with contextlib.suppress(Exception):
            reason = "the dial-in failed" if s.radio_released else "the technologist left"
            await self._store.record_leg(order.leg_id, "leg.released", {"reason": reason})
        if isinstance(radio, TwilioCallRef):
            if s.stream is not None:  # else the stream is refused when it opens, and Twilio tells them
                s.stream.hang_up("the technologist left")
            return
        await self._end_radio_call(radio)

    async def _end_radio_call(self, radio: Call) -> None:
        await self._say_on(radio, dialin_message(self._menu, "caller_left"))
        with contextlib.suppress(SipError):
            await radio.hangup()

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
        await self._store.fact(s.facts, kind, data, utc, mono)

    async def _flush_refused(self, s: _Session, kind: str, **data: Any) -> None:
        """A call that raised no incident: one event in the global chain with every step it went through."""
        call = s.call
        identity = {"from": str(call.remote_uri), "to": str(call.request_uri), "call_id": call.call_id}
        await self._store.flush_refused(s.facts, kind, {**identity, "room": s.room}, **data)
        log.info("dial-in call %s: %s (%s)", call.call_id, kind, data.get("reason"))
