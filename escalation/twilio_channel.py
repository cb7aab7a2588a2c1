"""Twilio channels: alert calls over the public phone network (``pstn_voice``) and SMS pages (``sms``).

Voice
-----
``place()`` asks Twilio (the real ``twilio`` library, async HTTP client) for a call to the contact's E.164
number with ``url`` = our TwiML webhook, ``statusCallback`` for initiated/ringing/answered/completed and
answering-machine detection (``MachineDetection=Enable``). The leg then lives in memory, keyed by leg id and
checked against the CallSid Twilio reports, until Twilio's final status callback (or a guard timer) ends it:

* the TwiML fetch carries ``AnsweredBy``: ``machine_*``/``fax`` is voicemail, *not reached*: ``leg.voicemail``
  and ``leg.ended`` (cause ``no_answer``) at once, so the tier moves on without waiting for its deadline;
  ``human``/``unknown`` starts the radiologist alert menu (:class:`ivr.twiml.TwimlCall`, the same
  :class:`~ivr.machine.MenuMachine` the SIP channel runs). ``1`` asks the runner to accept
  (:meth:`LegReporter.try_accept`), ``2`` declines, silence/invalid ends the call as not answered;
* status callbacks arrive late, duplicated and out of order: a :class:`StatusSequencer` releases them in
  ``SequenceNumber`` order (a gap is waited for ``status_hold_s`` at most), drops duplicates, and each is
  recorded as ``leg.twilio_status`` with CallSid, ParentCallSid, SipResponseCode, Twilio's ``Timestamp``
  (1 s resolution) and our own receive time (ms), then mapped to ``leg.trying``/``leg.ringing``/
  ``leg.answered``/``leg.ended``;
* ``cancel()`` updates the call: ``status=canceled`` before answer (``leg.cancel_sent``), ``completed`` after
  (``leg.bye_sent``);
* a person with a PIN (``LegOrder.require_pin``) gets the PIN step; digits are checked by the runner
  (:meth:`LegReporter.check_pin`) and PIN digits reach the evidence as ``x``;
* :meth:`TwilioVoiceChannel.announce` is the severe path's on-site activation over the phone network: the same
  call machinery, the message spoken twice, never an accept.

SMS
---
A page text with no PHI (severity, site, room code, incident code, link). ``leg.invite_sent`` when we ask
Twilio, ``leg.trying`` when Twilio took it; status callbacks are ``leg.sms_status`` and ``delivered`` becomes
``leg.delivered`` -- never an accept; ``undelivered``/``failed`` end the leg (``failed``). A reply of ``1`` or
``ACK <code>`` from a number that is an active ``sms`` contact of a person accepts, through the runner, for that
person's most recent SMS leg of an open incident (the one with that code for ``ACK``); a person with a PIN must
append it (``ACK <code> <PIN>``), and the evidence keeps ``+PIN``, never the digits. The leg stays live until
an accept, the tier's timeout or the incident's end cancels it.

Both channels answer webhooks (called by :mod:`comms.twilio_web` after the signature check) quickly: database
writes only, no outbound HTTP inside a webhook.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from comms import phi
from comms.clock import Clock, TimerHandle
from comms.db.events import format_at
from comms.db.models import CallLeg, ContactMethod, Event, Incident, Person
from comms.db.types import Channel as ChannelKind
from comms.db.types import ContactKind, Direction
from comms.db.types import IncidentState as DbIncidentState
from comms.phone import PhoneNumberError, mask, normalize_e164
from escalation.channel import AnnounceOrder, LegOrder, LegReporter
from escalation.twilio_streams import TwilioAcceptedHandler, TwilioCallRef
from ivr.menu import CollectStep, Outcome, alert_menu, alert_variables, message_text
from ivr.twiml import Turn, TwimlCall, Voice, hang_up, reply_message, say_and_hang_up

log = logging.getLogger(__name__)

ACCEPTED_TEXT = "Thank you. You have accepted incident {code}. The technologist has been told."
DECLINED_TEXT = "Declined. We are calling the next radiologist."
NOT_REACHED_CAUSE = "no_answer"
_TIMEOUT_REASONS = frozenset({"tier-timeout", "ring-timeout"})
_FINAL_CALL_STATUSES = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
_MACHINE = re.compile(r"^(machine_.*|fax)$")


@dataclass(frozen=True)
class TwilioSettings:
    """What the Twilio channels and webhooks need (from config; secrets never logged)."""

    account_sid: str
    auth_token: str
    from_number: str
    """Our Twilio number, E.164 (caller ID of alert calls, sender of SMS pages)."""
    public_base_url: str
    """The URL Twilio reaches us at (``https://comms.example.org``); webhook signatures are checked against it."""
    api_base_url: str | None = None
    """Send REST calls here instead of ``https://api.twilio.com`` (the fake Twilio in tests)."""
    voice: str = "Polly.Joanna"
    language: str = "en-US"
    ivr_timeout_s: float = 5.0
    ivr_retries: int = 2
    status_hold_s: float = 2.0
    """How long an out-of-order status callback waits for the ones before it."""
    max_call_s: float = 900.0
    """After ring timeout + this, a call with no final status callback is ended as failed."""
    dialin_number: str | None = None
    """Our Twilio number for the technologist dial-in (E.164; its voice webhook is ``/twilio/dialin``); None:
    no dial-in over Twilio."""
    hold_pause_s: int = 2
    """A dial-in caller on hold is asked back (``<Pause>`` + ``<Redirect>``) this often, in whole seconds."""

    def url(self, path: str) -> str:
        return self.public_base_url.rstrip("/") + path


class TwilioAsyncHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """Twilio's async HTTP client, sending Basic auth as a header (aiohttp 3.14 deprecates ``BasicAuth``)."""

    def __init__(self, *, request_timeout_s: float = 10.0, **kwargs: Any) -> None:
        super().__init__(pool_connections=False, **kwargs)
        # our own pooled session, so that every REST call is bounded (the library passes no timeout)
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=request_timeout_s))

    async def request(self, method: str, url: str, **kwargs: Any) -> Any:
        auth = kwargs.pop("auth", None)
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            kwargs["headers"] = {**(kwargs.get("headers") or {}), "Authorization": f"Basic {token}"}
        return await super().request(method, url, **kwargs)


class LocalApiHttpClient(TwilioAsyncHttpClient):
    """The client with scheme and host rewritten to ``api_base_url`` (a fake Twilio API on loopback)."""

    def __init__(self, api_base_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        parts = urlsplit(api_base_url)
        self._scheme, self._netloc = parts.scheme, parts.netloc

    async def request(self, method: str, url: str, **kwargs: Any) -> Any:
        parts = urlsplit(url)
        local = urlunsplit((self._scheme, self._netloc, parts.path, parts.query, parts.fragment))
        return await super().request(method, local, **kwargs)


def twilio_client(settings: TwilioSettings) -> Any:
    """A ``twilio.rest.Client`` with the async HTTP client; build it inside the running loop, close with
    :func:`close_twilio_client`."""
    http: TwilioAsyncHttpClient = (
        LocalApiHttpClient(settings.api_base_url) if settings.api_base_url else TwilioAsyncHttpClient()
    )
    return Client(settings.account_sid, settings.auth_token, http_client=http)


async def close_twilio_client(client: Any) -> None:
    await client.http_client.close()


T = TypeVar("T")


class StatusSequencer(Generic[T]):
    """Release items in ``SequenceNumber`` order (0, 1, 2 ...); drop duplicates; do not wait for a gap longer
    than ``hold_s``. Sans-I/O: the adapter calls :meth:`timer` at :meth:`next_deadline`."""

    def __init__(self, hold_s: float) -> None:
        self._hold_s = hold_s
        self._next = 0
        self._held: dict[int, T] = {}
        self._hold_until: float | None = None

    def push(self, seq: int, item: T, now: float) -> tuple[list[T], bool]:
        """Offer item ``seq``: returns the items now releasable, and whether ``seq`` was a duplicate."""
        if seq < self._next or seq in self._held:
            return [], True
        self._held[seq] = item
        return self._release(now), False

    def timer(self, now: float) -> list[T]:
        if self._hold_until is None or now < self._hold_until or not self._held:
            return []
        skipped = min(self._held)
        log.info("status callbacks %d..%d never came: going on at %d", self._next, skipped - 1, skipped)
        self._next = skipped
        self._hold_until = None
        return self._release(now)

    def flush(self) -> list[T]:
        """Everything held, in order (the call is over)."""
        out = [self._held[k] for k in sorted(self._held)]
        if self._held:
            self._next = max(self._held) + 1
        self._held.clear()
        self._hold_until = None
        return out

    def next_deadline(self) -> float | None:
        return self._hold_until

    def _release(self, now: float) -> list[T]:
        out: list[T] = []
        while self._next in self._held:
            out.append(self._held.pop(self._next))
            self._next += 1
        if not self._held:
            self._hold_until = None
        elif self._hold_until is None:
            self._hold_until = now + self._hold_s
        return out


class _Recent(Generic[T]):
    """A bounded memory of keys seen (oldest forgotten first), with an optional value per key."""

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._items: OrderedDict[Any, T | None] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: Any) -> T | None:
        return self._items.get(key)

    def add(self, key: Any, value: T | None = None) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)


async def _set_external_ref(sessions: async_sessionmaker[AsyncSession], leg_id: str, ref: str) -> None:
    async with sessions() as s, s.begin():
        await s.execute(sa.update(CallLeg).where(CallLeg.id == leg_id).values(external_ref=ref))


def _int_or_none(value: Any) -> int | None:
    text = str(value or "")
    return int(text) if text.isdigit() else None


def _twilio_error(exc: TwilioRestException) -> str:
    return f"Twilio refused: HTTP {exc.status}, code {exc.code}: {exc.msg}"


# ------------------------------------------------------------------------------------------------------ voice


@dataclass
class _VoiceLeg:
    leg_id: str
    incident_id: str
    address: str
    ring_timeout_s: float
    reporter: LegReporter
    sequencer: StatusSequencer[dict[str, Any]]
    order: LegOrder | None = None
    """The alert being placed (None for an announcement)."""
    message: str | None = None
    """An announcement's message (the severe path's on-site activation): spoken twice, never an accept."""
    call_sid: str | None = None
    ivr: TwimlCall | None = None
    first_twiml: str | None = None
    answered: bool = False
    cancel_reason: str | None = None
    end_cause: str | None = None
    ended: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    hold_timer: TimerHandle | None = None


class TwilioVoiceChannel:
    """Alert calls to ``pstn_voice`` contacts through Twilio Programmable Voice."""

    kind = "pstn_voice"

    def __init__(
        self,
        client: Any,
        settings: TwilioSettings,
        clock: Clock,
        sessions: async_sessionmaker[AsyncSession],
        *,
        on_accepted: TwilioAcceptedHandler | None = None,
    ) -> None:
        self.on_accepted = on_accepted
        """Offered every call whose person won the accept (a conference with the technologist on the line, a
        media stream to the room); without it, or when it declines, the radiologist is thanked and hung up."""
        self._client = client
        self._settings = settings
        self._clock = clock
        self._sessions = sessions
        self._menus = {
            pin: alert_menu(require_pin=pin, timeout_s=settings.ivr_timeout_s, retries=settings.ivr_retries)
            for pin in (False, True)
        }
        self._menu = self._menus[False]
        self._voice = Voice(settings.voice, settings.language)
        self._legs: dict[str, _VoiceLeg] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def live_legs(self) -> list[str]:
        return sorted(self._legs)

    # --- the Channel interface -----------------------------------------------------------------------

    async def place(self, order: LegOrder, reporter: LegReporter) -> None:
        await self._run(
            _VoiceLeg(
                order.leg_id,
                order.incident_id,
                order.address,
                order.ring_timeout_s,
                reporter,
                StatusSequencer(self._settings.status_hold_s),
                order=order,
            )
        )

    async def announce(self, order: AnnounceOrder, reporter: LegReporter) -> None:
        """The on-site activation over the phone network: call, speak ``order.message`` twice, hang up."""
        await self._run(
            _VoiceLeg(
                order.leg_id,
                order.incident_id,
                order.address,
                order.ring_timeout_s,
                reporter,
                StatusSequencer(self._settings.status_hold_s),
                message=phi.guard(order.message, where=f"announcement leg {order.leg_id}"),
            )
        )

    async def _run(self, leg: _VoiceLeg) -> None:
        self._legs[leg.leg_id] = leg
        guard: TimerHandle | None = None
        try:
            if not await self._create(leg):
                return
            guard = self._clock.call_later(leg.ring_timeout_s + self._settings.max_call_s, leg.done.set)
            await leg.done.wait()
            async with leg.lock:
                await self._drain(leg, leg.sequencer.flush())
                if not leg.ended:
                    await self._end(
                        leg, cause="failed", status=None, reason="no final status from Twilio", by="local"
                    )
        finally:
            if guard is not None:
                guard.cancel()
            if leg.hold_timer is not None:
                leg.hold_timer.cancel()
            self._legs.pop(leg.leg_id, None)

    async def cancel(self, leg_id: str, reason: str) -> None:
        leg = self._legs.get(leg_id)
        if leg is None or leg.cancel_reason is not None or leg.ended:
            return
        leg.cancel_reason = reason
        if leg.call_sid is not None:
            await self._hangup(leg, reason)

    async def cancel_orphan(self, leg_id: str, events: Sequence[Event]) -> str | None:
        """End the Twilio call of a leg another node (or this node's previous life) placed and can no longer end.

        A Twilio call belongs to the account, not to the node: any node can end it by its CallSid (from the
        leg's ``leg.call_id`` event) -- ``canceled`` while it rings, ``completed`` once answered. Returns what
        was sent (``leg.cancel_sent``/``leg.bye_sent``), or ``None``: no CallSid was recorded (the call was
        never created or its answer never stored), or Twilio refused or was unreachable (logged).
        """
        sid = next(
            (str(e.data.get("call_sid")) for e in reversed(events) if e.kind == "leg.call_id" and e.data),
            None,
        )
        if not sid:
            log.info("[leg=%s] no Twilio CallSid recorded: nothing to end", leg_id)
            return None
        answered = any(e.kind == "leg.answered" for e in events)
        try:
            await self._end_call(sid, answered=answered)
        except TwilioRestException as exc:
            log.info("[leg=%s] Twilio would not end orphan call %s: %s", leg_id, sid, _twilio_error(exc))
            return None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("[leg=%s] could not reach Twilio to end orphan call %s: %s", leg_id, sid, exc)
            return None
        log.info("[leg=%s] ended orphan Twilio call %s", leg_id, sid)
        return "leg.bye_sent" if answered else "leg.cancel_sent"

    # --- webhooks (signature already checked) --------------------------------------------------------

    async def voice(self, leg_id: str, params: Mapping[str, str]) -> str:
        """Twilio fetches the call's TwiML (it was answered; ``AnsweredBy`` says by whom)."""
        leg = self._leg_for(leg_id, params)
        if leg is None:
            return hang_up()
        async with leg.lock:
            answered_by = params.get("AnsweredBy", "")
            if leg.ended:
                return hang_up()
            if _MACHINE.match(answered_by):
                await leg.reporter.record(
                    leg_id, "leg.voicemail", {"answered_by": answered_by, "call_sid": leg.call_sid}
                )
                await self._end(
                    leg, cause=NOT_REACHED_CAUSE, status=None, reason=f"answered by {answered_by}", by="amd"
                )
                return hang_up()
            if leg.cancel_reason is not None:
                await leg.reporter.record(leg_id, "leg.bye_sent", {"reason": leg.cancel_reason})
                return hang_up()
            if leg.first_twiml is not None:
                return leg.first_twiml  # Twilio retried the fetch
            await self._mark_answered(leg, answered_by)
            if leg.message is not None:
                leg.end_cause = "normal"
                leg.first_twiml = say_and_hang_up([leg.message, leg.message], self._voice)
                await leg.reporter.record(leg_id, "leg.message_played", {"times": 2})
                await leg.reporter.record(leg_id, "leg.bye_sent", {"reason": "message-played"})
                return leg.first_twiml
            order = leg.order
            assert order is not None
            variables = alert_variables(
                severity=order.severity, room=order.room_code, site=order.site_name, code=order.incident_code
            )
            leg.ivr = TwimlCall(
                self._menus[order.require_pin],
                variables,
                action_url=self._settings.url(f"/twilio/gather/{leg_id}"),
                voice=self._voice,
            )
            twiml = await self._answer_turn(leg, leg.ivr.start(self._clock.monotonic()))
            leg.first_twiml = twiml
            return twiml

    async def gather(self, leg_id: str, turn: int, params: Mapping[str, str]) -> str:
        """Twilio posts a Gather's result (``Digits``, ``FinishedOnKey``) for ``turn``."""
        leg = self._leg_for(leg_id, params)
        if leg is None:
            return hang_up()
        async with leg.lock:
            if leg.ivr is None or leg.ended:
                return hang_up()
            ivr = leg.ivr
            digits = params.get("Digits", "")
            key = params.get("FinishedOnKey", "")
            if turn == ivr.turn and not ivr.finished:
                secret = isinstance(ivr.machine.step, CollectStep) and ivr.machine.step.secret
                for digit in digits + key:
                    shown = "x" if secret and digit != key else digit
                    await leg.reporter.record(
                        leg_id, "leg.dtmf", {"digit": shown, "method": "twilio", "turn": turn}
                    )
            try:
                answer = ivr.gather(turn, digits, key, self._clock.monotonic())
            except Exception as exc:  # IvrError from a stale or forged turn: the peer's fault, answer it
                log.info("[leg=%s] Gather for turn %d refused: %s", leg_id, turn, exc)
                return hang_up()
            return await self._answer_turn(leg, answer)

    async def status(self, leg_id: str, params: Mapping[str, str]) -> None:
        """A call status callback: order by SequenceNumber, drop duplicates, record, map to leg facts."""
        leg = self._leg_for(leg_id, params)
        if leg is None:
            log.info("[leg=%s] status callback for a leg not live here: %s", leg_id, params.get("CallStatus"))
            return
        async with leg.lock:
            item = dict(params)
            item["_received_at"] = format_at(self._clock.now())
            try:
                seq = int(params.get("SequenceNumber", ""))
            except ValueError:
                await self._drain(leg, [item])
                return
            released, duplicate = leg.sequencer.push(seq, item, self._clock.monotonic())
            if duplicate:
                log.info(
                    "[leg=%s] duplicate status callback %d (%s) dropped",
                    leg_id,
                    seq,
                    params.get("CallStatus"),
                )
                return
            await self._drain(leg, released)
            self._arm_hold(leg)

    # --- internals ------------------------------------------------------------------------------------

    def _leg_for(self, leg_id: str, params: Mapping[str, str]) -> _VoiceLeg | None:
        leg = self._legs.get(leg_id)
        sid = params.get("CallSid", "")
        if leg is None:
            return None
        if leg.call_sid is None and sid:
            leg.call_sid = sid  # a webhook overtook the REST answer
        if leg.call_sid != sid:
            log.warning(
                "[leg=%s] webhook for CallSid %s, but the leg's call is %s: ignored",
                leg_id,
                sid,
                leg.call_sid,
            )
            return None
        return leg

    async def _create(self, leg: _VoiceLeg) -> bool:
        s, leg_id = self._settings, leg.leg_id
        data: dict[str, Any] = {"to": leg.address, "via": "twilio", "ring_timeout_s": leg.ring_timeout_s}
        if leg.message is not None:
            data["purpose"] = "onsite-activation"
        await leg.reporter.record(leg_id, "leg.invite_sent", data)
        try:
            call = await self._client.calls.create_async(
                to=leg.address,
                from_=s.from_number,
                url=s.url(f"/twilio/voice/{leg_id}"),
                method="POST",
                status_callback=s.url(f"/twilio/call-status/{leg_id}"),
                status_callback_method="POST",
                status_callback_event=["initiated", "ringing", "answered", "completed"],
                machine_detection="Enable",
                timeout=max(5, min(600, round(leg.ring_timeout_s))),
            )
        except TwilioRestException as exc:
            await self._end(leg, cause="failed", status=exc.status, reason=_twilio_error(exc), by="twilio")
            return False
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            await self._end(
                leg,
                cause="failed",
                status=None,
                reason=f"Twilio unreachable: {type(exc).__name__}: {exc}",
                by="transport",
            )
            return False
        sid = str(call.sid)
        if leg.call_sid is not None and leg.call_sid != sid:
            log.warning(
                "[leg=%s] Twilio answered CallSid %s after webhooks for %s", leg_id, sid, leg.call_sid
            )
        leg.call_sid = sid
        await _set_external_ref(self._sessions, leg_id, sid)
        await leg.reporter.record(leg_id, "leg.call_id", {"call_sid": sid, "provider": "twilio"})
        log.info(
            "[incident=%s leg=%s] Twilio call %s to %s",
            leg.incident_id,
            leg_id,
            sid,
            mask(leg.address),
        )
        if leg.cancel_reason is not None:
            await self._hangup(leg, leg.cancel_reason)
        return True

    async def _hangup(self, leg: _VoiceLeg, reason: str) -> None:
        assert leg.call_sid is not None
        leg_id = leg.leg_id
        answered = leg.answered
        await leg.reporter.record(
            leg_id, "leg.bye_sent" if answered else "leg.cancel_sent", {"reason": reason}
        )
        try:
            await self._end_call(leg.call_sid, answered=answered)
        except TwilioRestException as exc:
            log.info("[leg=%s] Twilio would not end call %s: %s", leg_id, leg.call_sid, exc)
            await leg.reporter.record(leg_id, "leg.cancel_failed", {"reason": _twilio_error(exc)})
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("[leg=%s] could not reach Twilio to end call %s: %s", leg_id, leg.call_sid, exc)
            await leg.reporter.record(leg_id, "leg.cancel_failed", {"reason": f"{type(exc).__name__}: {exc}"})

    async def _end_call(self, sid: str, *, answered: bool) -> None:
        """``completed`` for an answered call, ``canceled`` for a ringing one (then ``completed`` if it was
        answered meanwhile). Raises what the twilio library raises."""
        call = await self._client.calls(sid).update_async(status="completed" if answered else "canceled")
        if not answered and getattr(call, "status", "") == "in-progress":
            await self._client.calls(sid).update_async(status="completed")

    async def _mark_answered(self, leg: _VoiceLeg, answered_by: str) -> None:
        if not leg.answered:
            leg.answered = True
            await leg.reporter.record(
                leg.leg_id,
                "leg.answered",
                {"call_sid": leg.call_sid, "answered_by": answered_by or None},
            )

    async def _answer_turn(self, leg: _VoiceLeg, turn: Turn) -> str:
        assert leg.ivr is not None

        async def check(digits: str) -> bool:
            return await leg.reporter.check_pin(leg.leg_id, digits)

        async def finish(done: Any) -> str:
            return await self._finish(leg, done)

        return await leg.ivr.answer(turn, check=check, finish=finish, monotonic=self._clock.monotonic)

    async def _finish(self, leg: _VoiceLeg, finish: Any) -> str:
        leg_id, order = leg.leg_id, leg.order
        assert order is not None
        method = "twilio"
        match finish.outcome:
            case Outcome.ACCEPT:
                result = await leg.reporter.try_accept(leg_id, digits=finish.digits, method=method)
                leg.end_cause = "normal"
                if result.won and self.on_accepted is not None and leg.call_sid is not None:
                    try:
                        handover = await self.on_accepted(order, TwilioCallRef(leg_id, leg.call_sid))
                    except Exception as exc:  # the accept stands; the call must still be answered
                        log.exception("[leg=%s] accepted-call handler failed", leg_id)
                        await leg.reporter.record(
                            leg_id, "leg.handover_failed", {"error": f"{type(exc).__name__}: {exc}"}
                        )
                        handover = None
                    if handover is not None:
                        await leg.reporter.record(leg_id, "leg.handed_over", {"to": handover.to})
                        return handover.twiml
                if result.won:
                    text = ACCEPTED_TEXT.format(code=" ".join(order.incident_code))
                else:
                    text = message_text(
                        self._menu, "already_accepted", {"name": result.accepted_by_name or ""}
                    )
                await leg.reporter.record(
                    leg_id, "leg.bye_sent", {"reason": "accepted" if result.won else "already-accepted"}
                )
                return say_and_hang_up([text], self._voice)
            case Outcome.DECLINE:
                await leg.reporter.record(leg_id, "leg.declined", {"digits": finish.digits, "method": method})
                leg.end_cause = "declined"
                await leg.reporter.record(leg_id, "leg.bye_sent", {"reason": "declined"})
                return say_and_hang_up([DECLINED_TEXT], self._voice)
            case Outcome.HUNG_UP:
                return hang_up()
            case _:
                await leg.reporter.record(
                    leg_id, "leg.no_input", {"outcome": finish.outcome.value, "digits": finish.digits}
                )
                leg.end_cause = NOT_REACHED_CAUSE
                await leg.reporter.record(leg_id, "leg.bye_sent", {"reason": f"ivr-{finish.outcome.value}"})
                return hang_up()

    def _arm_hold(self, leg: _VoiceLeg) -> None:
        if leg.hold_timer is not None:
            leg.hold_timer.cancel()
            leg.hold_timer = None
        deadline = leg.sequencer.next_deadline()
        if deadline is not None:
            loop = asyncio.get_running_loop()

            def fire() -> None:
                task = loop.create_task(self._hold_expired(leg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

            leg.hold_timer = self._clock.call_later(deadline - self._clock.monotonic(), fire)

    async def _hold_expired(self, leg: _VoiceLeg) -> None:
        async with leg.lock:
            await self._drain(leg, leg.sequencer.timer(self._clock.monotonic()))
            self._arm_hold(leg)

    async def _drain(self, leg: _VoiceLeg, items: list[dict[str, Any]]) -> None:
        for item in items:
            await self._apply_status(leg, item)

    async def _apply_status(self, leg: _VoiceLeg, p: dict[str, Any]) -> None:
        leg_id = leg.leg_id
        call_status = str(p.get("CallStatus", ""))
        sip_code = p.get("SipResponseCode")
        answered_by = str(p.get("AnsweredBy", ""))
        await leg.reporter.record(
            leg_id,
            "leg.twilio_status",
            {
                "call_sid": p.get("CallSid"),
                "parent_call_sid": p.get("ParentCallSid") or None,
                "sequence": p.get("SequenceNumber"),
                "call_status": call_status,
                "event": p.get("StatusCallbackEvent") or None,
                "sip_response_code": _int_or_none(sip_code),
                "answered_by": answered_by or None,
                "duration_s": p.get("CallDuration") or None,
                "twilio_timestamp": p.get("Timestamp") or None,
                "received_at": p.get("_received_at"),
            },
        )
        if leg.ended and call_status in _FINAL_CALL_STATUSES:
            leg.done.set()
            return
        if leg.ended:
            return
        match call_status:
            case "queued" | "initiated":
                await leg.reporter.record(leg_id, "leg.trying", {"twilio": call_status})
            case "ringing":
                await leg.reporter.record(leg_id, "leg.ringing", {"twilio": call_status})
            case "in-progress" | "answered":
                if not _MACHINE.match(answered_by):
                    await self._mark_answered(leg, answered_by)
            case "completed" | "busy" | "no-answer" | "failed" | "canceled":
                status = _int_or_none(sip_code)
                await self._end(
                    leg, cause=self._cause(leg, call_status), status=status, reason=call_status, by="twilio"
                )
                leg.done.set()
            case _:
                log.info("[leg=%s] Twilio call status %r not mapped", leg_id, call_status)

    def _cause(self, leg: _VoiceLeg, call_status: str) -> str:
        timeout = leg.cancel_reason in _TIMEOUT_REASONS
        match call_status:
            case "busy":
                return "busy"
            case "no-answer":
                return NOT_REACHED_CAUSE
            case "failed":
                return "failed"
            case "canceled":
                return NOT_REACHED_CAUSE if timeout else "cancelled"
        if leg.end_cause is not None:
            return leg.end_cause
        if leg.answered:
            return "normal"
        return NOT_REACHED_CAUSE if timeout else ("cancelled" if leg.cancel_reason else "failed")

    async def _end(self, leg: _VoiceLeg, *, cause: str, status: int | None, reason: str, by: str) -> None:
        if leg.ended:
            return
        leg.ended = True
        await leg.reporter.record(
            leg.leg_id,
            "leg.ended",
            {"status": status, "cause": cause, "reason": reason, "by": by, "call_sid": leg.call_sid},
        )


# -------------------------------------------------------------------------------------------------------- SMS

_ACK = re.compile(r"^\s*(?:1|ack\s+([a-z0-9]{2,16}))(?:\s+(\d{4,8}))?\s*[.!]?\s*$", re.IGNORECASE)


def page_text(order: LegOrder, public_base_url: str) -> str:
    """The SMS/pager text: severity, site, room, incident code, how to accept, a link. No PHI."""
    link = f"{public_base_url.rstrip('/')}/incidents/{order.incident_id}"
    pin = " <PIN>" if order.require_pin else ""
    return (
        f"CONTRAST ALERT {order.severity.upper()}: {order.site_name}, room {order.room_code}. "
        f"Code {order.incident_code}. Reply 1{pin} or ACK {order.incident_code}{pin} to accept. {link}"
    )


@dataclass(frozen=True)
class Reply:
    """A text reply to a page: ``1`` or ``ACK <code>``, optionally followed by a PIN."""

    ack: bool
    code: str | None = None
    pin: str | None = None

    @property
    def evidence(self) -> str:
        """What the evidence log keeps of the reply (never the PIN)."""
        if not self.ack:
            return "other"
        return ("1" if self.code is None else f"ACK {self.code}") + (" +PIN" if self.pin else "")


def parse_reply(body: str) -> Reply:
    """``"1"``, ``"ACK K7R"``, ``"1 1234"``, ``"ack k7r 1234"`` are accepts (with code/PIN); anything else not."""
    m = _ACK.match(body)
    if m is None:
        return Reply(False)
    return Reply(True, m.group(1).upper() if m.group(1) else None, m.group(2))


@dataclass
class _SmsLeg:
    order: LegOrder
    reporter: LegReporter
    message_sid: str | None = None


class TwilioSmsChannel:
    """SMS pages to ``sms`` contacts; replies accept through the inbound-SMS webhook."""

    kind = "sms"

    def __init__(
        self,
        client: Any,
        settings: TwilioSettings,
        clock: Clock,
        sessions: async_sessionmaker[AsyncSession],
        *,
        reporter: LegReporter | None = None,
    ) -> None:
        self._client = client
        self._settings = settings
        self._clock = clock
        self._sessions = sessions
        self._reporter = reporter
        self._legs: dict[str, _SmsLeg] = {}
        self._seen_status: _Recent[None] = _Recent()
        self._seen_inbound: _Recent[str] = _Recent()

    def attach(self, reporter: LegReporter) -> None:
        """The runner, for replies that arrive when no page was sent by this process (after a restart)."""
        self._reporter = reporter

    def live_legs(self) -> list[str]:
        return sorted(self._legs)

    async def place(self, order: LegOrder, reporter: LegReporter) -> None:
        self._reporter = self._reporter or reporter
        leg = self._legs[order.leg_id] = _SmsLeg(order, reporter)
        body = phi.guard(page_text(order, self._settings.public_base_url), where=f"sms leg {order.leg_id}")
        await reporter.record(order.leg_id, "leg.invite_sent", {"to": order.address, "via": "twilio-sms"})
        try:
            msg = await self._client.messages.create_async(
                to=order.address,
                from_=self._settings.from_number,
                body=body,
                status_callback=self._settings.url(f"/twilio/sms-status/{order.leg_id}"),
            )
        except TwilioRestException as exc:
            self._legs.pop(order.leg_id, None)
            await reporter.record(
                order.leg_id,
                "leg.ended",
                {"status": exc.status, "cause": "failed", "reason": _twilio_error(exc), "by": "twilio"},
            )
            return
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._legs.pop(order.leg_id, None)
            await reporter.record(
                order.leg_id,
                "leg.ended",
                {
                    "status": None,
                    "cause": "failed",
                    "reason": f"Twilio unreachable: {exc}",
                    "by": "transport",
                },
            )
            return
        leg.message_sid = str(msg.sid)
        await _set_external_ref(self._sessions, order.leg_id, leg.message_sid)
        await reporter.record(
            order.leg_id, "leg.trying", {"message_sid": leg.message_sid, "twilio": str(msg.status or "")}
        )
        log.info(
            "[incident=%s leg=%s] SMS %s to %s", order.incident_id, order.leg_id, msg.sid, mask(order.address)
        )

    async def cancel(self, leg_id: str, reason: str) -> None:
        leg = self._legs.pop(leg_id, None)
        if leg is None:
            return
        cause = NOT_REACHED_CAUSE if reason in _TIMEOUT_REASONS else "cancelled"
        await leg.reporter.record(
            leg_id, "leg.ended", {"status": None, "cause": cause, "reason": reason, "by": "local"}
        )

    # --- webhooks ---------------------------------------------------------------------------------------

    async def status(self, leg_id: str, params: Mapping[str, str]) -> None:
        """A message status callback: recorded; ``delivered`` is delivered, never accepted."""
        sid = params.get("MessageSid", "")
        status = params.get("MessageStatus", params.get("SmsStatus", ""))
        key = (sid, status)
        if key in self._seen_status:
            log.info("[leg=%s] duplicate SMS status %s dropped", leg_id, status)
            return
        self._seen_status.add(key)
        reporter = self._reporter
        leg = self._legs.get(leg_id)
        if leg is not None:
            reporter = leg.reporter
            if leg.message_sid is not None and sid != leg.message_sid:
                log.warning(
                    "[leg=%s] SMS status for %s, but the leg's message is %s", leg_id, sid, leg.message_sid
                )
                return
        if reporter is None:
            return
        data = {
            "message_sid": sid,
            "status": status,
            "error_code": params.get("ErrorCode") or None,
            "received_at": format_at(self._clock.now()),
        }
        await reporter.record(leg_id, "leg.sms_status", data)
        if status == "delivered":
            await reporter.record(leg_id, "leg.delivered", {"message_sid": sid})
        elif status in ("undelivered", "failed") and self._legs.pop(leg_id, None) is not None:
            await reporter.record(
                leg_id,
                "leg.ended",
                {
                    "status": None,
                    "cause": "failed",
                    "reason": f"SMS {status}, error {params.get('ErrorCode') or 'none'}",
                    "by": "twilio",
                },
            )

    async def inbound(self, params: Mapping[str, str]) -> str:
        """An SMS to our number: ``1`` or ``ACK <code>`` accepts for the sender's person. Returns TwiML."""
        sid = params.get("MessageSid", "")
        seen = self._seen_inbound.get(sid) if sid else None
        if seen is not None:
            return seen  # Twilio retried the webhook
        reply = await self._inbound(params)
        if sid:
            self._seen_inbound.add(sid, reply)
        return reply

    async def _inbound(self, params: Mapping[str, str]) -> str:
        try:
            sender = normalize_e164(params.get("From", ""))
        except PhoneNumberError:
            log.info("inbound SMS from an unusable number %r ignored", mask(params.get("From", "")))
            return reply_message(None)
        reply = parse_reply(params.get("Body", ""))
        if not reply.ack:
            return reply_message("Reply 1 or ACK <code> to accept a contrast alert.")
        found = await self._reply_leg(sender, reply.code)
        if found is None:
            log.info("inbound SMS accept from %s matched no open page", mask(sender))
            return reply_message("No open contrast alert for this number.")
        leg_id, incident_code, needs_pin = found
        reporter = self._legs[leg_id].reporter if leg_id in self._legs else self._reporter
        if reporter is None:
            log.error("[leg=%s] SMS accept arrived but no runner is attached", leg_id)
            return reply_message("Cannot accept by SMS right now: please call back.")
        await reporter.record(
            leg_id,
            "leg.sms_reply",
            {"message_sid": params.get("MessageSid"), "reply": reply.evidence, "from": sender},
        )
        if needs_pin:
            if reply.pin is None:
                return reply_message(f"Your PIN is needed: reply ACK {incident_code} <PIN>.")
            if not await reporter.check_pin(leg_id, reply.pin):
                return reply_message("That PIN is not correct.")
        result = await reporter.try_accept(leg_id, digits=reply.evidence, method="sms")
        if result.won:
            self._legs.pop(leg_id, None)  # a loser's leg stays: the runner cancels it, which ends it
            return reply_message(f"Accepted incident {incident_code}. The technologist has been told.")
        return reply_message(
            f"Incident {incident_code} is already accepted by {result.accepted_by_name or 'someone'}."
        )

    async def _reply_leg(self, sender: str, code: str | None) -> tuple[str, str, bool] | None:
        """The sender's most recent SMS leg of an open incident (with ``code``, if given), and whether the
        person must give a PIN."""
        async with self._sessions() as s:
            people = sa.select(ContactMethod.person_id).where(
                ContactMethod.kind == ContactKind.SMS, ContactMethod.address == sender, ContactMethod.active
            )
            query = (
                sa.select(CallLeg.id, Incident.code, Person.pin_hash.is_not(None))
                .join(Incident, Incident.id == CallLeg.incident_id)
                .join(Person, Person.id == CallLeg.person_id)
                .where(
                    CallLeg.channel == ChannelKind.SMS,
                    CallLeg.direction == Direction.OUTBOUND,
                    CallLeg.person_id.in_(people),
                    Person.active,
                    Incident.state.in_(
                        (DbIncidentState.RAISED, DbIncidentState.PAGING, DbIncidentState.ACCEPTED)
                    ),
                )
                .order_by(CallLeg.created_at.desc())
                .limit(1)
            )
            if code is not None:
                query = query.where(Incident.code == code)
            row = (await s.execute(query)).first()
        return None if row is None else (str(row[0]), str(row[1]), bool(row[2]))


__all__ = [
    "LocalApiHttpClient",
    "Reply",
    "StatusSequencer",
    "TwilioSettings",
    "TwilioSmsChannel",
    "TwilioVoiceChannel",
    "close_twilio_client",
    "page_text",
    "parse_reply",
    "twilio_client",
]
