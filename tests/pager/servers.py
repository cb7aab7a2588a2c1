"""Small pager gateways on loopback, written from the specs: WCTP 1.3 (XML over HTTP), SNPP (RFC 1861 levels 1-3)
and an SMTP relay (RFC 5321's minimum). Each records what it received, so tests can check the wire and scan it."""

from __future__ import annotations

import asyncio
import secrets
import socket
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from aiohttp import web


def _wctp(inner: ET.Element) -> bytes:
    root = ET.Element("wctp-Operation", wctpVersion="wctp-dtd-v1r3")
    root.append(inner)
    return b'<?xml version="1.0"?>\n' + ET.tostring(root)


@dataclass
class WctpPage:
    recipient: str
    message_id: str
    text: str
    choices: list[str]
    tracking: str
    allow_response: bool
    notices: list[ET.Element] = field(default_factory=list)


class WctpServer:
    """A WCTP carrier gateway: ``wctp-SubmitClientMessage`` and ``wctp-ClientQuery`` on POST /wctp."""

    def __init__(
        self, recipients: set[str], *, sender_id: str = "contrast-comms", security_code: str = "s3cret"
    ):
        self.recipients = recipients
        self.sender_id, self.security_code = sender_id, security_code
        self.pages: dict[str, WctpPage] = {}
        self.requests: list[str] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/wctp", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/wctp"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def device_receives(self, tracking: str) -> None:
        status = ET.Element("wctp-ClientStatusInfo")
        ET.SubElement(status, "wctp-Notification", type="Delivered")
        self.pages[tracking].notices.append(status)

    def device_replies(self, tracking: str, *, choice: str | None = None, text: str | None = None) -> None:
        page = self.pages[tracking]
        reply = ET.Element("wctp-ClientMessageReply", responseToMessageID=page.message_id)
        payload = ET.SubElement(reply, "wctp-Payload")
        if choice is not None:
            mcr = ET.SubElement(payload, "wctp-MCR")
            ET.SubElement(mcr, "wctp-Choice").text = choice
        else:
            ET.SubElement(payload, "wctp-Alphanumeric").text = text or ""
        page.notices.append(reply)

    def _failure(self, code: str, text: str) -> web.Response:
        failure = ET.Element("wctp-Failure", errorCode=code, errorText=text)
        return web.Response(body=_wctp(failure), content_type="text/xml")

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        root = ET.fromstring(body)
        assert root.tag == "wctp-Operation" and root.get("wctpVersion", "").lower() == "wctp-dtd-v1r3"
        (op,) = list(root)
        self.requests.append(op.tag)
        match op.tag:
            case "wctp-SubmitClientMessage":
                origin = op.find("wctp-SubmitClientHeader/wctp-ClientOriginator")
                assert origin is not None
                if (
                    origin.get("senderID") != self.sender_id
                    or origin.get("securityCode") != self.security_code
                ):
                    return self._failure("402", "Invalid securityCode")
                recipient = op.find("wctp-SubmitClientHeader/wctp-Recipient")
                control = op.find("wctp-SubmitClientHeader/wctp-ClientMessageControl")
                assert recipient is not None and control is not None
                rid = recipient.get("recipientID", "")
                if rid not in self.recipients:
                    return self._failure("401", "Invalid recipientID")
                mcr = op.find("wctp-Payload/wctp-MCR")
                if mcr is not None:
                    text = mcr.findtext("wctp-Message") or ""
                    choices = [c.text or "" for c in mcr.iterfind("wctp-Choice")]
                else:
                    text, choices = op.findtext("wctp-Payload/wctp-Alphanumeric") or "", []
                tracking = secrets.token_hex(8)
                self.pages[tracking] = WctpPage(
                    rid,
                    control.get("messageID", ""),
                    text,
                    choices,
                    tracking,
                    control.get("allowResponse") == "true",
                )
                resp = ET.Element("wctp-SubmitClientResponse")
                ET.SubElement(
                    resp,
                    "wctp-ClientSuccess",
                    successCode="200",
                    successText="Accepted",
                    trackingNumber=tracking,
                )
                return web.Response(body=_wctp(resp), content_type="text/xml")
            case "wctp-ClientQuery":
                page = self.pages.get(op.get("trackingNumber", ""))
                if page is None or op.get("recipientID") != page.recipient:
                    return self._failure("404", "Unknown trackingNumber")
                resp = ET.Element("wctp-ClientQueryResponse")
                for notice in page.notices:
                    holder = ET.SubElement(resp, "wctp-ClientResponse")
                    holder.append(notice)
                return web.Response(body=_wctp(resp), content_type="text/xml")
        return self._failure("300", f"Operation {op.tag} not supported")


@dataclass
class SnppPage:
    pager: str
    text: str
    tag: str
    passcode: str
    two_way: bool
    responses: dict[str, str]
    state: str = "queued"  # queued -> delivered -> replied
    reply: str = ""


class SnppServer:
    """An SNPP gateway (RFC 1861): level 1 PAGE/MESS/SEND/RESE/QUIT/HELP, level 2 LOGI/DATA/CALL/SUBJ/LEVE,
    level 3 2WAY/MCRE/MSTA. Commands are matched on their first four letters, case-insensitively."""

    def __init__(self, pagers: set[str], *, login: tuple[str, str] | None = None) -> None:
        self.pagers = pagers
        self.login = login
        self.commands: list[str] = []
        self.pages: list[SnppPage] = []
        self.by_tag: dict[str, SnppPage] = {}
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def deliver(self, tag: str) -> None:
        self.by_tag[tag].state = "delivered"

    def reply(self, tag: str, code: str) -> None:
        page = self.by_tag[tag]
        page.state, page.reply = "replied", code

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        say("220 SNPP (V3) Gateway Ready")
        pager: str | None = None
        text: list[str] = []
        two_way = False
        logged_in = self.login is None
        responses: dict[str, str] = {}
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    return
                line = raw.decode().rstrip("\r\n")
                self.commands.append(line)
                verb, _, arg = line.partition(" ")
                match verb[:4].upper():
                    case "QUIT":
                        say("221 OK, Goodbye")
                        await writer.drain()
                        return
                    case "LOGI":
                        user, _, password = arg.partition(" ")
                        logged_in = self.login is None or (user, password) == self.login
                        say("250 Login Accepted" if logged_in else "550 Error, Invalid Login")
                    case "2WAY":
                        two_way = True
                        say("250 OK, Beginning 2-Way Transaction")
                    case "PAGE":
                        if not logged_in:
                            say("550 Error, Login Required")
                        elif arg not in self.pagers:
                            say("550 Error, Invalid Pager ID")
                        elif pager is not None:
                            say("503 ERROR, Already Selected PAGEr")
                        else:
                            pager = arg
                            say(
                                "850 Two-Way Unit Online and Available; Transaction Accepted"
                                if two_way
                                else "250 Pager ID Accepted"
                            )
                    case "MCRE":
                        if not two_way:
                            say("550 MCResponses Not Enabled")
                        else:
                            code, _, label = arg.partition(" ")
                            if code in responses:
                                say("502 Error! Would Duplicate Previously Entered MCResponse")
                            else:
                                responses[code] = label
                                say("250 Response Added to Transaction")
                    case "MESS":
                        text = [arg]
                        say("250 Message OK")
                    case "DATA":
                        say("354 Begin Input; End with <CRLF>'.'<CRLF>")
                        await writer.drain()
                        text = []
                        while True:
                            data_line = (await reader.readline()).decode().rstrip("\r\n")
                            if data_line == ".":
                                break
                            text.append(data_line[1:] if data_line.startswith("..") else data_line)
                        say("250 Data Received")
                    case "CALL" | "SUBJ" | "LEVE" | "ALER" | "HOLD" | "COVE":
                        say("250 OK")
                    case "RESE":
                        pager, text, responses = None, [], {}
                        say("250 RESET OK")
                    case "SEND":
                        if pager is None or not text:
                            say("503 Error, Pager ID or Message Incomplete")
                        else:
                            page = SnppPage(
                                pager,
                                "\n".join(text),
                                secrets.token_hex(4),
                                secrets.token_hex(3),
                                two_way,
                                responses,
                            )
                            self.pages.append(page)
                            self.by_tag[page.tag] = page
                            if two_way:
                                say(f"960 {page.tag} {page.passcode} OK, Message QUEUED for Delivery")
                            else:
                                say("250 Message Sent Successfully")
                            pager, text, responses = None, [], {}
                    case "MSTA":
                        tag, _, passcode = arg.partition(" ")
                        found = self.by_tag.get(tag)
                        if found is None or found.passcode != passcode:
                            say("550 Error, Invalid Message_Tag or Pass_Code")
                        elif found.state == "queued":
                            say(f"960 {tag} OK, Message QUEUED for Delivery")
                        elif found.state == "delivered":
                            say("860 Delivered, Awaiting Reply")
                        else:
                            say(f"889 {found.reply} {found.responses.get(found.reply, '')}".rstrip())
                    case "HELP":
                        say("214 PAGE MESS SEND QUIT LOGI DATA 2WAY MCRE MSTA")
                        say("250 End of Help Information")
                    case _:
                        say("500 Command Not Implemented")
                await writer.drain()
        finally:
            writer.close()


class ClosingSnppServer(SnppServer):
    """An SNPP gateway that greets, reads the first command and hangs up (FIN) without answering it."""

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 SNPP (V3) Gateway Ready\r\n")
        await writer.drain()
        self.commands.append((await reader.readline()).decode().strip())
        writer.close()
        await writer.wait_closed()


class ResettingSnppServer(SnppServer):
    """An SNPP gateway that greets, reads the first command and then resets the connection (TCP RST)."""

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 SNPP (V3) Gateway Ready\r\n")
        await writer.drain()
        self.commands.append((await reader.readline()).decode().strip())
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


class SilentSnppServer(SnppServer):
    """An SNPP gateway that accepts the connection and never greets; ``closed`` is set when the client drops it."""

    def __init__(self) -> None:
        super().__init__(set())
        self.closed = asyncio.Event()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # until the client closes (EOF) or resets
        except OSError:
            pass
        finally:
            self.closed.set()
            writer.close()


class SmtpServer:
    """The minimum of an SMTP relay (RFC 5321 §4.5.1): HELO/EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""

    def __init__(self, *, refuse_rcpt: bool = False) -> None:
        self.refuse_rcpt = refuse_rcpt
        self.messages: list[tuple[str, list[str], str]] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        say("220 relay.test ESMTP")
        sender, rcpts = "", []
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    return
                line = raw.decode().rstrip("\r\n")
                verb = line[:4].upper()
                match verb:
                    case "HELO":
                        say("250 relay.test")
                    case "EHLO":
                        say("250 relay.test")
                    case "MAIL":
                        sender, rcpts = line[10:].strip("<> "), []
                        say("250 OK")
                    case "RCPT":
                        if self.refuse_rcpt:
                            say("550 No such user")
                        else:
                            rcpts.append(line[8:].strip("<> "))
                            say("250 OK")
                    case "DATA":
                        say("354 End data with <CR><LF>.<CR><LF>")
                        await writer.drain()
                        body: list[str] = []
                        while True:
                            data_line = (await reader.readline()).decode().rstrip("\r\n")
                            if data_line == ".":
                                break
                            body.append(data_line[1:] if data_line.startswith("..") else data_line)
                        self.messages.append((sender, rcpts, "\n".join(body)))
                        say("250 OK queued")
                    case "RSET" | "NOOP":
                        say("250 OK")
                    case "QUIT":
                        say("221 Bye")
                        await writer.drain()
                        return
                    case _:
                        say("502 Command not implemented")
                await writer.drain()
        finally:
            writer.close()
