"""A CANCEL sent by another user agent for an INVITE whose sender died (``UserAgent.cancel_orphan``).

Real user agents on loopback: "alice" places the call and dies abruptly (its transports closed, no CANCEL),
"bob" is the phone left ringing, "carol" is the survivor that cancels from alice's recorded INVITE. Bob's own
stack matches the CANCEL to its INVITE server transaction by the top Via (§9.2, §17.2.3).
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from comms.errors import ValidationError
from sip.message import Request, parse_message
from sip.transaction import Timers
from sip.ua import Call, CallEnded, CallRinging, SentInvite
from tests.peers.fixtures import UaFactory
from tests.sip.conftest import Inbox, next_event, uri_of

ALICE = "sip:alerts@127.0.0.1"


async def ring_only(call: Call) -> None:
    await call.ring()


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
async def test_a_survivor_cancels_the_dead_senders_invite_and_the_phone_stops_ringing(
    make_ua: UaFactory, transport: str
) -> None:
    alice, bob, carol = await make_ua(), await make_ua(), await make_ua()
    inbox = Inbox(ring_only)
    bob.on_incoming(inbox)
    out = await alice.dial(uri_of(bob, transport), from_uri=ALICE, ring_timeout=60)
    await next_event(out, CallRinging)
    ringing = await inbox.next()
    record = out.sent_invite()
    assert record is not None and record.transport == transport
    assert ringing.sent_invite() is None  # inbound: nothing of ours to cancel
    # kill -9 of alice: its sockets go away, nothing more is sent (no CANCEL, no BYE)
    await alice.transport.close()
    restored = SentInvite.from_data(record.to_data())  # what a leg event holds survives the round trip
    assert restored == record
    status = await asyncio.wait_for(carol.cancel_orphan(restored), 5)
    # bob honours rport (RFC 3581): the 200 to the CANCEL came back to carol, who sent it
    assert status == 200
    ended = await asyncio.wait_for(ringing.wait_ended(), 5)
    assert isinstance(ended, CallEnded)
    assert (ended.by, ended.status) == ("remote", 487), ended
    # the INVITE bob got carried the Via that the CANCEL repeated
    assert ringing.invite.headers.get_all("Via")[0].startswith(record.via.split(";rport")[0])


async def test_with_nobody_answering_the_cancel_is_sent_a_bounded_number_of_times(
    make_ua: UaFactory,
) -> None:
    carol = await make_ua(timers=Timers(t1=0.02, t2=0.16))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    port = sink.getsockname()[1]
    record = SentInvite(
        uri=f"sip:drone@127.0.0.1:{port}",
        via="SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-dead-node-1;rport",
        from_='"Contrast Comms" <sip:alerts@127.0.0.1>;tag=abc123',
        to=f"<sip:drone@127.0.0.1:{port}>",
        call_id="orphan-1@127.0.0.1",
        cseq=1,
        transport="UDP",
        host="127.0.0.1",
        port=port,
    )
    loop = asyncio.get_running_loop()
    got: list[Request] = []

    async def collect() -> None:
        while True:
            data = await loop.sock_recv(sink, 65535)
            message = parse_message(data)
            assert isinstance(message, Request)
            got.append(message)

    reader = loop.create_task(collect())
    try:
        started = loop.time()
        status = await asyncio.wait_for(carol.cancel_orphan(record, sends=4), 5)
        gave_up = loop.time() - started
        await asyncio.sleep(0.5)  # nothing after giving up (Timer E would have fired twice more by now)
    finally:
        reader.cancel()
        sink.close()
    assert status is None
    # Timer E: sends at 0, T1, 3 T1, 7 T1; given up half-way to the next (7 T1 + 4 T1 = 0.22 s)
    assert 0.15 < gave_up < 0.45, gave_up
    assert len(got) == 4
    for cancel in got:
        assert cancel.method == "CANCEL"
        assert str(cancel.uri) == record.uri
        assert cancel.headers.get_all("Via") == [record.via]
        assert cancel.headers.get("From") == record.from_
        assert cancel.headers.get("To") == record.to
        assert cancel.call_id == record.call_id
        assert cancel.cseq == (1, "CANCEL")


def test_bad_invite_records_are_refused_and_routes_are_repeated() -> None:
    with pytest.raises(ValidationError, match="'via' is None: expected a non-empty string"):
        SentInvite.from_data({"uri": "sip:a@127.0.0.1", "from": "x", "to": "y"})
    good = SentInvite(
        uri="sip:a@127.0.0.1",
        via="SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bK-x",
        from_="<sip:b@127.0.0.1>;tag=1",
        to="<sip:a@127.0.0.1>",
        call_id="c",
        cseq=7,
        transport="UDP",
        host="127.0.0.1",
        port=5060,
        route=("<sip:proxy@127.0.0.1;lr>",),
    ).to_data()
    with pytest.raises(ValidationError, match="'port' is '5060': expected an integer"):
        SentInvite.from_data({**good, "port": "5060"})
    with pytest.raises(ValidationError, match="'transport' is 'SCTP'"):
        SentInvite.from_data({**good, "transport": "SCTP"})
    cancel = SentInvite.from_data(good).cancel_request(sip_reason='SIP;cause=480;text="gone"')
    assert cancel.headers.get_all("Route") == ["<sip:proxy@127.0.0.1;lr>"]
    assert cancel.cseq == (7, "CANCEL") and cancel.headers.get("Reason") == 'SIP;cause=480;text="gone"'
