"""The severe path's on-site emergency activation over SIP: call the code team, speak the message, hang up.

This call is raised at once and in parallel with paging (see :mod:`escalation.decide`); it is never an accept
and takes no digits. Every fact is a leg event on the incident (INVITE sent, ringing, answered, message
played, ended). The message is spoken twice so a code-team phone picked up mid-sentence still hears it whole.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from escalation.channel import AnnounceOrder, LegReporter
from ivr.prompts import PromptError, PromptRenderer
from media.errors import MediaError
from sip.errors import SipError
from sip.ua import CallAnswered, CallEnded, CallRinging, UserAgent

log = logging.getLogger(__name__)


class SipAnnouncer:
    """Calls a SIP URI and speaks a message (the code team's on-site activation)."""

    kind = "sip"

    def __init__(
        self, ua: UserAgent, prompts: PromptRenderer, *, from_uri: str, display: str = "Contrast Comms"
    ) -> None:
        self._ua = ua
        self._prompts = prompts
        self._from_uri = from_uri
        self._display = display

    async def announce(self, order: AnnounceOrder, reporter: LegReporter) -> None:
        leg = order.leg_id
        await reporter.record(leg, "leg.invite_sent", {"uri": order.address, "purpose": "onsite-activation"})
        try:
            call = await self._ua.dial(
                order.address,
                from_uri=self._from_uri,
                display=self._display,
                ring_timeout=order.ring_timeout_s,
            )
        except SipError as exc:
            log.error("[incident=%s leg=%s] on-site activation failed: %s", order.incident_id, leg, exc)
            await reporter.record(
                leg, "leg.ended", {"status": None, "cause": "failed", "reason": str(exc), "by": "transport"}
            )
            return
        await reporter.record(leg, "leg.call_id", {"call_id": call.call_id})
        async for event in call.events():
            match event:
                case CallRinging(status=status):
                    await reporter.record(leg, "leg.ringing", {"status": status})
                case CallAnswered():
                    await reporter.record(leg, "leg.answered", {"status": 200})
                    try:
                        path = await self._prompts.render(order.message)
                        for _ in range(2):
                            await call.play(path)
                        await reporter.record(leg, "leg.message_played", {"times": 2})
                    except (SipError, MediaError, PromptError, OSError) as exc:
                        await reporter.record(
                            leg, "leg.ivr_failed", {"error": f"{type(exc).__name__}: {exc}"}
                        )
                    await reporter.record(leg, "leg.bye_sent", {"reason": "message-played"})
                    with contextlib.suppress(SipError):
                        await call.hangup()
                case CallEnded(status=status, reason=reason, by=by):
                    data: dict[str, Any] = {"status": status, "reason": reason, "by": by}
                    await reporter.record(leg, "leg.ended", data)
                case _:
                    pass
