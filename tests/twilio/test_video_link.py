"""The video link: a radiologist who accepts on a phone is texted the room console's address.

A whole node (``comms.app.CommsApp``: SQLite, our SIP stack, the media gateway, the Twilio channels against the
fake Twilio, the pager channel against loopback WCTP, SNPP and SMTP gateways from ``tests.pager.servers``) and a
live room (an aiortc tablet), so that an accepted call is really bridged:

* a SIP radiologist (the pjsua2 softphone) with an ``sms`` contact presses 1: one SMS with the console link and
  no PHI reaches the fake Twilio, ``leg.video_link_sent`` is in the incident's chain (which verifies), and the
  call hears "A video link has been sent to your phone." (``leg.video_link_announced``);
* a Twilio-voice radiologist accepts: the same SMS, the call streamed to the room;
* a radiologist with only a pager contact: a one-way WCTP message carries the link; so does a level-2 SNPP page
  (never ``2WAY``, even when the gateway is run at level 3 for alerts) to a ``snpp:`` contact, and an e-mail
  through the SMTP relay to a ``mailto:`` contact, each arriving at a loopback gateway;
* no text-capable contact: ``leg.video_link_skipped`` with the reason, the call still bridged; an accept that is
  not on a phone is never sent a link;
* the SMS API answers 500, or the SNPP gateway refuses the page, hangs up or resets the connection:
  ``leg.video_link_failed`` with the reason, the bridge is not affected (and an SMS contact still gets its link).
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aioice.ice
import pytest
from aiohttp import web

from comms import phi
from comms.app import CommsApp
from comms.clock import SystemClock
from comms.db.events import verify_chain
from comms.db.models import CallLeg, Event, Incident
from escalation.channel import LegOrder
from escalation.pager import PagerSettings
from escalation.video_link import ANNOUNCED_TEXT, VideoLinkSender, console_url
from tests.gateway.support import AiortcRoom
from tests.pager.servers import ClosingSnppServer, ResettingSnppServer, SmtpServer, SnppServer, WctpServer
from tests.support import NodeReads, Rad, RoomSpec, seed_site, start_node, until
from tests.twilio.conftest import OUR_NUMBER, PUBLIC_BASE, fake_twilio, twilio_settings
from tests.twilio.fake_twilio import FakeCall, FakeTwilio, Phone

LEE = "+13125550111"
PAGER_ID = "5551001"
SNPP_ID = "5552001"
SNPP_LOGIN = ("comms", "pw")
PAGER_MAIL = "5553001@pager.example.net"
LINK = f"{PUBLIC_BASE}/rooms/CT2/console"


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host candidates on 127.0.0.1 only (aioice leaves loopback out by default)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


class BrokenSmsTwilio(FakeTwilio):
    """The fake Twilio whose Messages API fails with HTTP 500 (calls work)."""

    async def _create_message(self, request: web.Request) -> web.Response:
        self.rest_requests.append("messages.create")
        return self._error(20500, "Internal Server Error", status=500)


class Node(NodeReads):
    event_timeout = 25.0

    def __init__(
        self,
        app: CommsApp,
        fake: FakeTwilio,
        gateways: tuple[WctpServer, SnppServer, SmtpServer],
        room: AiortcRoom,
    ) -> None:
        self.app, self.fake, self.room = app, fake, room
        self.wctp, self.snpp, self.smtp = gateways

    async def radiologist(self, **contacts: str) -> None:
        """One tier with one radiologist, Dr Lee, whose contacts are ``voice=``, ``sip=``, ``sms=``, ``pager=``."""
        rooms = [RoomSpec("CT2", "CT 2")]
        await seed_site(self.sessions, [[Rad("drlee", "Dr Lee", **contacts)]], rooms=rooms, ring_timeout_s=20)

    async def raise_incident(self) -> str:
        gateway = self.app.gateway
        assert gateway is not None and self.app.runner is not None
        await self.room.answer(await gateway.room_offer("CT2", await self.room.offer()))
        await until(lambda: gateway.rooms["CT2"].session.state == "connected")
        return await self.app.runner.raise_incident(room_code="CT2", severity="severe", source="test")

    async def order(self, leg_id: str | None) -> LegOrder:
        """A LegOrder for leg ``leg_id``, as the runner would have built it."""
        async with self.sessions() as s:
            leg = await s.get(CallLeg, leg_id)
            assert leg is not None
            inc = await s.get(Incident, leg.incident_id)
            assert inc is not None
            return LegOrder(
                leg_id=leg.id,
                incident_id=inc.id,
                incident_code=inc.code,
                severity=inc.severity.value,
                site_name="Northside Imaging",
                room_code="CT2",
                room_name="CT 2",
                person_id=str(leg.person_id),
                person_name="Dr Lee",
                kind=leg.channel.value,
                address=leg.address,
                ring_timeout_s=20.0,
                tier=0,
            )


NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
async def make_node(tmp_path: Path) -> AsyncIterator[NodeFactory]:
    """``await make_node(fake_cls=FakeTwilio, snpp=None)``: a started node with Twilio and the pager gateways
    (WCTP, SNPP at level 3 with a login, an SMTP relay); ``snpp`` replaces the SNPP gateway that knows ``SNPP_ID``."""
    started: list[Node] = []

    async def make(*, fake_cls: type[FakeTwilio] = FakeTwilio, snpp: SnppServer | None = None) -> Node:
        fake = fake_twilio({LEE: Phone("human", keys="1", tone_hz=700.0)}, fake_cls, burst=False)
        api = await fake.start()
        wctp = WctpServer({PAGER_ID})
        await wctp.start()
        snpp = SnppServer({SNPP_ID}, login=SNPP_LOGIN) if snpp is None else snpp
        await snpp.start()
        smtp = SmtpServer()
        await smtp.start()
        twilio = twilio_settings(api, ivr_timeout_s=2.0)
        pager = PagerSettings(
            wctp_url=wctp.url,
            wctp_security_code="s3cret",
            snpp_host="127.0.0.1",
            snpp_port=snpp.port,
            snpp_level=3,
            snpp_login=SNPP_LOGIN[0],
            snpp_password=SNPP_LOGIN[1],
            smtp_host="127.0.0.1",
            smtp_port=smtp.port,
            smtp_from="alerts@comms.test",
            public_base_url=PUBLIC_BASE,
            poll_s=0.1,
            timeout_s=2.0,
        )
        app = await start_node(
            tmp_path,
            tmp_path / "prompts",
            ivr_timeout_s=6.0,
            safety_poll_s=0.2,
            min_ring_s=2.0,
            dialin=None,
            twilio=twilio,
            twilio_port=0,
            pager=pager,
        )
        fake.webhook_base = f"http://127.0.0.1:{app.twilio_port}"
        node = Node(app, fake, (wctp, snpp, smtp), AiortcRoom(freq=440.0))
        started.append(node)
        return node

    yield make
    for node in started:
        await node.room.close()
        await node.fake.close()
        await node.app.stop()
        await node.wctp.close()
        await node.snpp.close()
        await node.smtp.close()


def _call_to(fake: FakeTwilio, number: str) -> FakeCall | None:
    return next((c for c in fake.calls.values() if c.to == number), None)


async def _chain_ok(node: Node, incident_id: str) -> list[Event]:
    events = await node.events(incident_id)
    assert verify_chain(events) == []
    return events


def _link_messages(fake: FakeTwilio) -> list[dict[str, str]]:
    """The SMS carrying the console link (a person with an ``sms`` contact is also paged by SMS)."""
    return [m for m in fake.messages if "/console" in m["body"]]


def _assert_link_sms(body: str, code: str) -> None:
    assert LINK in body and f"Code {code}" in body and "Northside Imaging" in body
    assert phi.scan(body) == []
    assert "Dr Lee" not in body  # no names at all, not even the radiologist's


async def test_sip_radiologist_with_sms_gets_the_console_link_and_hears_it_was_sent(
    make_node: NodeFactory, softphone: Any
) -> None:
    from sip.softphone import Behaviour

    softphone.set_behaviour(Behaviour(answer_after=0.2, press="1", press_after=1.5))
    node = await make_node()
    await node.radiologist(sip=softphone.uri(), sms=LEE)
    incident_id = await node.raise_incident()

    sent = (await node.wait_event(incident_id, "leg.video_link_sent"))[0]
    announced = (await node.wait_event(incident_id, "leg.video_link_announced"))[0]
    (msg,) = _link_messages(node.fake)
    assert msg["to"] == LEE and msg["from"] == OUR_NUMBER
    order = await node.order(sent.leg_id)
    _assert_link_sms(msg["body"], order.incident_code)
    assert order.kind == "sip"
    assert sent.data == {
        "channel": "sms",
        "via": "twilio-sms",
        "to": "+1312555****",
        "provider_id": msg["sid"],
        "link": LINK,
    }
    assert announced.leg_id == order.leg_id and announced.data == {"text": ANNOUNCED_TEXT}
    events = await _chain_ok(node, incident_id)
    kinds = [e.kind for e in events if e.leg_id == order.leg_id]
    # the bridge came first; the link followed it
    assert kinds.index("leg.accepted") < kinds.index("leg.handed_over") < kinds.index("leg.video_link_sent")
    assert "leg.ended" not in kinds  # still on the call


async def test_twilio_voice_radiologist_with_sms_gets_the_console_link(make_node: NodeFactory) -> None:
    node = await make_node()
    await node.radiologist(voice=LEE, sms=LEE)
    incident_id = await node.raise_incident()

    sent = (await node.wait_event(incident_id, "leg.video_link_sent"))[0]
    (msg,) = _link_messages(node.fake)
    code = (await node.order(sent.leg_id)).incident_code
    _assert_link_sms(msg["body"], code)
    assert sent.data["provider_id"] == msg["sid"] and sent.data["to"] == "+1312555****"
    call = _call_to(node.fake, LEE)
    assert call is not None and "<Connect><Stream" in call.twiml[-1]  # streamed to the room
    events = await _chain_ok(node, incident_id)
    assert [e.data for e in events if e.kind == "leg.handed_over"] == [{"to": "room_stream"}]
    assert not any(e.kind == "leg.video_link_announced" for e in events)  # spoken only on SIP calls

    # a node without Twilio cannot reach the sms contact: nothing is sent, and the record says why
    bare = VideoLinkSender(node.sessions, SystemClock(), public_base_url=PUBLIC_BASE, node_id="node-x")
    assert await bare.send(await node.order(sent.leg_id)) == []
    await bare.close()
    skipped = [e for e in await _chain_ok(node, incident_id) if e.kind == "leg.video_link_skipped"]
    assert [(e.leg_id, e.source, e.data) for e in skipped] == [
        (sent.leg_id, "node-x", {"reason": "sms contacts need Twilio, which is not configured"})
    ]


async def test_pager_only_radiologist_gets_a_one_way_wctp_page_with_the_link(make_node: NodeFactory) -> None:
    node = await make_node()
    await node.radiologist(voice=LEE, pager=f"wctp:{PAGER_ID}")
    incident_id = await node.raise_incident()

    sent = (await node.wait_event(incident_id, "leg.video_link_sent"))[0]
    (page,) = [p for p in node.wctp.pages.values() if "/console" in p.text]  # the other is the alert page
    assert page.recipient == PAGER_ID
    code = (await node.order(sent.leg_id)).incident_code
    _assert_link_sms(page.text, code)
    assert page.choices == [] and not page.allow_response  # informational: nothing to accept or decline
    assert sent.data == {
        "channel": "pager",
        "via": "wctp",
        "to": "wctp:555****",
        "provider_id": page.tracking,
        "link": LINK,
    }
    assert _link_messages(node.fake) == []
    await _chain_ok(node, incident_id)


async def test_pager_only_radiologist_gets_a_one_way_snpp_page_with_the_link(make_node: NodeFactory) -> None:
    node = await make_node()
    await node.radiologist(voice=LEE, pager=f"snpp:{SNPP_ID}")
    incident_id = await node.raise_incident()

    sent = (await node.wait_event(incident_id, "leg.video_link_sent"))[0]
    (page,) = [p for p in node.snpp.pages if "/console" in p.text]
    assert page.pager == SNPP_ID
    order = await node.order(sent.leg_id)
    assert order.kind == "pstn_voice"  # recorded on the accepting phone leg, not on the pager's alert leg
    _assert_link_sms(page.text, order.incident_code)
    # the gateway runs at level 3 for alerts (2WAY, Accept/Decline); the link is a level-2 page: nothing to answer
    assert not page.two_way and page.responses == {}
    assert [(p.two_way, p.responses) for p in node.snpp.pages if p is not page] == [
        (True, {"01": "Accept", "02": "Decline"})
    ]
    verbs = [c.split()[0].upper() for c in node.snpp.commands]
    assert "DATA" in verbs and verbs.count("2WAY") == 1  # the link went by DATA; only the alert said 2WAY
    assert sent.data == {
        "channel": "pager",
        "via": "snpp",
        "to": "snpp:555****",
        "provider_id": None,  # a level-2 SEND returns no Message_Tag
        "link": LINK,
    }
    assert _link_messages(node.fake) == [] and node.smtp.messages == []
    assert not any("/console" in p.text for p in node.wctp.pages.values())
    await _chain_ok(node, incident_id)


async def test_pager_only_radiologist_gets_an_email_to_pager_with_the_link(make_node: NodeFactory) -> None:
    node = await make_node()
    await node.radiologist(voice=LEE, pager=f"mailto:{PAGER_MAIL}")
    incident_id = await node.raise_incident()

    sent = (await node.wait_event(incident_id, "leg.video_link_sent"))[0]
    order = await node.order(sent.leg_id)
    assert order.kind == "pstn_voice"
    mails = [
        (sender, rcpts, email.message_from_string(raw, policy=email.policy.default))
        for sender, rcpts, raw in node.smtp.messages
    ]
    assert all(phi.scan(raw) == [] for _, _, raw in node.smtp.messages)  # the wire, headers included
    ((sender, rcpts, mail),) = [m for m in mails if m[2]["Subject"].startswith("CONTRAST VIDEO")]
    assert sender == "alerts@comms.test" and rcpts == [PAGER_MAIL] and mail["To"] == PAGER_MAIL
    assert mail["Subject"] == f"CONTRAST VIDEO {order.incident_code}"
    body = mail.get_content()
    assert isinstance(body, str)
    _assert_link_sms(body, order.incident_code)
    assert [m["Subject"] for _, _, m in mails if m is not mail] == [f"CONTRAST ALERT {order.incident_code}"]
    assert sent.data == {
        "channel": "pager",
        "via": "mailto",
        "to": "mailto:5***@pager.example.net",
        "provider_id": None,
        "link": LINK,
    }
    assert _link_messages(node.fake) == [] and node.snpp.pages == []
    await _chain_ok(node, incident_id)


@pytest.mark.parametrize(
    ("gateway", "reason"),
    [
        (lambda: SnppServer(set(), login=SNPP_LOGIN), "SNPP PAGE answered 550 'Error, Invalid Pager ID'"),
        (lambda: ClosingSnppServer(set()), "closed the connection"),
        (lambda: ResettingSnppServer(set()), "ConnectionResetError"),
    ],
    ids=["refuses-page", "hangs-up", "resets"],
)
async def test_failing_snpp_gateway_is_recorded_and_the_bridge_is_unaffected(
    make_node: NodeFactory, gateway: Callable[[], SnppServer], reason: str
) -> None:
    node = await make_node(snpp=gateway())
    await node.radiologist(voice=LEE, sms=LEE, pager=f"snpp:{SNPP_ID}")
    incident_id = await node.raise_incident()

    failed = (await node.wait_event(incident_id, "leg.video_link_failed"))[0]
    # the pager's failure costs the SMS nothing: it is sent and recorded on the same leg
    sent = (await node.wait_event(incident_id, "leg.video_link_sent"))[0]
    (msg,) = _link_messages(node.fake)
    assert sent.leg_id == failed.leg_id and sent.data["channel"] == "sms"
    assert sent.data["provider_id"] == msg["sid"]
    order = await node.order(failed.leg_id)
    assert order.kind == "pstn_voice"
    assert {k: v for k, v in failed.data.items() if k != "reason"} == {
        "channel": "pager",
        "via": "snpp",
        "to": "snpp:555****",
    }
    assert reason in failed.data["reason"]
    assert node.snpp.commands  # the gateway was really reached
    call = _call_to(node.fake, LEE)
    assert call is not None
    await until(lambda: bool(call.streams) and len(call.streams[0].heard) > 50, within=15)
    assert not call.done.is_set()  # the radiologist still hears the room
    events = await _chain_ok(node, incident_id)
    assert [e.data for e in events if e.kind == "leg.handed_over"] == [{"to": "room_stream"}]
    outcomes = sorted((e.kind, e.data["channel"]) for e in events if e.kind.startswith("leg.video_link_"))
    assert outcomes == [("leg.video_link_failed", "pager"), ("leg.video_link_sent", "sms")]
    assert node.snpp.pages == []


async def test_no_text_contact_is_recorded_and_the_call_stays_bridged(make_node: NodeFactory) -> None:
    node = await make_node()
    await node.radiologist(voice=LEE)
    incident_id = await node.raise_incident()

    skipped = (await node.wait_event(incident_id, "leg.video_link_skipped"))[0]
    assert skipped.data == {"reason": "no active sms or pager contact"}
    call = _call_to(node.fake, LEE)
    assert call is not None
    await until(lambda: bool(call.streams) and len(call.streams[0].heard) > 50, within=15)
    assert not call.done.is_set()  # the radiologist still hears the room
    assert node.fake.messages == [] and node.wctp.pages == {}

    # an accept that did not come from a phone (e.g. the console itself) is never sent a link
    order = await node.order(skipped.leg_id)
    assert order.kind == "pstn_voice"
    links = node.app.video_links
    assert links is not None
    assert await links.send(dataclasses.replace(order, kind="webrtc")) == []
    events = await _chain_ok(node, incident_id)
    reasons = [e.data["reason"] for e in events if e.kind == "leg.video_link_skipped"]
    assert reasons == ["no active sms or pager contact", "accepted on webrtc, not on a phone: no link needed"]


async def test_failing_sms_api_is_recorded_and_the_bridge_is_unaffected(make_node: NodeFactory) -> None:
    node = await make_node(fake_cls=BrokenSmsTwilio)
    await node.radiologist(voice=LEE, sms=LEE)
    incident_id = await node.raise_incident()

    failed = (await node.wait_event(incident_id, "leg.video_link_failed"))[0]
    assert failed.data["channel"] == "sms" and failed.data["to"] == "+1312555****"
    assert "HTTP 500" in failed.data["reason"]
    assert "messages.create" in node.fake.rest_requests
    call = _call_to(node.fake, LEE)
    assert call is not None
    await until(lambda: bool(call.streams) and len(call.streams[0].heard) > 50, within=15)
    assert not call.done.is_set()
    events = await _chain_ok(node, incident_id)
    assert [e.data for e in events if e.kind == "leg.handed_over"] == [{"to": "room_stream"}]
    assert not any(e.kind == "leg.video_link_sent" for e in events)


def test_console_url_is_the_console_route() -> None:
    from comms.web.media_routes import MEDIA_ROUTES

    (route,) = [r for r in MEDIA_ROUTES if r.name == "console_page"]
    assert route.path == "/rooms/{code}/console"
    assert console_url("https://comms.example.test/", "CT2") == LINK
