"""A Twilio alert call a dead node left ringing is ended by the survivor that ends the lost leg.

A Twilio call belongs to the account, not to the node that created it: the survivor's sweep finds the dead
node's leg, ends the call by the CallSid in ``leg.call_id`` (``canceled`` while it rings) and logs
``leg.cancel_sent`` (by the survivor) before ``leg.ended``. Real runner + SQLite, the real ``twilio`` library,
the fake Twilio.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from comms.clock import SystemClock
from comms.db.events import verify_chain
from comms.db.models import Node
from escalation.runner import EscalationRunner
from escalation.twilio_channel import TwilioVoiceChannel
from tests.support import until
from tests.twilio.conftest import Rad, TwilioNode
from tests.twilio.fake_twilio import Phone

KIM = "+13125550133"


async def test_a_survivor_cancels_the_twilio_call_a_dead_node_left_ringing(
    twilio_node: TwilioNode, phones: dict[str, Phone]
) -> None:
    phones[KIM] = Phone("no_answer")
    await twilio_node.directory([[Rad("drkim", "Dr Kim", voice=KIM)]], ring_timeout_s=60)
    incident_id = await twilio_node.runner.raise_incident(room_code="CT2", severity="severe", source="test")
    (call_id,) = await twilio_node.wait_event(incident_id, "leg.call_id")
    call = twilio_node.fake.calls[call_id.data["call_sid"]]
    await until(lambda: call.status == "ringing", within=10)

    # node-t dies: its loop and leg tasks stop, nothing ends the call, its heartbeat goes stale
    await twilio_node.runner.stop()
    async with twilio_node.sessions() as s, s.begin():
        await s.execute(
            sa.update(Node)
            .where(Node.id == "node-t")
            .values(seen_at=SystemClock().now() - dt.timedelta(hours=1))
        )
    assert not call.done.is_set() and call.status == "ringing"

    voice = TwilioVoiceChannel(twilio_node.client, twilio_node.settings, SystemClock(), twilio_node.sessions)
    survivor = EscalationRunner(
        twilio_node.sessions,
        SystemClock(),
        node_id="node-u",
        channels={voice.kind: voice},
        node_dead_after_s=5.0,
    )
    await survivor.start(run=False)
    try:
        await survivor.tick()  # the sweep: node-t's heartbeat is stale, its leg is lost
        await until(lambda: call.done.is_set(), within=10)
        assert call.status == "canceled"
        events = await twilio_node.events(incident_id)
        kinds = [e.kind for e in events if e.leg_id == call_id.leg_id]
        assert kinds.index("leg.call_id") < kinds.index("leg.cancel_sent") < kinds.index("leg.ended")
        cancel = next(e for e in events if e.kind == "leg.cancel_sent")
        assert cancel.source == "node-u"
        assert cancel.data == {"by": "node-u", "reason": "orphan: the node that placed the leg stopped"}
        ended = next(e for e in events if e.kind == "leg.ended")
        assert ended.data["by"] == "node-t" and ended.data["cause"] == "failed"
        assert verify_chain(events) == []
    finally:
        await survivor.stop()
