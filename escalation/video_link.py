"""The video link: a radiologist who accepted on a phone is sent the room console's address by text.

Theory of operation
-------------------
CMS counts virtual direct supervision only with real-time audio *and* video; a radiologist who accepted on a SIP
phone or a Twilio call hears the room but sees nothing, and the supervision record stays *audio-only* until a
console shows video (:mod:`media.supervision`). So once the phone channel's accept hook has run (the call is
bridged, or handed over, or declined by every handler), :class:`VideoLinkSender` sends, **in the background**,
one short text with the console link (``<public base URL>/rooms/<room>/console``) to each of the person's active
text-capable contacts:

* ``sms`` contacts through the Twilio REST client (when Twilio is configured; no status callback: a delivery
  report must not land on the voice leg as an SMS page's status);
* ``pager`` contacts through the pager clients of :mod:`escalation.pager` (when a pager gateway is configured),
  one-way: WCTP as an alphanumeric message without a response, SNPP at level 2 at most (no ``2WAY``/``MCRE``),
  ``mailto:`` through the SMTP relay. The link is informational: nothing in it can accept or decline.

The text is site, room code, incident code and the link, passed through :func:`comms.phi.guard` like every page.
The link carries no secret: the console asks for the radiologist's login.

Every outcome is an evidence event on the **accepting leg**, in the incident's hash chain:
``leg.video_link_sent`` (channel, how, masked address, the provider's id, the link),
``leg.video_link_failed`` (the same with the reason) and ``leg.video_link_skipped`` (why nothing was sent: not a
phone leg, no text-capable contact, no gateway for the contacts there are). On a SIP call that is still up, a
sent link is also announced once ("A video link has been sent to your phone.", ``leg.video_link_announced``).

Nothing here may hurt the call: the hooks return the wrapped handler's answer unchanged and at once, the sends
run in tasks of their own, and every failure (a provider's refusal, a network error, a database error while
recording) is logged and, where possible, recorded -- never raised into the call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from twilio.base.exceptions import TwilioRestException

from comms import phi
from comms.clock import Clock
from comms.db.events import append_event
from comms.db.models import ContactMethod, Incident
from comms.db.types import ContactKind
from comms.errors import CommsError
from comms.phone import mask
from comms.tasks import TaskSet
from escalation.channel import LegOrder
from escalation.pager import (
    EmailPager,
    PagerError,
    PagerSettings,
    SnppClient,
    WctpClient,
)
from escalation.sip_channel import AcceptedCallHandler
from escalation.twilio_channel import TwilioSettings
from escalation.twilio_streams import Handover, TwilioAcceptedHandler, TwilioCallRef
from ivr.prompts import PromptError, PromptRenderer
from media.errors import MediaError
from sip.errors import SipError
from sip.ua import Call

__all__ = [
    "ANNOUNCED_TEXT",
    "PHONE_KINDS",
    "LinkResult",
    "VideoLinkSender",
    "console_url",
    "link_text",
]

log = logging.getLogger(__name__)

ANNOUNCED_TEXT = "A video link has been sent to your phone."
PHONE_KINDS = frozenset({"sip", "pstn_voice"})
"""The leg kinds an accept on which earns a video link (a console accept already has the video)."""

SENT, FAILED, SKIPPED, ANNOUNCED = (
    "leg.video_link_sent",
    "leg.video_link_failed",
    "leg.video_link_skipped",
    "leg.video_link_announced",
)


def console_url(public_base_url: str, room_code: str) -> str:
    """The radiologist console of ``room_code`` (``GET /rooms/{code}/console``, behind the staff login)."""
    return f"{public_base_url.rstrip('/')}/rooms/{quote(room_code, safe='')}/console"


def link_text(order: LegOrder, link: str) -> str:
    """The text: site, room, incident code and the link. No PHI."""
    return (
        f"CONTRAST VIDEO: {order.site_name}, room {order.room_code}. Code {order.incident_code}. "
        f"You accepted by phone; open the room video: {link}"
    )


@dataclass(frozen=True)
class LinkResult:
    """One contact's outcome: ``provider_id`` when sent, ``reason`` when not."""

    channel: str
    via: str
    address: str
    provider_id: str | None = None
    reason: str | None = None

    @property
    def sent(self) -> bool:
        return self.reason is None


class VideoLinkSender:
    """Sends the console link to a phone-accepting radiologist's text contacts; :meth:`send` never raises.

    ``twilio``/``twilio_client``: the Twilio settings and the shared ``twilio.rest.Client`` (None: ``sms``
    contacts cannot be reached). ``pager``: the pager gateways (None: ``pager`` contacts cannot be reached).
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        *,
        public_base_url: str,
        node_id: str,
        twilio: TwilioSettings | None = None,
        twilio_client: Any = None,
        pager: PagerSettings | None = None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._base = public_base_url
        self._node_id = node_id
        self._twilio = twilio if twilio_client is not None else None
        self._client = twilio_client
        self._pager = pager
        self._http: aiohttp.ClientSession | None = None
        self._tasks = TaskSet(log, "video link")

    # --- hooks ------------------------------------------------------------------------------------------

    def sip_hook(
        self, inner: AcceptedCallHandler, *, prompts: PromptRenderer | None = None
    ) -> AcceptedCallHandler:
        """``inner`` (the SIP channel's accept hook), then the link in the background; with ``prompts``, a
        sent link is announced on the call if ``inner`` kept it."""

        async def offer(order: LegOrder, call: Call) -> bool:
            kept = False
            try:
                kept = await inner(order, call)
                return kept
            finally:
                self.spawn(self._after_sip(order, call, prompts if kept else None))

        return offer

    def twilio_hook(self, inner: TwilioAcceptedHandler) -> TwilioAcceptedHandler:
        """``inner`` (the Twilio voice channel's accept hook), then the link in the background."""

        async def offer(order: LegOrder, call: TwilioCallRef) -> Handover | None:
            try:
                return await inner(order, call)
            finally:
                self.spawn(self.send(order))

        return offer

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` in a task of its own (kept until done; cancelled by :meth:`close`)."""
        self._tasks.spawn(work)

    async def close(self) -> None:
        """Cancel the sends still running (the node is stopping) and close the WCTP HTTP session."""
        await self._tasks.close()
        if self._http is not None:
            await self._http.close()
            self._http = None

    # --- sending ----------------------------------------------------------------------------------------

    async def send(self, order: LegOrder) -> list[LinkResult]:
        """Send the link for ``order``'s accept to every text-capable contact of its person; record each
        outcome on the leg. Never raises (but for cancellation); returns the outcomes."""
        try:
            return await self._send(order)
        except asyncio.CancelledError:
            raise
        except Exception:  # the task boundary: the call must never see this
            log.exception("[incident=%s leg=%s] video link failed", order.incident_id, order.leg_id)
            return []

    async def _send(self, order: LegOrder) -> list[LinkResult]:
        if order.kind not in PHONE_KINDS:
            await self._skip(order, f"accepted on {order.kind}, not on a phone: no link needed")
            return []
        contacts = await self._contacts(order.person_id)
        usable = [(k, a) for k, a in contacts if self._reachable(k)]
        if not usable:
            await self._skip(order, self._why_none(contacts))
            return []
        link = console_url(self._base, order.room_code)
        text = phi.guard(link_text(order, link), where=f"video link for leg {order.leg_id}")
        results = await asyncio.gather(*(self._one(order, kind, address, text) for kind, address in usable))
        for result in results:
            data: dict[str, Any] = {"channel": result.channel, "via": result.via, "to": result.address}
            if result.sent:
                await self._record(order, SENT, {**data, "provider_id": result.provider_id, "link": link})
            else:
                await self._record(order, FAILED, {**data, "reason": result.reason})
        log.info(
            "[incident=%s leg=%s] video link: %d sent, %d failed",
            order.incident_id,
            order.leg_id,
            sum(r.sent for r in results),
            sum(not r.sent for r in results),
        )
        return list(results)

    def _reachable(self, kind: ContactKind) -> bool:
        return self._twilio is not None if kind == ContactKind.SMS else self._pager is not None

    def _why_none(self, contacts: list[tuple[ContactKind, str]]) -> str:
        if not contacts:
            return "no active sms or pager contact"
        missing = []
        if any(k == ContactKind.SMS for k, _ in contacts):
            missing.append("sms contacts need Twilio, which is not configured")
        if any(k == ContactKind.PAGER for k, _ in contacts):
            missing.append("pager contacts need a pager gateway, which is not configured")
        return "; ".join(missing)

    async def _contacts(self, person_id: str) -> list[tuple[ContactKind, str]]:
        async with self._sessions() as s:
            rows = await s.execute(
                sa.select(ContactMethod.kind, ContactMethod.address)
                .where(
                    ContactMethod.person_id == person_id,
                    ContactMethod.active,
                    ContactMethod.kind.in_((ContactKind.SMS, ContactKind.PAGER)),
                )
                .order_by(ContactMethod.priority, ContactMethod.kind, ContactMethod.address)
            )
            return [(ContactKind(k), str(a)) for k, a in rows.all()]

    async def _one(self, order: LegOrder, kind: ContactKind, address: str, text: str) -> LinkResult:
        if kind == ContactKind.SMS:
            return await self._sms(address, text)
        return await self._page(order, address, text)

    async def _sms(self, address: str, text: str) -> LinkResult:
        assert self._twilio is not None
        result = LinkResult("sms", "twilio-sms", mask(address))
        try:
            msg = await self._client.messages.create_async(
                to=address, from_=self._twilio.from_number, body=text
            )
        except TwilioRestException as exc:
            reason = f"Twilio refused: HTTP {exc.status}, code {exc.code}: {exc.msg}"
            return dataclasses.replace(result, reason=reason)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return dataclasses.replace(result, reason=f"Twilio unreachable: {type(exc).__name__}: {exc}")
        return dataclasses.replace(result, provider_id=str(msg.sid))

    async def _page(self, order: LegOrder, address: str, text: str) -> LinkResult:
        assert self._pager is not None
        settings = self._pager
        scheme, _, target = address.partition(":")
        result = LinkResult("pager", scheme, mask(address))
        try:
            match scheme:
                case "wctp":
                    if self._http is None:
                        self._http = aiohttp.ClientSession()
                    message_id = "video" + order.leg_id.replace("-", "")
                    tracking = await WctpClient(settings, self._http).submit(
                        target, message_id[:32], text, self._clock.now(), two_way=False
                    )
                    return dataclasses.replace(result, provider_id=tracking)
                case "snpp":
                    one_way = dataclasses.replace(settings, snpp_level=min(settings.snpp_level, 2))
                    receipt = await SnppClient(one_way).send(target, text)
                    return dataclasses.replace(result, provider_id=receipt.tag)
                case "mailto":
                    await EmailPager(settings).send(target, f"CONTRAST VIDEO {order.incident_code}", text)
                    return result
                case _:
                    raise PagerError(f"pager address {mask(address)!r}: expected wctp:, snpp: or mailto:")
        except PagerError as exc:
            return dataclasses.replace(result, reason=str(exc))

    # --- SIP announcement ---------------------------------------------------------------------------------

    async def _after_sip(self, order: LegOrder, call: Call, prompts: PromptRenderer | None) -> None:
        results = await self.send(order)
        if prompts is None or not any(r.sent for r in results) or call.ended is not None:
            return
        try:
            await call.play(await prompts.render(ANNOUNCED_TEXT))
        except (SipError, MediaError, PromptError, OSError) as exc:
            log.info(
                "[incident=%s leg=%s] video link not announced: %s", order.incident_id, order.leg_id, exc
            )
            return
        await self._record(order, ANNOUNCED, {"text": ANNOUNCED_TEXT})

    # --- evidence -----------------------------------------------------------------------------------------

    async def _skip(self, order: LegOrder, reason: str) -> None:
        log.info("[incident=%s leg=%s] no video link sent: %s", order.incident_id, order.leg_id, reason)
        await self._record(order, SKIPPED, {"reason": reason})

    async def _record(self, order: LegOrder, kind: str, data: dict[str, Any]) -> None:
        """One event on the accepting leg, in the incident's chain; a failure to write it is logged."""
        try:
            async with self._sessions() as s, s.begin():
                incident = await s.get(Incident, order.incident_id)
                if incident is None:
                    log.warning("[incident=%s] %s for an unknown incident dropped", order.incident_id, kind)
                    return
                await append_event(
                    s,
                    incident=incident,
                    leg_id=order.leg_id,
                    kind=kind,
                    data=data,
                    clock=self._clock,
                    source=self._node_id,
                )
        except (SQLAlchemyError, CommsError):
            log.exception("[incident=%s leg=%s] could not record %s", order.incident_id, order.leg_id, kind)
