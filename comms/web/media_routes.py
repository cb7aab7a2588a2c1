"""WebRTC signalling for the media gateway: the room tablet publishes, a radiologist's console watches.

Offer/answer in one POST each way (no trickle ICE: both ends gather candidates first). Routes:

* ``GET /api/v1/rooms/{code}/media`` (the room's device token, or staff): ICE servers for the page (TURN
  with a credential minted for this request when the gateway has a ``TurnRest``; never the shared secret), the
  room's connection state and media alarms (the room page shows them). Both pages fetch it before every
  (re)connect, so a reconnect never uses an expired credential.
* ``POST /api/v1/rooms/{code}/media/offer`` (device token of *that* room): ``{"sdp"}`` → ``{"sdp"}``.
* ``POST /api/v1/rooms/{code}/console/offer`` (staff session, radiologist or admin): ``{"sdp"}`` →
  ``{"console_id", "sdp"}``.
* ``GET /rooms/{code}/console`` (radiologist page): the console.

:func:`install` adds these to an app built by :func:`comms.web.app.build_app`; :func:`db_evidence_sink`
writes the gateway's evidence to the incident's hash-chained event log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comms.clock import Clock
from comms.db.events import append_event
from comms.db.models import Incident
from comms.db.types import Role
from comms.web.app import add_route
from comms.web.auth import Access, DevicePrincipal, StaffPrincipal
from comms.web.context import PRINCIPAL, ApiError, RouteSpec, json_response
from comms.web.pages import _ROOM_CODE, _e, _page
from media.errors import MediaError
from media.gateway import MediaEvidence, MediaGateway

__all__ = ["GATEWAY", "MEDIA_ROUTES", "db_evidence_sink", "install"]

log = logging.getLogger(__name__)

GATEWAY = web.AppKey("media_gateway", MediaGateway)
MAX_SDP = 32 * 1024


def _room_code(request: web.Request) -> str:
    code = request.match_info["code"]
    if not _ROOM_CODE.fullmatch(code):
        raise ApiError(
            404, "unknown_room", f"room code {code[:40]!r} is not a room code: expected e.g. 'CT-1'"
        )
    return code


async def _sdp(request: web.Request) -> str:
    if request.content_type != "application/json":
        raise ApiError(
            415, "unsupported_media_type", f"body is {request.content_type}: expected application/json"
        )
    try:
        body: Any = json.loads(await request.text())
    except ValueError as exc:
        raise ApiError(400, "bad_json", f"body is not JSON: {exc}") from exc
    sdp = body.get("sdp") if isinstance(body, dict) else None
    if not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > MAX_SDP:
        raise ApiError(
            422, "invalid", f"field 'sdp' must be an SDP offer (starting 'v=0', at most {MAX_SDP} bytes)"
        )
    return sdp


def _ice_json(gw: MediaGateway, user: str) -> list[dict[str, Any]]:
    # TURN credentials are minted for this request (short-lived, media/turn.py); the shared secret stays here
    out = []
    for s in gw.ice_servers_for(user):
        item: dict[str, Any] = {"urls": list(s.urls)}
        if s.username is not None:
            item.update(username=s.username, credential=s.credential)
        out.append(item)
    return out


async def media_status(request: web.Request) -> web.StreamResponse:
    code = _room_code(request)
    principal = request[PRINCIPAL]
    if isinstance(principal, DevicePrincipal) and principal.room_code != code:
        raise ApiError(403, "wrong_room", f"this device token is for room {principal.room_code}, not {code}")
    gw = request.app[GATEWAY]
    # the TURN user label says who asked (coturn logs it); json_response is no-store: a fresh credential each time
    user = principal.person_id if isinstance(principal, StaffPrincipal) else f"room-{code}"
    return json_response({"ice_servers": _ice_json(gw, user), **gw.room_status(code)})


async def room_offer(request: web.Request) -> web.StreamResponse:
    code = _room_code(request)
    principal = request[PRINCIPAL]
    if not isinstance(principal, DevicePrincipal) or principal.room_code != code:
        have = principal.room_code if isinstance(principal, DevicePrincipal) else "none"
        raise ApiError(
            403, "wrong_room", f"only room {code}'s device may publish its media (token is for {have})"
        )
    sdp = await _sdp(request)
    try:
        answer = await request.app[GATEWAY].room_offer(code, sdp)
    except (MediaError, ValueError) as exc:
        raise ApiError(422, "bad_offer", f"cannot answer the room's offer: {exc}") from exc
    return json_response({"sdp": answer})


async def console_offer(request: web.Request) -> web.StreamResponse:
    code = _room_code(request)
    principal = request[PRINCIPAL]
    assert isinstance(principal, StaffPrincipal)
    sdp = await _sdp(request)
    try:
        console_id, answer = await request.app[GATEWAY].console_offer(code, principal.person_id, sdp)
    except (MediaError, ValueError) as exc:
        raise ApiError(422, "bad_offer", f"cannot answer the console's offer: {exc}") from exc
    log.info("[room=%s] console %s opened by person %s", code, console_id, principal.person_id)
    return json_response({"console_id": console_id, "sdp": answer})


async def console_page(request: web.Request) -> web.StreamResponse:
    code = _room_code(request)
    body = (
        f'<section id="console" data-room="{_e(code)}">'
        f"<h1>Room {_e(code)} — live</h1>"
        '<video id="room-video" autoplay playsinline muted></video>'
        '<audio id="room-audio" autoplay></audio>'
        '<p id="console-state" class="status" role="status">Connecting…</p>'
        '<p id="console-health" class="health"></p>'
        "</section>"
    )
    return _page(
        request, title=f"Room {code} console", body=body, scripts=("console.js",), body_class="console"
    )


MEDIA_ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec(
        "GET", "/api/v1/rooms/{code}/media", media_status, Access.staff_or_device(), "room_media_status"
    ),
    RouteSpec(
        "POST", "/api/v1/rooms/{code}/media/offer", room_offer, Access.device_only(), "room_media_offer"
    ),
    RouteSpec(
        "POST",
        "/api/v1/rooms/{code}/console/offer",
        console_offer,
        Access.staff(Role.RADIOLOGIST, Role.ADMIN),
        "console_offer",
    ),
    RouteSpec(
        "GET",
        "/rooms/{code}/console",
        console_page,
        Access.staff(Role.RADIOLOGIST, Role.ADMIN, page=True),
        "console_page",
    ),
)


def install(app: web.Application, gateway: MediaGateway) -> None:
    """Add the signalling routes (each with its declared access) and the gateway to ``app``."""
    app[GATEWAY] = gateway
    for spec in MEDIA_ROUTES:
        add_route(app, spec)


def db_evidence_sink(
    session_factory: async_sessionmaker[AsyncSession], clock: Clock, source: str = "media-gateway"
) -> Callable[[MediaEvidence], Awaitable[None]]:
    """The gateway's ``evidence`` callback: one hash-chained event per fact, in the incident's chain."""

    async def sink(ev: MediaEvidence) -> None:
        async with session_factory() as db, db.begin():
            incident = await db.get(Incident, ev.incident_id)
            if incident is None:
                log.warning("media evidence %s for unknown incident %s dropped", ev.kind, ev.incident_id)
                return
            await append_event(
                db,
                incident=incident,
                leg_id=ev.leg_id,
                kind=ev.kind,
                data=ev.data,
                clock=clock,
                source=source,
            )

    return sink
