"""Login, logout, session cookies, throttling and role gates, against the real app and a real SQLite file."""

from __future__ import annotations

from http.cookies import SimpleCookie
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comms.clock import FakeClock
from comms.db.models import Event, Person
from comms.security import hash_password
from comms.web.auth import ThrottlePolicy
from comms.web.context import SESSION_COOKIE
from tests.web.conftest import ClientFactory
from tests.web.support import CHEAP_HASHER, PASSWORD, login

Client = TestClient[web.Request, web.Application]


async def error(resp: Any, status: int, code: str) -> str:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    return message


def set_cookie(resp: Any) -> SimpleCookie:
    cookie: SimpleCookie = SimpleCookie()
    for header in resp.headers.getall("Set-Cookie", []):
        cookie.load(header)
    return cookie


async def global_events(sf: async_sessionmaker[AsyncSession]) -> list[Event]:
    async with sf() as s:
        return list(
            (await s.scalars(sa.select(Event).where(Event.incident_id.is_(None)).order_by(Event.seq))).all()
        )


async def test_json_login_sets_a_hardened_cookie_and_me_works(
    client: Client, sf: async_sessionmaker[AsyncSession]
) -> None:
    resp = await client.post(
        "/login", json={"username": " Ada ", "password": PASSWORD, "next": "/incidents/x"}
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["person"]["username"] == "ada"
    assert body["person"]["roles"] == ["radiologist"]
    assert body["next"] == "/incidents/x"
    morsel = set_cookie(resp)[SESSION_COOKIE]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/"
    assert not morsel["secure"]  # cookie_secure=False in this app
    assert int(morsel["max-age"]) == 12 * 3600
    me = await (await client.get("/api/v1/me")).json()
    assert me["person"]["display_name"] == "Ada Diaz"
    kinds = [(e.kind, e.data["username"]) for e in await global_events(sf)]
    assert kinds == [("access.login", "ada")]


async def test_cookie_is_secure_when_configured(make_client: ClientFactory) -> None:
    client = await make_client(cookie_secure=True)
    resp = await client.post("/login", json={"username": "ada", "password": PASSWORD})
    assert resp.status == 200
    assert set_cookie(resp)[SESSION_COOKIE]["secure"] is True


async def test_form_login_redirects_to_a_local_next_only(client: Client) -> None:
    form = {"username": "tina", "password": PASSWORD, "next": "/incidents?x=1"}
    resp = await client.post("/login", data=form, allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/incidents?x=1"
    for evil in ("//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
        form["next"] = evil
        resp = await client.post("/login", data=form, allow_redirects=False)
        assert resp.status == 303, evil
        assert resp.headers["Location"] == "/incidents", evil


async def test_wrong_password_unknown_user_and_inactive_person_all_look_the_same(
    client: Client, sf: async_sessionmaker[AsyncSession]
) -> None:
    async with sf() as s, s.begin():
        carl = (await s.scalars(sa.select(Person).where(Person.username == "carl"))).one()
        carl.active = False
    messages = set()
    for username, password in (("ada", "wrong"), ("nobody", PASSWORD), ("carl", PASSWORD)):
        resp = await client.post("/login", json={"username": username, "password": password})
        messages.add(await error(resp, 401, "bad_credentials"))
        assert SESSION_COOKIE not in set_cookie(resp)
    assert messages == {"username or password is wrong: expected an active account's password"}
    failed = [e.data["username"] for e in await global_events(sf) if e.kind == "access.login_failed"]
    assert failed == ["ada", "nobody", "carl"]


async def test_login_input_errors(client: Client) -> None:
    await error(
        await client.post("/login", data=b"{oops", headers={"Content-Type": "application/json"}),
        400,
        "bad_json",
    )
    await error(await client.post("/login", json=["ada"]), 400, "bad_json")
    assert "username and password" in await error(await client.post("/login", json={}), 422, "missing_field")
    assert "password" in await error(
        await client.post("/login", json={"username": "ada"}), 422, "missing_field"
    )
    await error(await client.post("/login", json={"username": 1, "password": 2}), 422, "invalid")
    await error(await client.post("/login", json={"username": "a" * 65, "password": "x"}), 422, "invalid")
    msg = await error(
        await client.post("/login", data=b"x", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    assert "'text/plain'" in msg


async def test_logout_revokes_the_session_even_if_the_cookie_is_replayed(
    client: Client, sf: async_sessionmaker[AsyncSession]
) -> None:
    await login(client, "tina")
    stolen = client.session.cookie_jar.filter_cookies(client.make_url("/"))[SESSION_COOKIE].value
    assert (await client.get("/api/v1/me")).status == 200
    resp = await client.post("/logout", json={})
    assert resp.status == 200
    assert await resp.json() == {"logged_out": True}
    assert set_cookie(resp)[SESSION_COOKIE].value == ""
    await error(await client.get("/api/v1/me"), 401, "not_authenticated")
    replay = await client.get("/api/v1/me", cookies={SESSION_COOKIE: stolen})
    await error(replay, 401, "not_authenticated")
    assert [e.kind for e in await global_events(sf)] == ["access.login", "access.logout"]
    resp = await client.post("/logout", allow_redirects=False)  # form logout without a session: harmless
    assert resp.status == 303
    assert resp.headers["Location"] == "/login"


async def test_forged_expired_and_stale_cookies_are_refused(
    client: Client, clock: FakeClock, sf: async_sessionmaker[AsyncSession]
) -> None:
    await login(client, "ada")
    value = client.session.cookie_jar.filter_cookies(client.make_url("/"))[SESSION_COOKIE].value
    version, sid, pid, expires, mac = value.split(".")
    for forged in (
        f"{version}.{sid}.{pid}.{int(expires) + 3600}.{mac}",  # extended expiry
        f"{version}.{sid}.{pid}.{expires}.{mac[:-2]}AA",  # bad MAC
        "v2.a.b.1.c",
        "garbage",
        f"{version}.{sid}.{pid}.{expires}.!!!",
    ):
        await error(
            await client.get("/api/v1/me", cookies={SESSION_COOKIE: forged}), 401, "not_authenticated"
        )
    assert (await client.get("/api/v1/me")).status == 200
    clock.advance(12 * 3600 + 1)
    await error(await client.get("/api/v1/me"), 401, "not_authenticated")

    # a password change ends every session of that person
    await login(client, "ada")
    assert (await client.get("/api/v1/me")).status == 200
    async with sf() as s, s.begin():
        ada = (await s.scalars(sa.select(Person).where(Person.username == "ada"))).one()
        ada.password_hash = hash_password("a new password", hasher=CHEAP_HASHER)
    await error(await client.get("/api/v1/me"), 401, "not_authenticated")


async def test_role_change_is_seen_at_once(client: Client, sf: async_sessionmaker[AsyncSession]) -> None:
    await login(client, "tina")
    await error(await client.post("/api/v1/rooms/CT-1/device-token"), 403, "forbidden")
    async with sf() as s, s.begin():
        tina = (await s.scalars(sa.select(Person).where(Person.username == "tina"))).one()
        tina.roles = "admin,technologist"
    assert (await client.post("/api/v1/rooms/CT-1/device-token")).status == 200


async def test_throttle_per_username_then_window_reopens(client: Client, clock: FakeClock) -> None:
    for _ in range(5):
        await error(
            await client.post("/login", json={"username": "ada", "password": "nope"}), 401, "bad_credentials"
        )
    resp = await client.post("/login", json={"username": "ada", "password": PASSWORD})
    message = await error(resp, 429, "too_many_attempts")
    assert "try again in 900 s" in message
    assert resp.headers["Retry-After"] == "900"
    # another username from the same address still may log in
    await login(client, "tina")
    clock.advance(600)
    resp = await client.post("/login", json={"username": "ada", "password": PASSWORD})
    assert resp.headers["Retry-After"] == "300"
    await error(resp, 429, "too_many_attempts")
    clock.advance(300)
    await login(client, "ada")


async def test_success_clears_the_username_count(client: Client) -> None:
    for _ in range(4):
        await error(
            await client.post("/login", json={"username": "ada", "password": "nope"}), 401, "bad_credentials"
        )
    await login(client, "ada")
    for _ in range(4):
        await error(
            await client.post("/login", json={"username": "ada", "password": "nope"}), 401, "bad_credentials"
        )
    await login(client, "ada")


async def test_throttle_per_address_across_usernames(make_client: ClientFactory) -> None:
    client = await make_client(
        throttle=ThrottlePolicy(max_failures_per_username=5, max_failures_per_address=3)
    )
    for name in ("u1", "u2", "u3"):
        await error(
            await client.post("/login", json={"username": name, "password": "x"}), 401, "bad_credentials"
        )
    await error(
        await client.post("/login", json={"username": "ada", "password": PASSWORD}), 429, "too_many_attempts"
    )


async def test_cross_site_write_with_a_session_is_refused(client: Client) -> None:
    await login(client, "root")
    resp = await client.post("/api/v1/rooms/CT-1/device-token", headers={"Origin": "https://evil.example"})
    assert "https://evil.example" in await error(resp, 403, "bad_origin")
    own = f"http://{client.host}:{client.port}"
    assert (await client.post("/api/v1/rooms/CT-1/device-token", headers={"Origin": own})).status == 200
