"""Nothing is open by accident: every route declares its access; every non-public route refuses strangers."""

from __future__ import annotations

import re
import uuid

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from comms.clock import FakeClock
from comms.web.app import ROUTES, STATIC_ACCESS, add_route, build_app, undeclared_routes
from comms.web.auth import Access
from comms.web.context import ROUTE_ACCESS, RouteSpec
from escalation.runner import EscalationRunner
from tests.web.conftest import make_services

Client = TestClient[web.Request, web.Application]

PLACEHOLDER_VALUES = {"id": str(uuid.uuid4()), "code": "CT-1"}


def _app(sf: object, clock: FakeClock, runner: EscalationRunner) -> web.Application:
    return build_app(make_services(sf, clock, runner))  # type: ignore[arg-type]


async def test_router_walk_every_route_declares_access(
    sf: object, clock: FakeClock, runner: EscalationRunner
) -> None:
    app = _app(sf, clock, runner)
    routes = list(app.router.routes())
    assert len(routes) >= len(ROUTES)
    access = app[ROUTE_ACCESS]
    for route in routes:
        canonical = route.resource.canonical if route.resource is not None else None
        assert (route.method, canonical) in access, f"{route.method} {canonical} declares no access"
    assert undeclared_routes(app) == []


async def test_router_walk_finds_a_route_added_behind_the_tables_back(
    sf: object, clock: FakeClock, runner: EscalationRunner
) -> None:
    async def sneaky(request: web.Request) -> web.Response:
        return web.Response(text="secret")

    app = _app(sf, clock, runner)
    app.router.add_get("/sneaky", sneaky)
    assert sorted(undeclared_routes(app)) == ["GET /sneaky", "HEAD /sneaky"]
    server = TestServer(app, host="127.0.0.1", port=0)
    with pytest.raises(RuntimeError, match=r"without an access declaration: .*GET /sneaky"):
        await server.start_server()
    await server.close()


async def test_access_middleware_fails_closed_for_an_undeclared_route(client: Client) -> None:
    app = client.app
    assert app is not None
    # the declaration disappears after start-up: the middleware must still refuse, not serve
    del app[ROUTE_ACCESS][("GET", "/incidents")]
    resp = await client.get("/incidents")
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "undeclared_route"


async def test_add_route_declares_and_refuses_duplicates(
    sf: object, clock: FakeClock, runner: EscalationRunner
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = _app(sf, clock, runner)
    add_route(app, RouteSpec("GET", "/extra", handler, Access.staff(), "extra"))
    assert app[ROUTE_ACCESS][("GET", "/extra")] == Access.staff()
    assert undeclared_routes(app) == []
    with pytest.raises(ValueError, match="declared twice"):
        add_route(app, RouteSpec("POST", "/login", handler, Access.public(), "login2"))


def test_route_table_is_explicit() -> None:
    for spec in ROUTES:
        assert isinstance(spec.access, Access)
        assert spec.access.is_public or spec.access.roles or spec.access.device
    with pytest.raises(ValueError, match="must allow some staff role"):
        Access()
    with pytest.raises(ValueError, match="cannot also list roles"):
        Access(is_public=True, device=True)
    assert STATIC_ACCESS.is_public


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PLACEHOLDER_VALUES[m.group(1)], path)


async def test_every_non_public_route_refuses_anonymous_callers(client: Client) -> None:
    app = client.app
    assert app is not None
    checked = 0
    for (method, canonical), access in app[ROUTE_ACCESS].items():
        if access.is_public:
            continue
        resp = await client.request(method, _concrete(canonical), allow_redirects=False)
        if access.page:
            assert resp.status == 303, f"{method} {canonical}: {resp.status}"
            assert resp.headers["Location"].startswith("/login?next=")
        else:
            assert resp.status == 401, f"{method} {canonical}: {resp.status}"
            assert (await resp.json())["error"]["code"] == "not_authenticated"
        checked += 1
    assert checked >= 7


async def test_device_token_opens_only_device_routes(client: Client) -> None:
    app = client.app
    assert app is not None
    headers = {"Authorization": "Bearer token-ct1-" + "a" * 33}
    for (method, canonical), access in app[ROUTE_ACCESS].items():
        if access.is_public or access.device:
            continue
        resp = await client.request(method, _concrete(canonical), headers=headers, allow_redirects=False)
        assert resp.status == 403, f"{method} {canonical}: {resp.status}"
        assert (await resp.json())["error"]["code"] == "device_not_allowed"
