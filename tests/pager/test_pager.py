"""Pager channel against WCTP, SNPP and SMTP gateways on loopback: carrier-accepted is delivered, never
accepted; a two-way reply accepts (or declines); every page is free of PHI."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest

from comms import phi
from comms.clock import SystemClock
from escalation.channel import AcceptResult, LegOrder
from escalation.pager import (
    PagerChannel,
    PagerError,
    PagerSettings,
    parse_snpp_reply,
    parse_wctp_query,
    parse_wctp_submit,
    snpp_notice,
    wctp_submit,
)
from tests.pager.servers import ResettingSnppServer, SilentSnppServer, SmtpServer, SnppServer, WctpServer

BASE = "https://comms.example.test"


class Reporter:
    """The runner's side of the channel interface, in memory: events in order, first accept wins."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.holder: str | None = None

    async def record(self, leg_id: str, kind: str, data: dict[str, Any] | None = None) -> None:
        self.events.append((leg_id, kind, data or {}))

    async def try_accept(self, leg_id: str, *, digits: str, method: str) -> AcceptResult:
        if self.holder is None:
            self.holder = leg_id
            self.events.append((leg_id, "leg.accepted", {"digits": digits, "method": method}))
            return AcceptResult(True, "Dr Lee")
        self.events.append((leg_id, "leg.accept_refused", {"digits": digits, "method": method}))
        return AcceptResult(False, "Dr Park")

    async def check_pin(self, leg_id: str, digits: str) -> bool:
        ok = digits == "2468"
        self.events.append((leg_id, "leg.pin_checked", {"ok": ok}))
        return ok

    def kinds(self, leg_id: str = "leg-1") -> list[str]:
        return [k for leg, k, _ in self.events if leg == leg_id]

    def data(self, kind: str, leg_id: str = "leg-1") -> dict[str, Any]:
        return next(d for leg, k, d in self.events if leg == leg_id and k == kind)

    async def wait(self, kind: str, leg_id: str = "leg-1", timeout: float = 5.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while kind not in self.kinds(leg_id):
            if loop.time() > end:
                raise AssertionError(f"no {kind} within {timeout} s; saw {self.kinds(leg_id)}")
            await asyncio.sleep(0.01)
        return self.data(kind, leg_id)


def order(address: str, leg_id: str = "leg-1", *, require_pin: bool = False) -> LegOrder:
    return LegOrder(
        leg_id=leg_id,
        incident_id="6c0c1b6e-3f0e-4b8e-9d55-2f1c8c0e7a11",
        incident_code="K7RXM4",
        severity="severe",
        site_name="Northside Imaging",
        room_code="CT2",
        room_name="CT 2",
        person_id="p-lee",
        person_name="Dr Lee",
        kind="pager",
        address=address,
        ring_timeout_s=30.0,
        tier=0,
        require_pin=require_pin,
    )


@pytest.fixture
async def snpp() -> AsyncIterator[SnppServer]:
    server = SnppServer({"8001", "8002"}, login=("comms", "pw"))
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpServer]:
    server = SmtpServer()
    await server.start()
    yield server
    await server.close()


async def channel_for(**kwargs: Any) -> PagerChannel:
    settings = PagerSettings(public_base_url=BASE, poll_s=0.02, timeout_s=2.0, **kwargs)
    return PagerChannel(settings, SystemClock())


async def run(channel: PagerChannel, o: LegOrder, reporter: Reporter) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(channel.place(o, reporter))


# ------------------------------------------------------------------------------------------------------- WCTP


async def test_wctp_carrier_accept_is_delivered_and_a_two_way_reply_accepts(wctp: WctpServer) -> None:
    channel = await channel_for(wctp_url=wctp.url, wctp_security_code="s3cret")
    reporter = Reporter()
    task = await run(channel, order("wctp:5551001"), reporter)
    delivered = await reporter.wait("leg.delivered")
    assert delivered["stage"] == "carrier-accepted"
    (page,) = wctp.pages.values()
    assert delivered["tracking"] == page.tracking
    assert page.allow_response and page.choices == ["1 Accept", "2 Decline"]
    assert page.text.startswith("CONTRAST ALERT SEVERE: Northside Imaging, room CT2. Code K7RXM4.")
    await asyncio.sleep(0.1)
    assert reporter.holder is None  # carrier accepted and polls answered: still nobody accepted

    wctp.device_receives(page.tracking)
    await reporter.wait("leg.delivered")
    wctp.device_replies(page.tracking, choice="1 Accept")
    await asyncio.wait_for(task, 5)
    assert reporter.holder == "leg-1"
    kinds = reporter.kinds()
    assert kinds.index("leg.pager_reply") < kinds.index("leg.accepted")
    assert reporter.data("leg.accepted")["method"] == "pager"
    assert [d["stage"] for _, k, d in reporter.events if k == "leg.delivered"] == [
        "carrier-accepted",
        "device",
    ]
    assert "wctp-ClientQuery" in wctp.requests
    assert channel.live_legs() == []
    await channel.close()


async def test_wctp_text_reply_decline_and_refusals(wctp: WctpServer) -> None:
    channel = await channel_for(wctp_url=wctp.url, wctp_security_code="s3cret")
    reporter = Reporter()
    task = await run(channel, order("wctp:5551002"), reporter)
    await reporter.wait("leg.delivered")
    (page,) = wctp.pages.values()
    wctp.device_replies(page.tracking, text="2 Decline")
    await asyncio.wait_for(task, 5)
    assert reporter.data("leg.declined") == {"digits": "2", "method": "pager"}
    assert reporter.holder is None

    unknown = Reporter()
    await channel.place(order("wctp:999"), unknown)
    ended = unknown.data("leg.ended")
    assert ended["cause"] == "failed" and "WCTP failure 401" in ended["reason"]

    bad_code = await channel_for(wctp_url=wctp.url, wctp_security_code="wrong")
    refused = Reporter()
    await bad_code.place(order("wctp:5551001"), refused)
    assert "402" in refused.data("leg.ended")["reason"]
    await channel.close()
    await bad_code.close()


async def test_wctp_ack_with_code_accepts_and_cancel_ends_an_unanswered_page(wctp: WctpServer) -> None:
    channel = await channel_for(wctp_url=wctp.url, wctp_security_code="s3cret")
    reporter = Reporter()
    first = await run(channel, order("wctp:5551001", "leg-1"), reporter)
    second = await run(channel, order("wctp:5551002", "leg-2"), reporter)
    await reporter.wait("leg.delivered", "leg-1")
    await reporter.wait("leg.delivered", "leg-2")
    by_recipient = {p.recipient: p for p in wctp.pages.values()}
    wctp.device_replies(by_recipient["5551002"].tracking, text="ack k7rxm4")
    await asyncio.wait_for(second, 5)
    assert reporter.holder == "leg-2"
    await channel.cancel("leg-1", "accepted-elsewhere")
    await asyncio.wait_for(first, 5)
    assert reporter.data("leg.ended", "leg-1")["cause"] == "cancelled"
    await channel.cancel("leg-1", "again")  # idempotent, unknown now
    assert reporter.kinds("leg-1").count("leg.ended") == 1
    await channel.close()


async def test_wctp_reply_needs_the_pin_when_the_person_has_one(wctp: WctpServer) -> None:
    channel = await channel_for(wctp_url=wctp.url, wctp_security_code="s3cret")
    reporter = Reporter()
    task = await run(channel, order("wctp:5551001", require_pin=True), reporter)
    await reporter.wait("leg.delivered")
    (page,) = wctp.pages.values()
    assert "Reply 1 <PIN> or ACK K7RXM4 <PIN> to accept." in page.text
    wctp.device_replies(page.tracking, choice="1 Accept")  # no PIN: not an accept
    await reporter.wait("leg.accept_needs_pin")
    assert reporter.holder is None
    wctp.device_replies(page.tracking, text="ACK K7RXM4 2468")
    await asyncio.wait_for(task, 5)
    assert reporter.holder == "leg-1"
    replies = [d["reply"] for _, k, d in reporter.events if k == "leg.pager_reply"]
    assert replies == ["1", "ACK K7RXM4 +PIN"]  # the PIN itself is never in the evidence
    await channel.close()


# ------------------------------------------------------------------------------------------------------- SNPP


@pytest.mark.parametrize("level", [1, 2])
async def test_snpp_one_way_levels(level: int) -> None:
    # level 1 has no LOGIn: that gateway takes pages from anyone on its network
    snpp = SnppServer({"8001"}, login=None if level == 1 else ("comms", "pw"))
    await snpp.start()
    try:
        login = {} if level == 1 else {"snpp_login": "comms", "snpp_password": "pw"}
        channel = await channel_for(snpp_host="127.0.0.1", snpp_port=snpp.port, snpp_level=level, **login)
        reporter = Reporter()
        task = await run(channel, order("snpp:8001"), reporter)
        delivered = await reporter.wait("leg.delivered")
        assert delivered == {"stage": "carrier-accepted", "level": level}
        verbs = [c.split()[0].upper() for c in snpp.commands]
        expected = (
            ["PAGE", "MESS", "SEND", "QUIT"] if level == 1 else ["LOGI", "PAGE", "DATA", "SEND", "QUIT"]
        )
        assert verbs == expected
        (page,) = snpp.pages
        assert page.pager == "8001" and "Code K7RXM4" in page.text and not page.two_way
        await channel.cancel("leg-1", "tier-timeout")
        await asyncio.wait_for(task, 5)
        assert reporter.data("leg.ended")["cause"] == "no_answer"
        assert reporter.holder is None
    finally:
        await snpp.close()


async def test_snpp_level_3_two_way_reply_accepts(snpp: SnppServer) -> None:
    channel = await channel_for(
        snpp_host="127.0.0.1", snpp_port=snpp.port, snpp_level=3, snpp_login="comms", snpp_password="pw"
    )
    reporter = Reporter()
    task = await run(channel, order("snpp:8002"), reporter)
    delivered = await reporter.wait("leg.delivered")
    assert delivered["stage"] == "queued" and delivered["level"] == 3
    (page,) = snpp.pages
    assert page.two_way and page.responses == {"01": "Accept", "02": "Decline"}
    assert delivered["message_tag"] == page.tag
    snpp.deliver(page.tag)
    await asyncio.sleep(0.1)
    assert reporter.holder is None  # 860 delivered is not an accept
    assert [d.get("stage") for _, k, d in reporter.events if k == "leg.delivered"] == ["queued", "device"]
    snpp.reply(page.tag, "01")
    await asyncio.wait_for(task, 5)
    assert reporter.holder == "leg-1"
    verbs = [c.split()[0].upper() for c in snpp.commands]
    assert verbs[:8] == ["LOGI", "2WAY", "PAGE", "MCRE", "MCRE", "MESS", "SEND", "QUIT"]
    assert "MSTA" in verbs


async def test_snpp_level_3_decline_and_bad_pager(snpp: SnppServer) -> None:
    channel = await channel_for(
        snpp_host="127.0.0.1", snpp_port=snpp.port, snpp_level=3, snpp_login="comms", snpp_password="pw"
    )
    reporter = Reporter()
    task = await run(channel, order("snpp:8001"), reporter)
    await reporter.wait("leg.delivered")
    snpp.reply(snpp.pages[0].tag, "02")
    await asyncio.wait_for(task, 5)
    assert "leg.declined" in reporter.kinds() and reporter.holder is None

    bad = Reporter()
    await channel.place(order("snpp:9999"), bad)
    ended = bad.data("leg.ended")
    assert ended["cause"] == "failed" and "550" in ended["reason"]

    nobody = Reporter()
    closed = await channel_for(snpp_host="127.0.0.1", snpp_port=1, snpp_level=1)
    await closed.place(order("snpp:8001"), nobody)
    assert "unreachable" in nobody.data("leg.ended")["reason"]


async def test_snpp_gateway_resetting_mid_session_fails_the_leg_with_its_cause() -> None:
    snpp = ResettingSnppServer(set())
    await snpp.start()
    try:
        channel = await channel_for(snpp_host="127.0.0.1", snpp_port=snpp.port, snpp_level=1)
        reporter = Reporter()
        await asyncio.wait_for(channel.place(order("snpp:8001"), reporter), 5)
        ended = reporter.data("leg.ended")
        assert ended["cause"] == "failed"
        assert ended["reason"].startswith(f"SNPP gateway 127.0.0.1:{snpp.port} connection failed: ")
        assert "ConnectionResetError" in ended["reason"] or "BrokenPipeError" in ended["reason"]
        assert snpp.commands == ["PAGE 8001"]  # the gateway was reached, then reset the connection
        assert channel.live_legs() == []
    finally:
        await snpp.close()


async def test_snpp_gateway_that_never_greets_times_out_and_is_hung_up() -> None:
    snpp = SilentSnppServer()
    await snpp.start()
    try:
        settings = PagerSettings(
            public_base_url=BASE, poll_s=0.02, timeout_s=0.3, snpp_host="127.0.0.1", snpp_port=snpp.port
        )
        reporter = Reporter()
        await asyncio.wait_for(PagerChannel(settings, SystemClock()).place(order("snpp:8001"), reporter), 5)
        ended = reporter.data("leg.ended")
        assert ended["cause"] == "failed"
        assert ended["reason"] == f"SNPP gateway 127.0.0.1:{snpp.port} did not answer in time"
        await asyncio.wait_for(snpp.closed.wait(), 2)  # our side dropped the connection: nothing leaks
    finally:
        await snpp.close()


# ------------------------------------------------------------------------------------------------------ e-mail


async def test_email_to_pager(smtp: SmtpServer) -> None:
    channel = await channel_for(smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_from="alerts@comms.test")
    reporter = Reporter()
    task = await run(channel, order("mailto:5551001@pager.example.net"), reporter)
    assert (await reporter.wait("leg.delivered")) == {"stage": "smtp-accepted"}
    ((sender, rcpts, body),) = smtp.messages
    assert sender == "alerts@comms.test" and rcpts == ["5551001@pager.example.net"]
    assert "Subject: CONTRAST ALERT K7RXM4" in body and "room CT2" in body
    # the page (longer than 78 characters) goes as one 7bit line: a gateway that shows the raw body gets
    # the link whole, not broken by quoted-printable "=" soft breaks
    page = f"Reply 1 or ACK K7RXM4 to accept. {BASE}/incidents/6c0c1b6e-3f0e-4b8e-9d55-2f1c8c0e7a11"
    assert "Content-Transfer-Encoding: 7bit" in body and page in body.splitlines()[-1] and "=\r\n" not in body
    await channel.cancel("leg-1", "accepted-elsewhere")
    await asyncio.wait_for(task, 5)
    assert reporter.data("leg.ended")["cause"] == "cancelled" and reporter.holder is None

    refusing = SmtpServer(refuse_rcpt=True)
    await refusing.start()
    try:
        failed = Reporter()
        other = await channel_for(smtp_host="127.0.0.1", smtp_port=refusing.port)
        await other.place(order("mailto:nobody@pager.example.net"), failed)
        assert failed.data("leg.ended")["cause"] == "failed"
    finally:
        await refusing.close()


async def test_unknown_scheme_fails_the_leg() -> None:
    reporter = Reporter()
    await (await channel_for()).place(order("fax:5551001"), reporter)
    assert "expected wctp:, snpp: or mailto:" in reporter.data("leg.ended")["reason"]


# -------------------------------------------------------------------------------------------------- codecs, PHI


def test_codecs() -> None:
    body = wctp_submit(
        sender_id="s",
        security_code=None,
        recipient_id="r",
        message_id="m",
        text="t & <x>",
        now=dt.datetime(2026, 1, 5, 14, 0, tzinfo=dt.UTC),
        two_way=False,
    )
    assert b"<wctp-Alphanumeric>t &amp; &lt;x&gt;</wctp-Alphanumeric>" in body
    assert b'submitTimestamp="2026-01-05T14:00:00"' in body
    with pytest.raises(PagerError, match="not XML"):
        parse_wctp_submit(b"<nope")
    with pytest.raises(PagerError, match="no wctp-ClientSuccess"):
        parse_wctp_submit(b'<wctp-Operation wctpVersion="wctp-dtd-v1r3"/>')
    assert parse_wctp_query(b"<wctp-Operation><wctp-ClientQueryResponse/></wctp-Operation>") == []
    assert parse_snpp_reply("250 OK\r\n") == (250, "OK")
    with pytest.raises(PagerError, match="3-digit"):
        parse_snpp_reply("hello")
    notice = snpp_notice(889, "01 Accept")
    assert notice is not None and (notice.kind, notice.text) == ("reply", "1")
    assert snpp_notice(250, "OK") is None


async def test_no_phi_in_any_page(wctp: WctpServer, snpp: SnppServer, smtp: SmtpServer) -> None:
    reporter = Reporter()
    for settings, address in (
        ({"wctp_url": wctp.url, "wctp_security_code": "s3cret"}, "wctp:5551001"),
        (
            {
                "snpp_host": "127.0.0.1",
                "snpp_port": snpp.port,
                "snpp_level": 2,
                "snpp_login": "comms",
                "snpp_password": "pw",
            },
            "snpp:8001",
        ),
        ({"smtp_host": "127.0.0.1", "smtp_port": smtp.port}, "mailto:5551001@pager.example.net"),
    ):
        channel = await channel_for(**settings)
        task = await run(channel, order(address), reporter)
        await reporter.wait("leg.delivered")
        await channel.cancel("leg-1", "tier-timeout")
        await asyncio.wait_for(task, 5)
        reporter.events.clear()
        await channel.close()
    payloads = (
        [p.text for p in wctp.pages.values()] + [p.text for p in snpp.pages] + [m[2] for m in smtp.messages]
    )
    assert len(payloads) == 3
    for text in payloads:
        assert phi.scan(text) == [], text
