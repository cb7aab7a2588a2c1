"""Shared by the engine tests, the chaos tests and the benches: a directory, a webhook receiver, a runner."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comms.db.models import ContactMethod, EscalationPolicy, Person, PolicyTier, Room, Site
from comms.db.types import ContactKind
from escalation.webhook_channel import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

SECRET = b"test-webhook-secret-0123456789"


def npi(n: int) -> str:
    """The n-th valid test NPI (9 digits + the Luhn check digit over the 80840 prefix)."""
    base = f"1{n:08d}"
    digits = [int(c) for c in "80840" + base]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return base + str((10 - total % 10) % 10)


async def seed_directory(
    sf: async_sessionmaker[AsyncSession],
    tiers: list[list[str]],
    *,
    ring_timeout_s: int = 10,
    rooms: int = 1,
    severe_fanout: int = 1,
    repeat: int = 1,
    parallel: bool = True,
    onsite_uri: str | None = None,
) -> list[str]:
    """One site, ``rooms`` rooms (R0, R1 …), one policy whose tier *i* pages the usernames in ``tiers[i]``
    (each person has one SIP contact ``sip:<username>@127.0.0.1``). Returns the room codes."""
    npis = (npi(n) for n in range(1, 100_000))
    async with sf() as s, s.begin():
        site = Site(
            code="north",
            name="Northside Imaging",
            timezone="America/Chicago",
            us_state="IL",
            onsite_activation_uri=onsite_uri,
        )
        s.add(site)
        await s.flush()
        codes = [f"R{i}" for i in range(rooms)]
        for code in codes:
            token = hashlib.sha256(code.encode()).hexdigest()
            s.add(Room(site_id=site.id, code=code, name=f"Room {code}", device_token_hash=token))
        policy = EscalationPolicy(
            site_id=site.id, name="contrast", version=1, severe_fanout=severe_fanout, repeat=repeat
        )
        s.add(policy)
        await s.flush()
        seen: set[str] = set()
        for position, people in enumerate(tiers, start=1):
            for username in people:
                if username in seen:
                    continue
                seen.add(username)
                person = Person(
                    username=username, display_name=f"Dr {username}", roles="radiologist", npi=next(npis)
                )
                s.add(person)
                await s.flush()
                s.add(
                    ContactMethod(
                        person_id=person.id, kind=ContactKind.SIP, address=f"sip:{username}@127.0.0.1"
                    )
                )
            if people:
                s.add(
                    PolicyTier(
                        policy_id=policy.id,
                        position=position,
                        ring_timeout_s=ring_timeout_s,
                        targets=[f"person:{u}" for u in people],
                        parallel=parallel,
                    )
                )
    return codes


@dataclass
class Received:
    key: str
    event: str
    leg_id: str
    body: dict[str, Any]


@dataclass
class Receiver:
    """An integration endpoint on 127.0.0.1:0 that checks every signature and keeps what it got."""

    now: Callable[[], float]
    fail_first: int = 0
    """Answer 503 to this many requests first (to exercise retries)."""
    status: int = 200
    got: list[Received] = field(default_factory=list)
    refused: int = 0
    seen: int = 0
    _runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen += 1
        ok = verify(
            SECRET,
            request.headers.get(TIMESTAMP_HEADER, ""),
            body,
            request.headers.get(SIGNATURE_HEADER, ""),
            now=self.now(),
        )
        if not ok:
            self.refused += 1
            return web.Response(status=401, text="bad signature")
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=503)
        data = json.loads(body)
        self.got.append(Received(request.headers["Idempotency-Key"], data["event"], data["leg_id"], data))
        return web.Response(status=self.status)

    def pages(self) -> list[Received]:
        return [r for r in self.got if r.event == "page"]


async def one(sf: async_sessionmaker[AsyncSession], stmt: Any) -> Any:
    async with sf() as s:
        return (await s.execute(stmt)).all()


__all__ = ["SECRET", "Receiver", "one", "sa", "seed_directory"]
