"""The SIP channel: one alert call per leg through our own SIP stack, with the radiologist alert menu.

Every fact of the call becomes a leg event (INVITE sent, 100, 18x, answered, each DTMF digit with its method,
accepted/declined, CANCEL/BYE and who sent it, ended with SIP status and Reason). The IVR is the sans-I/O
:class:`ivr.machine.MenuMachine`; this adapter feeds it digits, prompt ends and timer firings (all timed by the
one clock) and performs its actions: speak a prompt (espeak-ng, cached 8 kHz WAV), stop it on barge-in, finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from comms.clock import Clock
from comms.db.models import Event
from comms.errors import ValidationError
from escalation.channel import LegOrder, LegReporter
from ivr.driver import run_menu
from ivr.machine import Finish, MenuMachine
from ivr.menu import Outcome, alert_menu, alert_variables, message_text, speakable_room
from ivr.prompts import PromptError, PromptRenderer
from media.errors import MediaError
from sip.errors import SipError
from sip.ua import (
    Call,
    CallAnswered,
    CallEnded,
    CallRinging,
    CallTrying,
    DtmfReceived,
    MediaStarted,
    SentInvite,
    UserAgent,
)

log = logging.getLogger(__name__)

ACCEPTED_TEXT = "Thank you. You have accepted incident {code}. The technologist has been told."
CONNECTING_TEXT = "Thank you. You have accepted incident {code}. Connecting you to room {room} now."

AcceptedCallHandler = Callable[[LegOrder, Call], Awaitable[bool]]
"""Offered every call whose person won the accept: return True to keep the call (e.g. bridge it to the room or
to a technologist on the line); the channel then leaves it up until either side hangs up. False: the channel
thanks the radiologist and hangs up."""
DECLINED_TEXT = "Declined. We are calling the next radiologist."


@dataclass
class _Live:
    call: Call | None = None
    answered: bool = False
    cancel_reason: str | None = None
    end_cause: str | None = None
    inputs: asyncio.Queue[tuple[Any, ...]] = field(default_factory=asyncio.Queue)


class SipChannel:
    """Places alert calls to ``sip:``/``sips:`` contacts."""

    kind = "sip"

    def __init__(
        self,
        ua: UserAgent,
        prompts: PromptRenderer,
        clock: Clock,
        *,
        from_uri: str,
        display: str = "Contrast Comms",
        ivr_timeout_s: float = 5.0,
        ivr_retries: int = 2,
        on_accepted: AcceptedCallHandler | None = None,
    ) -> None:
        self.on_accepted = on_accepted
        self._ua = ua
        self._prompts = prompts
        self._clock = clock
        self._from_uri = from_uri
        self._display = display
        self._menu = alert_menu(timeout_s=ivr_timeout_s, retries=ivr_retries)
        self._pin_menu = alert_menu(require_pin=True, timeout_s=ivr_timeout_s, retries=ivr_retries)
        self._live: dict[str, _Live] = {}

    async def cancel(self, leg_id: str, reason: str) -> None:
        live = self._live.get(leg_id)
        if live is None or live.cancel_reason is not None:
            return
        live.cancel_reason = reason
        if live.call is not None:
            with contextlib.suppress(SipError):
                await live.call.hangup()

    async def cancel_orphan(self, leg_id: str, events: Sequence[Event]) -> str | None:
        """CANCEL the INVITE of a leg another node (or this node's previous life) placed and can no longer end.

        ``events`` are the leg's events; the ``cancel`` record of its ``leg.invite_sent`` (see
        :class:`~sip.ua.SentInvite`) is what the CANCEL must repeat. ``leg.cancel_sent`` once it went out;
        ``None`` for a record without it (written before it existed) or a bad one. The retransmissions and
        their outcome are the user agent's business (logged there). Only for legs that were never answered: a
        BYE would need the dialog (remote tag, route set, CSeq) that died with the node that placed the leg.
        """
        invite = next((e for e in reversed(events) if e.kind == "leg.invite_sent"), None)
        if invite is None or any(e.kind == "leg.answered" for e in events):
            return None
        record = invite.data.get("cancel")
        if not isinstance(record, Mapping):
            log.info("[leg=%s] no CANCEL record in leg.invite_sent: cannot cancel the orphan INVITE", leg_id)
            return None
        try:
            sent = SentInvite.from_data(record)
            self._ua.cancel_orphan(sent)
        except (ValidationError, SipError) as exc:
            log.warning("[leg=%s] cannot cancel the orphan INVITE: %s", leg_id, exc)
            return None
        log.info("[leg=%s] sent CANCEL for orphan INVITE %s to %s", leg_id, sent.call_id, sent.destination)
        return "leg.cancel_sent"

    async def place(self, order: LegOrder, reporter: LegReporter) -> None:
        live = self._live[order.leg_id] = _Live()
        try:
            await self._place(order, reporter, live)
        finally:
            self._live.pop(order.leg_id, None)

    async def _place(self, order: LegOrder, reporter: LegReporter, live: _Live) -> None:
        leg = order.leg_id
        try:
            call = await self._ua.dial(
                order.address,
                from_uri=self._from_uri,
                display=self._display,
                ring_timeout=order.ring_timeout_s,
            )
        except SipError as exc:
            await reporter.record(
                leg, "leg.ended", {"status": None, "cause": "failed", "reason": str(exc), "by": "transport"}
            )
            return
        live.call = call
        # recorded once the INVITE is on its way: a write before it would only delay the alert
        sent: dict[str, Any] = {
            "uri": order.address,
            "call_id": call.call_id,
            "ring_timeout_s": order.ring_timeout_s,
        }
        invite = call.sent_invite()
        if invite is not None:  # what another node needs to CANCEL it should this one die (cancel_orphan)
            sent["cancel"] = invite.to_data()
        await reporter.record(leg, "leg.invite_sent", sent)
        if live.cancel_reason is not None:  # cancelled while the INVITE was being sent
            with contextlib.suppress(SipError):
                await call.hangup()
        ivr: asyncio.Task[None] | None = None
        async for event in call.events():
            match event:
                case CallTrying():
                    await reporter.record(leg, "leg.trying", {"status": 100})
                case CallRinging(status=status, early_media=early):
                    await reporter.record(leg, "leg.ringing", {"status": status, "early_media": early})
                case CallAnswered():
                    live.answered = True
                    await reporter.record(leg, "leg.answered", {"status": 200})
                    if live.cancel_reason is not None:
                        await reporter.record(leg, "leg.bye_sent", {"reason": live.cancel_reason})
                        with contextlib.suppress(SipError):
                            await call.hangup()
                    else:
                        ivr = asyncio.get_running_loop().create_task(
                            self._guarded_ivr(order, call, reporter, live)
                        )
                case MediaStarted():
                    await reporter.record(leg, "leg.media_started", {})
                case DtmfReceived(digit=digit, method=method):
                    await reporter.record(leg, "leg.dtmf", {"digit": digit, "method": method})
                    live.inputs.put_nowait(("digit", digit, method))
                case CallEnded(status=status, reason=reason, by=by, sip_reason=sip_reason):
                    live.inputs.put_nowait(("hangup",))
                    if by == "remote" and live.answered:
                        await reporter.record(leg, "leg.bye_received", {})
                    elif by == "local" and live.cancel_reason is not None and not live.answered:
                        await reporter.record(leg, "leg.cancel_sent", {"reason": live.cancel_reason})
                    data: dict[str, Any] = {
                        "status": status,
                        "reason": reason,
                        "by": by,
                        "sip_reason": sip_reason,
                    }
                    if live.cancel_reason is not None and not live.answered:
                        data["cause"] = "no_answer" if live.cancel_reason == "ring-timeout" else "cancelled"
                    elif by == "timeout" and not live.answered:
                        data["cause"] = "no_answer"
                    elif live.end_cause is not None:
                        data["cause"] = live.end_cause
                    await reporter.record(leg, "leg.ended", data)
        if ivr is not None:
            if not ivr.done():
                ivr.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ivr

    async def _guarded_ivr(self, order: LegOrder, call: Call, reporter: LegReporter, live: _Live) -> None:
        """The IVR must never die silently: a failure is a leg event and the call is ended."""
        try:
            await self._ivr(order, call, reporter, live)
        except asyncio.CancelledError:
            raise
        except (SipError, MediaError, PromptError) as exc:
            log.warning("[incident=%s leg=%s] IVR failed: %s", order.incident_id, order.leg_id, exc)
            live.end_cause = "failed"
            await reporter.record(order.leg_id, "leg.ivr_failed", {"error": f"{type(exc).__name__}: {exc}"})
            with contextlib.suppress(SipError):
                await call.hangup()

    async def _ivr(self, order: LegOrder, call: Call, reporter: LegReporter, live: _Live) -> None:
        """Run the alert menu on an answered call until it finishes; then act on the outcome."""
        variables = alert_variables(
            severity=order.severity, room=order.room_code, site=order.site_name, code=order.incident_code
        )
        machine = MenuMachine(self._pin_menu if order.require_pin else self._menu, variables)
        inputs = live.inputs
        playing: list[asyncio.Task[None]] = []

        async def speak(text: str, play_id: int) -> None:
            path = await self._prompts.render(text)
            await call.play(path)
            inputs.put_nowait(("prompt_done", play_id))

        def start_prompt(text: str, play_id: int) -> None:
            playing.append(asyncio.get_running_loop().create_task(speak(text, play_id)))

        async def stop_prompt() -> None:
            while playing:
                playing.pop().cancel()

        async def check(digits: str) -> bool:
            return await reporter.check_pin(order.leg_id, digits)

        finish = await run_menu(
            machine, self._clock, inputs, start_prompt=start_prompt, stop_prompt=stop_prompt, check=check
        )
        await self._finish(order, call, reporter, live, finish)

    async def _finish(
        self, order: LegOrder, call: Call, reporter: LegReporter, live: _Live, finish: Finish
    ) -> None:
        leg = order.leg_id
        method = finish.presses[-1].method if finish.presses else ""
        match finish.outcome:
            case Outcome.ACCEPT:
                result = await reporter.try_accept(leg, digits=finish.digits, method=method)
                code = " ".join(order.incident_code)
                if result.won and self.on_accepted is not None:
                    await self._say(
                        call, leg, CONNECTING_TEXT.format(code=code, room=speakable_room(order.room_code))
                    )
                    if await self.on_accepted(order, call):
                        await reporter.record(leg, "leg.handed_over", {"to": "bridge"})
                        return
                    text = "Nobody else is on the line. The technologist has been told."
                elif result.won:
                    text = ACCEPTED_TEXT.format(code=code)
                else:
                    text = message_text(
                        self._menu, "already_accepted", {"name": result.accepted_by_name or ""}
                    )
                reason = "accepted" if result.won else "already-accepted"
                await self._say_and_hang_up(call, reporter, leg, text, reason)
            case Outcome.DECLINE:
                await reporter.record(leg, "leg.declined", {"digits": finish.digits, "method": method})
                await self._say_and_hang_up(call, reporter, leg, DECLINED_TEXT, "declined")
            case Outcome.HUNG_UP:
                return
            case _:
                await reporter.record(
                    leg, "leg.no_input", {"outcome": finish.outcome.value, "digits": finish.digits}
                )
                live.end_cause = "no_answer"
                await reporter.record(leg, "leg.bye_sent", {"reason": f"ivr-{finish.outcome.value}"})
                with contextlib.suppress(SipError):
                    await call.hangup()

    async def _say(self, call: Call, leg: str, text: str) -> None:
        try:
            await call.play(await self._prompts.render(text))
        except (SipError, MediaError, PromptError, OSError) as exc:
            log.info("[leg=%s] could not play the prompt %r: %s", leg, text[:40], exc)

    async def _say_and_hang_up(
        self, call: Call, reporter: LegReporter, leg: str, text: str, reason: str
    ) -> None:
        await self._say(call, leg, text)
        await reporter.record(leg, "leg.bye_sent", {"reason": reason})
        with contextlib.suppress(SipError):
            await call.hangup()
