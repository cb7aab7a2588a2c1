"""The HTML pages: served with security headers, gated by login, values escaped, static files versioned."""

from __future__ import annotations

import re

import sqlalchemy as sa
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comms.db.models import Room
from tests.web.support import bearer, login

Client = TestClient[web.Request, web.Application]


async def test_room_page_is_public_with_big_button_and_severities(client: Client) -> None:
    resp = await client.get("/rooms/CT-1?token=whatever")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    html = await resp.text()
    assert 'data-room="CT-1"' in html
    assert 'data-poll-ms="500"' in html
    assert ">Contrast reaction</button>" in html
    values = re.findall(r'name="severity" value="(\w+)"( checked)?', html)
    assert values == [("severe", " checked"), ("moderate", ""), ("mild", ""), ("unknown", "")]
    assert "whatever" not in html  # the token never comes back in the page
    script = re.search(r'<script src="(/static/room\.js\?v=[^"]+)"', html)
    assert script is not None
    js = await client.get(script.group(1))
    assert js.status == 200
    assert "/api/v1/incidents" in await js.text()
    for name, value in {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }.items():
        assert resp.headers[name] == value
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]


async def test_room_page_refuses_a_malformed_code(client: Client) -> None:
    resp = await client.get("/rooms/%3Cscript%3E")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "unknown_room"


async def test_login_page_escapes_next(client: Client) -> None:
    resp = await client.get('/login?next="><script>alert(1)</script>')
    html = await resp.text()
    assert resp.status == 200
    assert "<script>alert(1)" not in html
    assert 'value="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in html


async def test_dashboard_needs_login_then_lists_incidents(
    client: Client, sf: async_sessionmaker[AsyncSession]
) -> None:
    resp = await client.get("/incidents", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/login?next=/incidents"
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/login?next=/"
    resp = await client.get("/incidents?a=1&b=2", allow_redirects=False)
    assert resp.headers["Location"] == "/login?next=/incidents?a%3D1%26b%3D2"

    async with sf() as s, s.begin():  # a room name that would break naive HTML
        room = await s.get(Room, (await _room_id(sf, "CT-1")))
        assert room is not None
        room.name = "<b>Scanner</b> & co"
    created = await client.post(
        "/api/v1/incidents", json={"room": "CT-1", "severity": "mild"}, headers=bearer("CT-1")
    )
    incident = await created.json()

    await login(client, "tina")
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/incidents"
    html = await (await client.get("/incidents")).text()
    assert f'<a href="/incidents/{incident["id"]}">{incident["code"]}</a>' in html
    assert "Main Hospital" in html
    assert "CT-1" in html
    assert "mild" in html
    assert "2026-01-05 08:00:00 CST" in html  # site local time (America/Chicago)
    assert "Tina Tech" in html
    assert 'action="/logout"' in html

    page = await client.get(f"/incidents/{incident['id']}")
    assert page.status == 200
    html = await page.text()
    assert f"Incident {incident['code']}" in html
    assert "&lt;b&gt;Scanner&lt;/b&gt; &amp; co" in html
    assert "<b>Scanner</b>" not in html
    assert "incident.raised" in html
    assert "incident.tier_started" in html
    missing = await client.get("/incidents/00000000-0000-4000-8000-000000000000")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "not_found"


async def _room_id(sf: async_sessionmaker[AsyncSession], code: str) -> str:
    async with sf() as s:
        return str((await s.execute(sa.select(Room.id).where(Room.code == code))).scalar_one())
