"""Pagers: WCTP 1.3 (XML over HTTP), SNPP (RFC 1861, levels 1-3, over TCP) and e-mail-to-pager (SMTP).

Theory of operation
-------------------
One :class:`PagerChannel` (contact kind ``pager``) places a page per leg; the contact address names the
protocol: ``wctp:<recipientID>``, ``snpp:<pagerID>`` or ``mailto:<address>``. The text is the same no-PHI page
text as SMS (severity, site, room, incident code, how to accept, link), passed through :func:`comms.phi.guard`.

* A carrier taking the page (WCTP ``wctp-ClientSuccess``, SNPP ``250``/``960``/``86x``, SMTP ``250``) is recorded
  as ``leg.delivered`` (``stage`` says which) -- delivered, never accepted. A refusal ends the leg ``failed``.
* Two-way: WCTP pages are sent with ``allowResponse`` and a multiple-choice response (``wctp-MCR``: "1 Accept",
  "2 Decline"); SNPP level 3 pages with ``2WAY`` and ``MCREsponse 01 Accept`` / ``02 Decline``. The channel then
  polls (WCTP ``wctp-ClientQuery`` by tracking number; SNPP ``MSTAtus <tag> <pass>``) every ``poll_s`` until the
  leg ends. A reply that chooses Accept, or says ``1`` / ``ACK <code>``, asks the runner to accept
  (:meth:`LegReporter.try_accept`); Decline records ``leg.declined``. Read receipts are ``leg.read``.
* SNPP levels 1 and 2 and e-mail are one-way: the leg stays live (delivered) until the tier's timeout or an
  accept elsewhere cancels it.

The codecs (:func:`wctp_submit`, :func:`parse_wctp_submit`, :func:`wctp_query`, :func:`parse_wctp_query`,
:func:`parse_snpp_reply`) are pure; the clients are thin asyncio adapters (aiohttp for WCTP, asyncio streams for
SNPP, stdlib ``smtplib`` in a thread for e-mail: one message per page does not justify another dependency).
Element names follow the WCTP v1r3 DTD, and SNPP response codes RFC 1861 section 4.6, as we read them; both are
tested against servers written in the tests from the same reading (see docs/decisions/0050-twilio-and-pagers.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.policy
import logging
import smtplib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import aiohttp

from comms import phi
from comms.clock import Clock
from comms.errors import CommsError
from escalation.channel import LegOrder, LegReporter
from escalation.twilio_channel import Reply, page_text, parse_reply

log = logging.getLogger(__name__)

WCTP_VERSION = "wctp-dtd-v1r3"
WCTP_DOCTYPE = '<!DOCTYPE wctp-Operation SYSTEM "http://dtd.wctp.org/wctp-dtd-v1r3.dtd">'
ACCEPT_CHOICE, DECLINE_CHOICE = "1 Accept", "2 Decline"
SNPP_ACCEPT, SNPP_DECLINE = "01", "02"


class PagerError(CommsError):
    """A pager gateway refused a page or could not be reached (the peer's or the network's fault)."""


# --------------------------------------------------------------------------------------------------- WCTP codec


def _wctp_root() -> ET.Element:
    return ET.Element("wctp-Operation", wctpVersion=WCTP_VERSION)


def _wctp_render(root: ET.Element) -> bytes:
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{WCTP_DOCTYPE}\n{body}'.encode()


def wctp_submit(
    *,
    sender_id: str,
    security_code: str | None,
    recipient_id: str,
    message_id: str,
    text: str,
    now: dt.datetime,
    two_way: bool = True,
) -> bytes:
    """A ``wctp-SubmitClientMessage``: alphanumeric, or a multiple-choice response (Accept/Decline) if two-way."""
    root = _wctp_root()
    msg = ET.SubElement(root, "wctp-SubmitClientMessage")
    header = ET.SubElement(
        msg, "wctp-SubmitClientHeader", submitTimestamp=now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    )
    originator = ET.SubElement(header, "wctp-ClientOriginator", senderID=sender_id)
    if security_code:
        originator.set("securityCode", security_code)
    ET.SubElement(
        header,
        "wctp-ClientMessageControl",
        messageID=message_id[:32],
        allowResponse="true" if two_way else "false",
        notifyWhenDelivered="true",
        notifyWhenRead="true" if two_way else "false",
        deliveryPriority="HIGH",
    )
    ET.SubElement(header, "wctp-Recipient", recipientID=recipient_id)
    payload = ET.SubElement(msg, "wctp-Payload")
    if two_way:
        mcr = ET.SubElement(payload, "wctp-MCR")
        ET.SubElement(mcr, "wctp-Message").text = text
        for choice in (ACCEPT_CHOICE, DECLINE_CHOICE):
            ET.SubElement(mcr, "wctp-Choice").text = choice
    else:
        ET.SubElement(payload, "wctp-Alphanumeric").text = text
    return _wctp_render(root)


def wctp_query(*, sender_id: str, security_code: str | None, recipient_id: str, tracking: str) -> bytes:
    """A ``wctp-ClientQuery`` for one tracking number (status notifications and replies)."""
    root = _wctp_root()
    query = ET.SubElement(
        root, "wctp-ClientQuery", senderID=sender_id, recipientID=recipient_id, trackingNumber=tracking
    )
    if security_code:
        query.set("securityCode", security_code)
    return _wctp_render(root)


def _parse_wctp(body: bytes) -> ET.Element:
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise PagerError(f"WCTP answer is not XML: {exc}; expected a wctp-Operation document") from exc
    if root.tag != "wctp-Operation":
        raise PagerError(f"WCTP answer has root <{root.tag}>: expected <wctp-Operation>")
    failure = root.find(".//wctp-Failure")
    if failure is not None:
        raise PagerError(
            f"WCTP failure {failure.get('errorCode', '?')}: {failure.get('errorText', '').strip() or 'no text'}"
        )
    return root


def parse_wctp_submit(body: bytes) -> str:
    """The tracking number of a ``wctp-SubmitClientResponse``; a ``wctp-Failure`` raises :class:`PagerError`."""
    root = _parse_wctp(body)
    success = root.find("wctp-SubmitClientResponse/wctp-ClientSuccess")
    tracking = success.get("trackingNumber") if success is not None else None
    if not tracking:
        raise PagerError("WCTP submit answer has no wctp-ClientSuccess with a trackingNumber")
    return tracking


@dataclass(frozen=True)
class PagerNotice:
    """One fact from a pager gateway: ``delivered``, ``read``, or ``reply`` (with ``text``)."""

    kind: str
    text: str = ""
    message_id: str = ""


def parse_wctp_query(body: bytes) -> list[PagerNotice]:
    """Notices of a ``wctp-ClientQueryResponse`` (``wctp-ClientStatusInfo`` and ``wctp-ClientMessageReply``)."""
    root = _parse_wctp(body)
    notices: list[PagerNotice] = []
    for item in root.iterfind("wctp-ClientQueryResponse/wctp-ClientResponse/*"):
        match item.tag:
            case "wctp-ClientStatusInfo":
                for note in item.iterfind("wctp-Notification"):
                    kind = (note.get("type") or "").lower()
                    if kind in ("delivered", "read", "queued"):
                        notices.append(PagerNotice(kind))
            case "wctp-ClientMessageReply":
                text = "".join(
                    t.text or "" for t in item.iterfind("wctp-Payload/*") if t.tag in ("wctp-Alphanumeric",)
                )
                choice = item.find("wctp-Payload/wctp-MCR/wctp-Choice")
                if choice is not None:
                    text = choice.text or ""
                notices.append(PagerNotice("reply", text.strip(), item.get("responseToMessageID", "")))
    return notices


# --------------------------------------------------------------------------------------------------- SNPP codec


def parse_snpp_reply(line: str) -> tuple[int, str]:
    """``"250 OK"`` -> ``(250, "OK")``; anything without a 3-digit code raises :class:`PagerError`."""
    code, _, text = line.strip().partition(" ")
    if len(code) != 3 or not code.isdigit():
        raise PagerError(f"SNPP answer {line.strip()!r} has no 3-digit code: expected e.g. '250 OK'")
    return int(code), text


def snpp_notice(code: int, text: str) -> PagerNotice | None:
    """Map an ``MSTAtus`` answer: 96x queued, 86x delivered, 87x read, 88x concluded (with a reply)."""
    match code // 10:
        case 96:
            return PagerNotice("queued")
        case 86:
            return PagerNotice("delivered")
        case 87:
            return PagerNotice("read")
        case 88:
            # "88x <MCR code> <text>": the unit's reply
            reply_code, _, reply_text = text.partition(" ")
            if reply_code == SNPP_ACCEPT:
                return PagerNotice("reply", "1")
            if reply_code == SNPP_DECLINE:
                return PagerNotice("reply", "2")
            return PagerNotice("reply", text.strip() or reply_text)
    return None


# ------------------------------------------------------------------------------------------------------ clients


@dataclass(frozen=True)
class PagerSettings:
    """The gateways of the pager channel (built from ``[pager]`` settings by the CLI); unset ones refuse pages."""

    wctp_url: str | None = None
    wctp_sender_id: str = "contrast-comms"
    wctp_security_code: str | None = field(default=None, repr=False)
    snpp_host: str | None = None
    snpp_port: int = 444
    snpp_level: int = 3
    snpp_login: str | None = None
    snpp_password: str | None = field(default=None, repr=False)
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_from: str = "alerts@localhost"
    public_base_url: str = "http://127.0.0.1:8080"
    poll_s: float = 5.0
    timeout_s: float = 10.0


class WctpClient:
    def __init__(self, settings: PagerSettings, http: aiohttp.ClientSession) -> None:
        if not settings.wctp_url:
            raise PagerError("no WCTP gateway configured: expected pager.wctp_url")
        self._s = settings
        self._http = http
        self._url = settings.wctp_url

    async def _post(self, body: bytes) -> bytes:
        try:
            async with self._http.post(
                self._url,
                data=body,
                headers={"Content-Type": "text/xml; charset=utf-8"},
                timeout=aiohttp.ClientTimeout(total=self._s.timeout_s),
            ) as resp:
                data = await resp.read()
                if resp.status != 200:
                    raise PagerError(f"WCTP gateway answered HTTP {resp.status}: expected 200")
                return data
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PagerError(f"WCTP gateway unreachable: {type(exc).__name__}: {exc}") from exc

    async def submit(
        self, recipient_id: str, message_id: str, text: str, now: dt.datetime, *, two_way: bool = True
    ) -> str:
        """Submit a page; returns the gateway's tracking number. ``two_way=False``: information only, no reply."""
        body = wctp_submit(
            sender_id=self._s.wctp_sender_id,
            security_code=self._s.wctp_security_code,
            recipient_id=recipient_id,
            message_id=message_id,
            text=text,
            now=now,
            two_way=two_way,
        )
        return parse_wctp_submit(await self._post(body))

    async def query(self, recipient_id: str, tracking: str) -> list[PagerNotice]:
        body = wctp_query(
            sender_id=self._s.wctp_sender_id,
            security_code=self._s.wctp_security_code,
            recipient_id=recipient_id,
            tracking=tracking,
        )
        return parse_wctp_query(await self._post(body))


class SnppSession:
    """One SNPP connection: send a command, read one reply line (RFC 1861).

    Every failure is a :class:`PagerError` naming the gateway: a refused connection, a silent or closing
    gateway, and a connection reset or broken mid-session (``OSError`` from the socket) alike.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout_s: float, gateway: str
    ) -> None:
        self._r, self._w, self._timeout = reader, writer, timeout_s
        self._gateway = gateway

    @classmethod
    async def open(cls, host: str, port: int, timeout_s: float) -> SnppSession:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        except (OSError, TimeoutError) as exc:
            raise PagerError(f"SNPP gateway {host}:{port} unreachable: {exc}") from exc
        session = cls(reader, writer, timeout_s, f"{host}:{port}")
        try:
            code, text = await session.read()
        except BaseException:
            session.abort()  # no greeting (silent, closed, reset, or we were cancelled): nothing to QUIT
            raise
        if code != 220:
            await session.close()
            raise PagerError(f"SNPP greeting {code} {text!r}: expected 220")
        return session

    def _broken(self, exc: OSError) -> PagerError:
        return PagerError(f"SNPP gateway {self._gateway} connection failed: {type(exc).__name__}: {exc}")

    async def read(self) -> tuple[int, str]:
        try:
            line = await asyncio.wait_for(self._r.readline(), self._timeout)
        except TimeoutError as exc:
            raise PagerError(f"SNPP gateway {self._gateway} did not answer in time") from exc
        except OSError as exc:
            raise self._broken(exc) from exc
        if not line:
            raise PagerError(f"SNPP gateway {self._gateway} closed the connection")
        return parse_snpp_reply(line.decode("ascii", "replace"))

    async def _write(self, data: bytes) -> None:
        try:
            self._w.write(data)
            await self._w.drain()
        except OSError as exc:
            raise self._broken(exc) from exc

    async def command(self, line: str, expect: tuple[int, ...] = (250,)) -> tuple[int, str]:
        if "\r" in line or "\n" in line:
            raise PagerError(f"SNPP command {line[:20]!r}… contains a line break: expected one line")
        await self._write(line.encode("ascii", "replace") + b"\r\n")
        code, text = await self.read()
        if code not in expect:
            raise PagerError(f"SNPP {line.split()[0]} answered {code} {text!r}: expected {expect}")
        return code, text

    async def data(self, text: str) -> None:
        await self.command("DATA", (354,))
        lines = [("." + ln if ln.startswith(".") else ln) for ln in text.splitlines()] + ["."]
        await self._write("".join(ln + "\r\n" for ln in lines).encode("ascii", "replace"))
        code, reply = await self.read()
        if code != 250:
            raise PagerError(f"SNPP DATA answered {code} {reply!r}: expected 250")

    async def close(self) -> None:
        with contextlib.suppress(OSError, TimeoutError):
            self._w.write(b"QUIT\r\n")
            await self._w.drain()
            await asyncio.wait_for(self._r.readline(), 1.0)
        self._w.close()
        with contextlib.suppress(OSError):
            await self._w.wait_closed()

    def abort(self) -> None:
        """Drop the connection at once, without QUIT (the gateway never greeted us)."""
        self._w.transport.abort()


@dataclass(frozen=True)
class SnppReceipt:
    stage: str
    tag: str | None = None
    passcode: str | None = None


class SnppClient:
    def __init__(self, settings: PagerSettings) -> None:
        if not settings.snpp_host:
            raise PagerError("no SNPP gateway configured: expected pager.snpp_host")
        if settings.snpp_level not in (1, 2, 3):
            raise PagerError(f"SNPP level {settings.snpp_level} is not known: expected 1, 2 or 3")
        self._s = settings
        self.host, self.port = settings.snpp_host, settings.snpp_port

    async def send(self, pager_id: str, text: str, *, caller_id: str | None = None) -> SnppReceipt:
        level = self._s.snpp_level
        session = await SnppSession.open(self.host, self.port, self._s.timeout_s)
        try:
            if level >= 2 and self._s.snpp_login:
                login = self._s.snpp_login + (f" {self._s.snpp_password}" if self._s.snpp_password else "")
                await session.command(f"LOGI {login}")
            if level == 3:
                await session.command("2WAY")
                await session.command(f"PAGE {pager_id}", (250, 850, 950))
                await session.command(f"MCRE {SNPP_ACCEPT} Accept")
                await session.command(f"MCRE {SNPP_DECLINE} Decline")
                await session.command(f"MESS {text}")
                code, reply = await session.command("SEND", (250, 860, 960))
                tag, passcode = _tag_and_pass(reply)
                return SnppReceipt("queued" if code == 960 else "delivered", tag, passcode)
            await session.command(f"PAGE {pager_id}")
            if level == 2:
                if caller_id:
                    await session.command(f"CALL {caller_id}")
                await session.data(text)
            else:
                await session.command(f"MESS {text}")
            await session.command("SEND")
            return SnppReceipt("carrier-accepted")
        finally:
            await session.close()

    async def status(self, tag: str, passcode: str) -> PagerNotice | None:
        session = await SnppSession.open(self.host, self.port, self._s.timeout_s)
        try:
            if self._s.snpp_login:
                login = self._s.snpp_login + (f" {self._s.snpp_password}" if self._s.snpp_password else "")
                await session.command(f"LOGI {login}")
            code, text = await session.command(
                f"MSTA {tag} {passcode}", (860, 861, 870, 871, 880, 881, 888, 889, 960)
            )
            return snpp_notice(code, text)
        finally:
            await session.close()


def _tag_and_pass(text: str) -> tuple[str, str]:
    parts = text.split()
    if len(parts) < 2:
        raise PagerError(f"SNPP SEND answer {text!r} has no Message_Tag and Pass_Code")
    return parts[0], parts[1]


_PAGER_MAIL_POLICY = email.policy.SMTP.clone(max_line_length=998)


class EmailPager:
    """E-mail-to-pager through an SMTP relay (stdlib ``smtplib`` in a thread)."""

    def __init__(self, settings: PagerSettings) -> None:
        if not settings.smtp_host:
            raise PagerError("no SMTP relay configured: expected pager.smtp_host")
        self._s = settings

    def _send(self, to: str, subject: str, text: str) -> None:
        # 7bit lines up to RFC 5322's 998, not quoted-printable at 78: a pager gateway that shows the raw body
        # must not get "=" soft breaks in the middle of a link
        msg = EmailMessage(policy=_PAGER_MAIL_POLICY)
        msg["From"], msg["To"], msg["Subject"] = self._s.smtp_from, to, subject
        msg.set_content(text)
        assert self._s.smtp_host is not None
        with smtplib.SMTP(self._s.smtp_host, self._s.smtp_port, timeout=self._s.timeout_s) as smtp:
            smtp.send_message(msg)

    async def send(self, to: str, subject: str, text: str) -> None:
        try:
            await asyncio.to_thread(self._send, to, subject, text)
        except (smtplib.SMTPException, OSError) as exc:
            raise PagerError(f"SMTP relay refused the page: {type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------------------------------------------ channel


@dataclass
class _PagerLeg:
    order: LegOrder
    reporter: LegReporter
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False


class PagerChannel:
    """Pages ``pager`` contacts by WCTP, SNPP or e-mail according to the address scheme."""

    kind = "pager"

    def __init__(self, settings: PagerSettings, clock: Clock) -> None:
        self._s = settings
        self._clock = clock
        self._legs: dict[str, _PagerLeg] = {}
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    def live_legs(self) -> list[str]:
        return sorted(self._legs)

    async def cancel(self, leg_id: str, reason: str) -> None:
        leg = self._legs.get(leg_id)
        if leg is None or leg.ended:
            return
        cause = "no_answer" if reason in ("tier-timeout", "ring-timeout") else "cancelled"
        await self._end(leg, cause, reason, by="local")

    async def place(self, order: LegOrder, reporter: LegReporter) -> None:
        leg = self._legs[order.leg_id] = _PagerLeg(order, reporter)
        scheme, _, target = order.address.partition(":")
        text = phi.guard(page_text(order, self._s.public_base_url), where=f"pager leg {order.leg_id}")
        try:
            await reporter.record(order.leg_id, "leg.invite_sent", {"to": order.address, "via": scheme})
            match scheme:
                case "wctp":
                    await self._wctp(leg, target, text)
                case "snpp":
                    await self._snpp(leg, target, text)
                case "mailto":
                    await EmailPager(self._s).send(target, f"CONTRAST ALERT {order.incident_code}", text)
                    await reporter.record(order.leg_id, "leg.delivered", {"stage": "smtp-accepted"})
                    await leg.stop.wait()
                case _:
                    raise PagerError(f"pager address {order.address!r}: expected wctp:, snpp: or mailto:")
        except PagerError as exc:
            log.info("[incident=%s leg=%s] page failed: %s", order.incident_id, order.leg_id, exc)
            await self._end(leg, "failed", str(exc), by=scheme or "pager")
        finally:
            self._legs.pop(order.leg_id, None)

    async def _wctp(self, leg: _PagerLeg, recipient: str, text: str) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        client = WctpClient(self._s, self._http)
        order = leg.order
        tracking = await client.submit(recipient, order.leg_id.replace("-", "")[:32], text, self._clock.now())
        await leg.reporter.record(
            order.leg_id, "leg.delivered", {"stage": "carrier-accepted", "tracking": tracking}
        )
        await self._poll(leg, lambda: client.query(recipient, tracking))

    async def _snpp(self, leg: _PagerLeg, pager_id: str, text: str) -> None:
        client = SnppClient(self._s)
        receipt = await client.send(pager_id, text)
        data: dict[str, Any] = {"stage": receipt.stage, "level": self._s.snpp_level}
        if receipt.tag:
            data["message_tag"] = receipt.tag
        await leg.reporter.record(leg.order.leg_id, "leg.delivered", data)
        if receipt.tag is None or receipt.passcode is None:
            await leg.stop.wait()  # one-way: wait for the tier's timeout or an accept elsewhere
            return
        tag, passcode = receipt.tag, receipt.passcode

        async def status() -> list[PagerNotice]:
            notice = await client.status(tag, passcode)
            return [] if notice is None else [notice]

        await self._poll(leg, status)

    async def _poll(self, leg: _PagerLeg, query: Any) -> None:
        seen: set[PagerNotice] = set()
        order = leg.order
        while not leg.stop.is_set():
            try:
                notices: list[PagerNotice] = await query()
            except PagerError as exc:
                log.info("[leg=%s] pager status poll failed (will retry): %s", order.leg_id, exc)
                notices = []
            for notice in notices:
                if notice in seen or leg.ended:
                    continue
                seen.add(notice)
                await self._notice(leg, notice)
            if leg.ended:
                return
            stop = asyncio.get_running_loop().create_task(leg.stop.wait())
            sleep = asyncio.get_running_loop().create_task(self._clock.sleep(self._s.poll_s))
            await asyncio.wait({stop, sleep}, return_when=asyncio.FIRST_COMPLETED)
            for task in (stop, sleep):
                task.cancel()

    async def _notice(self, leg: _PagerLeg, notice: PagerNotice) -> None:
        leg_id = leg.order.leg_id
        match notice.kind:
            case "delivered":
                await leg.reporter.record(leg_id, "leg.delivered", {"stage": "device"})
            case "read":
                await leg.reporter.record(leg_id, "leg.read", {})
            case "queued":
                pass
            case "reply":
                await self._reply(leg, notice.text.strip())

    async def _reply(self, leg: _PagerLeg, text: str) -> None:
        leg_id, order = leg.order.leg_id, leg.order
        words = text.split()
        choice = words[0] if words and words[0] in ("1", "2") and not text[1:].strip().isdigit() else ""
        if choice == "2" or text.lower() == "decline":
            await leg.reporter.record(leg_id, "leg.pager_reply", {"reply": "decline"})
            await leg.reporter.record(leg_id, "leg.declined", {"digits": "2", "method": "pager"})
            leg.ended = True
            leg.stop.set()
            return
        reply = Reply(True) if choice == "1" else parse_reply(text)
        await leg.reporter.record(leg_id, "leg.pager_reply", {"reply": reply.evidence})
        if not reply.ack or (reply.code is not None and reply.code != order.incident_code.upper()):
            return
        if order.require_pin and (reply.pin is None or not await leg.reporter.check_pin(leg_id, reply.pin)):
            await leg.reporter.record(leg_id, "leg.accept_needs_pin", {"pin_given": reply.pin is not None})
            return
        result = await leg.reporter.try_accept(leg_id, digits=reply.evidence, method="pager")
        log.info("[leg=%s] pager reply accept: won=%s", leg_id, result.won)
        leg.ended = True
        leg.stop.set()

    async def _end(self, leg: _PagerLeg, cause: str, reason: str, *, by: str) -> None:
        if leg.ended:
            leg.stop.set()
            return
        leg.ended = True
        leg.stop.set()
        await leg.reporter.record(
            leg.order.leg_id, "leg.ended", {"status": None, "cause": cause, "reason": reason, "by": by}
        )
