"""Test support for the web tests: a seeded directory, a channel that holds legs open, small waits.

``HoldChannel`` is a real implementation of :class:`escalation.channel.Channel` (not a mock): it reports
the facts a SIP leg would (INVITE sent, 180 Ringing) through the runner, then holds the leg until the runner
cancels it, or accepts with "1" after ``accept_after`` seconds of the test's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from argon2 import PasswordHasher
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comms.clock import Clock
from comms.db.models import ContactMethod, EscalationPolicy, Person, PolicyTier, Room, Site
from comms.db.types import ContactKind
from comms.security import hash_password
from comms.web.auth import ThrottlePolicy
from comms.web.context import WebServices
from escalation.channel import LegOrder, LegReporter

#: Debian's Chromium headless on loopback, for the Playwright tests (tests/web, tests/gateway)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: argon2id with the smallest parameters, so that tests that log in many times stay fast
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "correct horse battery staple"
TOKENS = {"CT-1": "token-ct1-" + "a" * 33, "CT-2": "token-ct2-" + "b" * 33, "MR-9": "token-mr9-" + "c" * 33}
PEOPLE = {
    # username: (display name, roles, npi)
    "ada": ("Ada Diaz", "radiologist", "1234567893"),
    "bob": ("Dr Bob Stone", "radiologist", "1234567893"),
    "tina": ("Tina Tech", "technologist", None),
    "root": ("Ann Admin", "admin", None),
    "carl": ("Carl Compliance", "compliance", None),
}


@dataclass
class Directory:
    site_id: str
    room_ids: dict[str, str]
    person_ids: dict[str, str]


async def seed(sf: async_sessionmaker[AsyncSession]) -> Directory:
    """One site, three rooms (MR-9 inactive), five people, a two-tier policy: ada (tier 1), bob (tier 2)."""
    async with sf() as s, s.begin():
        site = Site(code="MAIN", name="Main Hospital", timezone="America/Chicago", us_state="IL")
        s.add(site)
        rooms = {}
        for code, token in TOKENS.items():
            room = Room(
                site=site,
                code=code,
                name=f"Scanner {code}",
                device_token_hash=hashlib.sha256(token.encode()).hexdigest(),
                active=code != "MR-9",
            )
            s.add(room)
            rooms[code] = room
        people = {}
        for username, (name, roles, npi) in PEOPLE.items():
            person = Person(
                username=username,
                display_name=name,
                roles=roles,
                npi=npi,
                password_hash=hash_password(PASSWORD, hasher=CHEAP_HASHER),
            )
            s.add(person)
            people[username] = person
        await s.flush()
        for username in ("ada", "bob"):
            s.add(
                ContactMethod(
                    person_id=people[username].id, kind=ContactKind.SIP, address=f"sip:{username}@127.0.0.1"
                )
            )
        policy = EscalationPolicy(site_id=site.id, name="contrast", version=1)
        policy.tiers = [
            PolicyTier(position=0, ring_timeout_s=30, targets=["person:ada"]),
            PolicyTier(position=1, ring_timeout_s=30, targets=["person:bob"]),
        ]
        s.add(policy)
        await s.flush()
        return Directory(site.id, {c: r.id for c, r in rooms.items()}, {u: p.id for u, p in people.items()})


@dataclass
class HoldChannel:
    """A SIP-like channel for tests: rings, then holds the leg until cancelled (or accepts after a delay)."""

    clock: Clock
    accept_after: float | None = None
    kind: str = "sip"
    orders: list[LegOrder] = field(default_factory=list)
    ringing: set[str] = field(default_factory=set)
    _stop: dict[str, asyncio.Event] = field(default_factory=dict)

    def _event(self, leg_id: str) -> asyncio.Event:
        return self._stop.setdefault(leg_id, asyncio.Event())

    async def place(self, order: LegOrder, reporter: LegReporter) -> None:
        self.orders.append(order)
        stop = self._event(order.leg_id)
        await reporter.record(order.leg_id, "leg.invite_sent", {"to": order.address})
        await reporter.record(order.leg_id, "leg.ringing", {"status": 180})
        self.ringing.add(order.leg_id)
        if self.accept_after is not None:
            await self.clock.sleep(self.accept_after)
            if not stop.is_set():
                await reporter.record(order.leg_id, "leg.answered", {"status": 200})
                await reporter.try_accept(order.leg_id, digits="1", method="rfc4733")
        await stop.wait()
        await reporter.record(order.leg_id, "leg.ended", {"status": 487, "cause": "cancelled"})

    def rang(self, leg_id: str) -> bool:
        return leg_id in self.ringing

    async def cancel(self, leg_id: str, reason: str) -> None:
        self._event(leg_id).set()


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    """Wait (real time) until ``check()`` is true: background leg tasks need a few loop turns."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.005)


def bearer(room: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[room]}"}


async def login(
    client: TestClient[web.Request, web.Application], username: str, password: str = PASSWORD
) -> None:
    resp = await client.post("/login", json={"username": username, "password": password})
    assert resp.status == 200, await resp.text()


def make_services(
    sf: async_sessionmaker[AsyncSession], clock: Clock, runner: Any, **overrides: Any
) -> WebServices:
    """What :func:`comms.web.app.build_app` needs for the tests: a fresh session secret, cheap password hashing,
    plain-HTTP cookies; ``overrides`` replace fields."""
    fields: dict[str, Any] = {
        "session_factory": sf,
        "clock": clock,
        "runner": runner,
        "session_secret": secrets.token_bytes(32),
        "cookie_secure": False,
        "password_hasher": CHEAP_HASHER,
        "throttle": ThrottlePolicy(window_s=900, max_failures_per_username=5, max_failures_per_address=20),
    }
    fields.update(overrides)
    return WebServices(**fields)


@contextlib.asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[str]:
    """``app`` served on 127.0.0.1 (a port from the OS) for a real browser; yields its base URL."""
    app_runner = web.AppRunner(app, access_log=None)
    await app_runner.setup()
    site = web.TCPSite(app_runner, "127.0.0.1", 0)
    await site.start()
    host, port = app_runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await app_runner.cleanup()
