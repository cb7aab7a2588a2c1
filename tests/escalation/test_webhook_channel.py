"""The signed webhook channel against a real aiohttp receiver on loopback: signature, retries with back-off,
timeouts, final failures, delivered-is-not-accepted, cancel."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from comms.clock import SystemClock
from escalation.channel import AcceptResult, LegOrder
from escalation.webhook_channel import WebhookChannel, sign, verify
from tests.engine.helpers import SECRET, Receiver


class Reporter:
    def __init__(self) -> None:
        self.facts: list[tuple[str, dict[str, Any]]] = []

    async def record(self, leg_id: str, kind: str, data: dict[str, Any] | None = None) -> None:
        self.facts.append((kind, data or {}))

    async def try_accept(self, leg_id: str, *, digits: str, method: str) -> AcceptResult:
        raise AssertionError("a webhook delivery must never accept")

    async def check_pin(self, leg_id: str, digits: str) -> bool:
        raise AssertionError("no PIN over a webhook")

    def kinds(self) -> list[str]:
        return [k for k, _ in self.facts]


def order(url: str, leg: str = "leg-1") -> LegOrder:
    return LegOrder(
        leg_id=leg, incident_id="inc-1", incident_code="AB12CD", severity="severe", site_name="North",
        room_code="CT2", room_name="CT 2", person_id="p1", person_name="Dr A", kind="webhook", address=url,
        ring_timeout_s=30, tier=0, idempotency_key="inc-1:0:p1/c1:webhook:0",
    )  # fmt: skip


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    clock = SystemClock()
    r = Receiver(now=lambda: clock.now().timestamp())
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def channel() -> AsyncIterator[WebhookChannel]:
    ch = WebhookChannel(SystemClock(), secret=SECRET, timeout_s=0.5, retries=2, backoff_s=0.05)
    yield ch
    await ch.close()


def test_signature_is_hmac_sha256_over_timestamp_and_body() -> None:
    body = b'{"a":1}'
    expected = hmac.new(SECRET, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, body) == f"sha256={expected}"
    assert verify(SECRET, "1700000000", body, f"sha256={expected}", now=1700000010)
    assert not verify(SECRET, "1700000000", body + b" ", f"sha256={expected}", now=1700000010)
    assert not verify(b"other-secret", "1700000000", body, f"sha256={expected}", now=1700000010)
    assert not verify(SECRET, "1700000000", body, f"sha256={expected}", now=1700001000)  # stale


async def test_delivered_is_recorded_never_accepted_and_cancel_posts_and_ends(
    receiver: Receiver, channel: WebhookChannel
) -> None:
    rep = Reporter()
    task = asyncio.create_task(channel.place(order(receiver.url), rep))
    for _ in range(200):
        if "leg.delivered" in rep.kinds():
            break
        await asyncio.sleep(0.01)
    assert rep.kinds() == ["leg.invite_sent", "leg.delivered"]
    assert not task.done()  # a receipt is not an accept: the leg stays live
    (page,) = receiver.pages()
    assert page.key == "inc-1:0:p1/c1:webhook:0" and page.body["room"] == "CT2" and receiver.refused == 0
    await channel.cancel("leg-1", "cancelled-by-accept")
    await asyncio.wait_for(task, 5)
    assert rep.kinds()[-2:] == ["leg.cancel_sent", "leg.ended"]
    assert rep.facts[-1][1]["cause"] == "cancelled"
    assert [g.event for g in receiver.got] == ["page", "cancel"]


async def test_5xx_is_retried_with_backoff_then_delivered(
    receiver: Receiver, channel: WebhookChannel
) -> None:
    receiver.fail_first = 2
    rep = Reporter()
    task = asyncio.create_task(channel.place(order(receiver.url), rep))
    for _ in range(300):
        if "leg.delivered" in rep.kinds():
            break
        await asyncio.sleep(0.01)
    delivered = dict(rep.facts)["leg.delivered"]
    assert delivered["attempts"] == 3 and receiver.seen == 3
    await channel.cancel("leg-1", "tier-timeout")
    await asyncio.wait_for(task, 5)


async def test_retries_exhausted_end_the_leg_failed_so_the_tree_moves_on(
    receiver: Receiver, channel: WebhookChannel
) -> None:
    receiver.fail_first = 10
    rep = Reporter()
    await asyncio.wait_for(channel.place(order(receiver.url), rep), 5)
    kind, data = rep.facts[-1]
    assert (
        kind == "leg.ended" and data["cause"] == "failed" and data["attempts"] == 3 and data["status"] == 503
    )


async def test_4xx_is_final_at_once(receiver: Receiver, channel: WebhookChannel) -> None:
    receiver.status = 410
    rep = Reporter()
    await asyncio.wait_for(channel.place(order(receiver.url), rep), 5)
    assert rep.facts[-1][1]["attempts"] == 1 and rep.facts[-1][1]["status"] == 410


async def test_a_receiver_that_hangs_times_out_and_fails(channel: WebhookChannel) -> None:
    release = asyncio.Event()

    async def hang(_request: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    app = web.Application()
    app.router.add_post("/slow", hang)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        rep = Reporter()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.wait_for(channel.place(order(f"http://127.0.0.1:{port}/slow"), rep), 10)
        elapsed = loop.time() - t0
        kind, data = rep.facts[-1]
        assert kind == "leg.ended" and data["cause"] == "failed" and "Timeout" in str(data["reason"])
        assert 1.5 < elapsed < 3.0  # 3 attempts x 0.5 s + back-off 0.05 + 0.1 s
    finally:
        release.set()
        await runner.cleanup()
