"""Pagers as contacts, end to end: the escalation runner pages a person's ``pager`` contact through the pager
channel to WCTP / SNPP / SMTP gateways on loopback (tests/pager/servers.py).

* A whole node (:class:`comms.app.CommsApp`, SQLite, real clock) with ``pager`` settings registers the channel;
  a tier-1 radiologist whose only contact is a WCTP pager is paged, the carrier's "accepted" is recorded as
  delivered (the incident stays paging), and the pager's two-way reply "1" accepts the incident for them.
* The runner alone on real SQLite and PostgreSQL with a FakeClock: a one-way page (SNPP level 1, or e-mail)
  gets no reply, so tier 1 times out at its deadline and tier 2 is paged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comms import phi
from comms.app import CommsApp
from comms.clock import FakeClock
from comms.db.events import leg_status, verify_chain
from comms.db.models import CallLeg, Incident
from comms.db.types import Channel, IncidentState, LegStatus
from escalation.pager import PagerChannel, PagerSettings
from escalation.runner import EscalationRunner
from tests.pager.servers import SmtpServer, SnppServer, WctpServer
from tests.support import Rad, RoomSpec, events, seed_site, started_node, until, wait_event

BASE = "https://comms.example.test"


async def seed(sf: async_sessionmaker[AsyncSession], tiers: list[tuple[str, str]]) -> dict[str, str]:
    """One site and room CT2; tier *i* pages one radiologist ``tiers[i] = (username, pager address)`` whose only
    contact is that pager. Returns person ids by username."""
    rads = [[Rad(username, f"Dr {username.title()}", pager=address)] for username, address in tiers]
    rooms = [RoomSpec("CT2", "CT 2", "ct2-device-token")]
    return await seed_site(sf, rads, rooms=rooms, ring_timeout_s=10)


# ------------------------------------------------------------------------------ WCTP through a whole node


@pytest.fixture
async def app(tmp_path: Path, wctp: WctpServer) -> AsyncIterator[CommsApp]:
    pager = PagerSettings(
        wctp_url=wctp.url, wctp_security_code="s3cret", public_base_url=BASE, poll_s=0.05, timeout_s=2.0
    )
    async with started_node(tmp_path, tmp_path / "prompts", dialin=None, pager=pager) as node:
        yield node


async def test_a_wctp_pager_is_paged_delivered_is_not_accepted_and_its_reply_1_accepts(
    app: CommsApp, wctp: WctpServer
) -> None:
    assert app.runner is not None and app.sessions is not None
    sf = app.sessions
    ids = await seed(sf, [("lee", "wctp:5551001"), ("park", "wctp:5551002")])
    incident_id = await app.runner.raise_incident(room_code="CT2", severity="moderate", source="test")

    (delivered,) = await wait_event(sf, incident_id, "leg.delivered", timeout=10)
    assert delivered.data["stage"] == "carrier-accepted"
    (page,) = wctp.pages.values()
    assert (page.recipient, page.tracking) == ("5551001", delivered.data["tracking"])
    assert page.allow_response and page.choices == ["1 Accept", "2 Decline"]
    assert page.text.startswith("CONTRAST ALERT MODERATE: Northside Imaging, room CT2.")
    assert phi.scan(page.text) == []
    async with sf() as s:
        (leg,) = (await s.scalars(sa.select(CallLeg).where(CallLeg.incident_id == incident_id))).all()
        incident = await s.get(Incident, incident_id)
    assert (leg.channel, leg.address, leg.person_id, leg.tier) == (
        Channel.PAGER,
        "wctp:5551001",
        ids["lee"],
        0,
    )
    await until(lambda: "wctp-ClientQuery" in wctp.requests, step=0.02, what="status poll")
    # the carrier took the page and the poll answered: delivered, never accepted
    assert incident is not None and incident.state is IncidentState.PAGING and incident.accepted_by_id is None
    leg_events = [e for e in await events(sf, incident_id) if e.leg_id == leg.id]
    assert leg_status(leg_events) is LegStatus.DIALING

    wctp.device_receives(page.tracking)
    await wait_event(sf, incident_id, "leg.delivered", count=2, timeout=10)
    wctp.device_replies(page.tracking, text="1")
    (accepted,) = await wait_event(sf, incident_id, "incident.accepted", timeout=10)
    async with sf() as s:
        incident = await s.get(Incident, incident_id)
    assert incident is not None
    assert (incident.state, incident.accepted_by_id, incident.accepted_leg_id) == (
        IncidentState.ACCEPTED,
        ids["lee"],
        leg.id,
    )
    assert accepted.data["person"] == "Dr Lee"
    evs = await events(sf, incident_id)
    kinds = [e.kind for e in evs if e.leg_id == leg.id]
    assert kinds[: kinds.index("leg.accepted") + 1] == [
        "leg.created",
        "leg.invite_sent",
        "leg.delivered",
        "leg.delivered",
        "leg.pager_reply",
        "leg.accepted",
    ]
    assert [e.data["stage"] for e in evs if e.kind == "leg.delivered"] == ["carrier-accepted", "device"]
    assert next(e for e in evs if e.kind == "leg.accepted").data == {"digits": "1", "method": "pager"}
    assert leg_status([e for e in evs if e.leg_id == leg.id]) is LegStatus.ACCEPTED
    assert [p.recipient for p in wctp.pages.values()] == ["5551001"]  # tier 2 was never paged
    assert verify_chain(evs) == []


# ------------------------------------------------------------------------------ one-way pages time out


@pytest.mark.parametrize("via", ["snpp", "mailto"])
async def test_a_one_way_page_without_reply_times_out_to_tier_2(
    sf: async_sessionmaker[AsyncSession], via: str
) -> None:
    snpp, smtp = SnppServer({"8001", "8002"}), SmtpServer()
    await snpp.start()
    await smtp.start()
    clock = FakeClock()
    channel = PagerChannel(
        PagerSettings(
            snpp_host="127.0.0.1",
            snpp_port=snpp.port,
            snpp_level=1,
            smtp_host="127.0.0.1",
            smtp_port=smtp.port,
            public_base_url=BASE,
            timeout_s=2.0,
        ),
        clock,
    )
    runner = EscalationRunner(sf, clock, node_id="n1", channels={"pager": channel}, min_ring_s=10)
    try:
        await runner.start(run=False)
        first = "snpp:8001" if via == "snpp" else "mailto:lee@pager.example.org"
        ids = await seed(sf, [("lee", first), ("park", "snpp:8002")])
        incident_id = await runner.raise_incident(room_code="CT2", severity="moderate", source="test")
        await runner.tick()
        (delivered,) = await wait_event(sf, incident_id, "leg.delivered", timeout=10)
        stage = "carrier-accepted" if via == "snpp" else "smtp-accepted"
        assert delivered.data["stage"] == stage
        if via == "snpp":
            assert [(p.pager, p.two_way) for p in snpp.pages] == [("8001", False)]
        else:
            ((sender, rcpts, body),) = smtp.messages
            assert sender == "alerts@localhost"
            assert rcpts == ["lee@pager.example.org"] and "CONTRAST ALERT MODERATE" in body
            assert phi.scan(body) == []

        clock.advance(9.9)  # before the deadline nothing moves, whatever the gateway said
        await runner.tick()
        async with sf() as s:
            incident = await s.get(Incident, incident_id)
        assert incident is not None and (incident.state, incident.current_tier) == (IncidentState.PAGING, 0)

        clock.advance(0.1)  # tier 1's 10 s deadline: cancel the unanswered page, page tier 2
        await runner.tick()
        await until(lambda: [p.pager for p in snpp.pages][-1:] == ["8002"], step=0.02, what="the tier-2 page")
        await wait_event(sf, incident_id, "leg.ended", timeout=10)
        evs = await events(sf, incident_id)
        assert [e.data["tier"] for e in evs if e.kind == "incident.tier_started"] == [0, 1]
        async with sf() as s:
            legs = (
                await s.scalars(
                    sa.select(CallLeg).where(CallLeg.incident_id == incident_id).order_by(CallLeg.tier)
                )
            ).all()
            incident = await s.get(Incident, incident_id)
        assert [(leg.tier, leg.person_id, leg.address) for leg in legs] == [
            (0, ids["lee"], first),
            (1, ids["park"], "snpp:8002"),
        ]
        ended = next(e for e in evs if e.kind == "leg.ended" and e.leg_id == legs[0].id)
        assert (ended.data["cause"], ended.data["reason"]) == ("no_answer", "tier-timeout")
        assert leg_status([e for e in evs if e.leg_id == legs[0].id]) is LegStatus.NO_ANSWER
        assert incident is not None and incident.accepted_by_id is None and incident.current_tier == 1
        assert verify_chain(evs) == []
    finally:
        await runner.stop()
        await channel.close()
        await snpp.close()
        await smtp.close()
