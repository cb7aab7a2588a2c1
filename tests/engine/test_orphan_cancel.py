"""A phone left ringing by a dead node gets its CANCEL from whoever ends the lost leg.

Two in-process nodes (each an :class:`EscalationRunner` with its own :class:`UserAgent` and SIP channel) on one
database (SQLite and PostgreSQL), the radiologist's phone a real SIPp UAS that rings and never answers. The node
that placed the leg dies abruptly (its SIP sockets closed, its tasks cancelled, no CANCEL sent, its heartbeat
stale); the survivor's sweep -- or the same node's restart -- ends the leg and sends the CANCEL the dead node
could not. SIPp checks that the CANCEL repeats the INVITE's Request-URI, top Via, From, To and CSeq number and
answers it 200 + 487; its call succeeds only then.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comms.clock import SystemClock
from comms.db.events import verify_chain
from comms.db.models import ContactMethod, Event, Incident, Node
from escalation.model import IncidentState
from escalation.runner import EscalationRunner
from escalation.sip_channel import SipChannel
from ivr.prompts import PromptRenderer
from sip.ua import UaConfig, UserAgent
from tests.engine.helpers import seed_directory
from tests.peers.sipp import Sipp
from tests.support import events

pytestmark = pytest.mark.peer

ORPHAN = "orphan: the node that placed the leg stopped"


class Nodes:
    """Starts nodes (runner + user agent + SIP channel) on one database; stops what is left at the end."""

    def __init__(self, sf: async_sessionmaker[AsyncSession], tmp_path: Path) -> None:
        self.sf = sf
        self.prompts = PromptRenderer(tmp_path / "prompts")
        self.started: list[tuple[EscalationRunner, UserAgent]] = []

    async def start(self, node_id: str) -> tuple[EscalationRunner, UserAgent]:
        clock = SystemClock()
        ua = await UserAgent.start(clock, UaConfig(rtp=False, tcp_port=None))
        channel = SipChannel(ua, self.prompts, clock, from_uri="sip:alerts@127.0.0.1")
        runner = EscalationRunner(
            self.sf, clock, node_id=node_id, channels={"sip": channel}, node_dead_after_s=5.0
        )
        await runner.start(run=False)
        self.started.append((runner, ua))
        return runner, ua

    async def kill(self, runner: EscalationRunner, ua: UserAgent) -> None:
        """kill -9 in process: the SIP sockets go first (nothing more leaves), then the tasks stop dead."""
        await ua.transport.close()
        await runner.stop()
        async with self.sf() as s, s.begin():
            await s.execute(
                sa.update(Node)
                .where(Node.id == runner.node_id)
                .values(seen_at=SystemClock().now() - dt.timedelta(hours=1))
            )

    async def close(self) -> None:
        for runner, ua in self.started:
            await runner.stop()
            await ua.close()


@pytest.fixture
async def nodes(sf: async_sessionmaker[AsyncSession], tmp_path: Path) -> AsyncIterator[Nodes]:
    made = Nodes(sf, tmp_path)
    yield made
    await made.close()


async def wait_for_event(
    sf: async_sessionmaker[AsyncSession], incident_id: str, kind: str, within: float = 10.0
) -> Event:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while loop.time() < end:
        for e in await events(sf, incident_id):
            if e.kind == kind:
                return e
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind} within {within} s: {[e.kind for e in await events(sf, incident_id)]}")


@pytest.mark.parametrize("who", ["survivor-sweep", "restart-recover"])
async def test_the_phone_a_dead_node_left_ringing_gets_a_matching_cancel(
    sf: async_sessionmaker[AsyncSession], nodes: Nodes, sipp: Callable[..., Any], who: str
) -> None:
    phone: Sipp = sipp("uas_ring_orphan_cancel.xml", timeout=30)
    await phone.start()
    await seed_directory(sf, [["drone"]], ring_timeout_s=60)
    async with sf() as s, s.begin():
        await s.execute(sa.update(ContactMethod).values(address=phone.uri("drone")))
    a, a_ua = await nodes.start("node-a")
    incident_id = await a.raise_incident(room_code="R0", severity="moderate", source="test")
    await wait_for_event(sf, incident_id, "leg.ringing")
    await nodes.kill(a, a_ua)
    assert not [e for e in await events(sf, incident_id) if e.kind in {"leg.cancel_sent", "leg.ended"}]

    if who == "survivor-sweep":
        b, _ = await nodes.start("node-b")  # its start recovers nothing of its own
        await b.tick()  # the sweep: node-a's heartbeat is stale, its leg is lost
        ender = "node-b"
        reason = "lost: the node running the leg stopped"
    else:
        b, _ = await nodes.start(
            "node-a"
        )  # the same node id restarted: its start ends its previous life's legs
        ender = "node-a"
        reason = "lost: node restarted while the leg was live"

    result = await phone.wait(15)
    assert result.ok, result.report()
    evs = await events(sf, incident_id)
    kinds = [e.kind for e in evs]
    assert kinds.count("leg.cancel_sent") == 1 and kinds.count("leg.ended") == 1, kinds
    invite = next(e for e in evs if e.kind == "leg.invite_sent")
    cancel = next(e for e in evs if e.kind == "leg.cancel_sent")
    ended = next(e for e in evs if e.kind == "leg.ended")
    assert invite.source == "node-a" and invite.data["cancel"]["call_id"] == invite.data["call_id"]
    assert set(invite.data["cancel"]) == {
        "uri",
        "via",
        "from",
        "to",
        "call_id",
        "cseq",
        "transport",
        "host",
        "port",
    }
    assert cancel.seq < ended.seq and cancel.leg_id == ended.leg_id == invite.leg_id
    assert cancel.source == ender and cancel.data == {"by": ender, "reason": ORPHAN}
    assert ended.source == ender
    assert ended.data["cause"] == "failed" and ended.data["reason"] == reason and ended.data["by"] == "node-a"
    # the tree moved on at once: one tier only, so the incident is exhausted (loudly), not left paging
    await b.tick()
    async with sf() as s:
        incident = await s.get(Incident, incident_id)
    assert incident is not None and incident.state == IncidentState.EXHAUSTED
    assert verify_chain(await events(sf, incident_id)) == []
