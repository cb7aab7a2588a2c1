"""ForkGroup: one alert to several real UserAgents on loopback; first 2xx wins, the rest are cancelled or BYE'd."""

from __future__ import annotations

import asyncio

import pytest

from sip.ua import FORK_REASON, Call, CallAnswered, CallEnded, ForkGroup
from tests.sip.conftest import Inbox, UaFactory, next_event, uri_of

pytestmark = pytest.mark.timeout(60)

ALICE = "sip:alice@127.0.0.1"


async def test_first_answer_wins_and_losers_are_cancelled(make_ua: UaFactory) -> None:
    caller = await make_ua()
    answering = await make_ua()
    ringers = [await make_ua(), await make_ua()]

    async def answer_late(call: Call) -> None:
        await call.ring()
        await asyncio.sleep(0.2)
        await call.answer()

    async def ring(call: Call) -> None:
        await call.ring()

    winner_inbox = Inbox(answer_late)
    answering.on_incoming(winner_inbox)
    loser_inboxes = [Inbox(ring) for _ in ringers]
    for ua, inbox in zip(ringers, loser_inboxes, strict=True):
        ua.on_incoming(inbox)

    group = await ForkGroup.dial(
        caller, [uri_of(ringers[0]), uri_of(answering), uri_of(ringers[1])], from_uri=ALICE
    )
    winner = await asyncio.wait_for(group.winner(), 5)
    assert winner is group.legs[1]
    for leg in (group.legs[0], group.legs[2]):
        ended = await asyncio.wait_for(leg.wait_ended(), 5)
        assert (ended.status, ended.by, ended.sip_reason) == (487, "local", FORK_REASON)
    for inbox in loser_inboxes:
        callee_leg = await inbox.next()
        ended = await asyncio.wait_for(callee_leg.wait_ended(), 5)
        assert ended.status == 487
        assert ended.by == "remote"
        assert ended.sip_reason is not None
        assert "Call completed elsewhere" in ended.sip_reason
    outcomes = group.outcomes()
    assert outcomes[winner.id] is None  # still up
    callee = await winner_inbox.next()
    await next_event(callee, CallAnswered)
    await winner.hangup()
    assert (await asyncio.wait_for(callee.wait_ended(), 5)).by == "remote"


async def test_two_answers_the_later_is_byed(make_ua: UaFactory) -> None:
    caller = await make_ua()
    fast, slow = await make_ua(), await make_ua()
    gate = asyncio.Event()

    async def answer_now(call: Call) -> None:
        await call.answer()
        gate.set()

    async def answer_when_other_did(call: Call) -> None:
        await gate.wait()
        await call.answer()  # races the CANCEL: either it is cancelled, or it answers and gets a BYE

    fast_inbox, slow_inbox = Inbox(answer_now), Inbox(answer_when_other_did)
    fast.on_incoming(fast_inbox)
    slow.on_incoming(slow_inbox)
    group = await ForkGroup.dial(caller, [uri_of(fast), uri_of(slow)], from_uri=ALICE)
    winner = await asyncio.wait_for(group.winner(), 5)
    assert winner is group.legs[0]
    loser_end = await asyncio.wait_for(group.legs[1].wait_ended(), 5)
    assert loser_end.by == "local"
    slow_callee = await slow_inbox.next()
    callee_end = await asyncio.wait_for(slow_callee.wait_ended(), 5)
    assert callee_end.by == "remote"
    # whichever way the race went, the far end knows the call was completed elsewhere
    assert callee_end.sip_reason is not None
    assert "Call completed elsewhere" in callee_end.sip_reason
    assert isinstance(group.outcomes()[group.legs[1].id], CallEnded)


async def test_nobody_answers(make_ua: UaFactory) -> None:
    caller = await make_ua()
    a, b = await make_ua(), await make_ua()

    async def busy(call: Call) -> None:
        await call.reject(486)

    a.on_incoming(Inbox(busy))
    b.on_incoming(Inbox(busy))
    group = await ForkGroup.dial(caller, [uri_of(a), uri_of(b)], from_uri=ALICE)
    assert await asyncio.wait_for(group.winner(), 5) is None
    assert [e.status for e in await group.wait_all_ended()] == [486, 486]
