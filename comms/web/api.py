"""The JSON API, version 1: raise an incident from a room device; read an incident, its timeline and its legs.

Staff sessions (any role) read every incident; a room's device token reads only that room's incidents. Every
refusal is an :class:`~comms.web.context.ApiError` naming what was expected and what was seen.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from comms.db.events import append_event, leg_status
from comms.db.models import CallLeg, Event, Incident, Room
from comms.db.types import Role, Severity
from comms.errors import ValidationError
from comms.security import hash_device_token, new_device_token
from comms.web.auth import Access, DevicePrincipal, Principal, StaffPrincipal
from comms.web.context import PRINCIPAL, SERVICES, ApiError, RouteSpec, iso_ms, json_response
from comms.web.sessions import EVENT_SOURCE
from comms.web.status import LegView, status_line

log = logging.getLogger(__name__)

SEVERITIES = tuple(s.value for s in Severity)
_RAISE_FIELDS = ("room", "severity")
#: ``source`` recorded on incidents raised through this API
SOURCE_DEVICE = "room_device"


async def read_json_object(request: web.Request, expected: str) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 naming what was seen."""
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "bad_json", f"request body is empty: expected a JSON object {expected}")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(
            400, "bad_json", f"request body is not valid JSON ({exc}): expected a JSON object {expected}"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(
            400,
            "bad_json",
            f"request body is a JSON {type(body).__name__}: expected a JSON object {expected}",
        )
    return body


def parse_incident_id(request: web.Request) -> str:
    raw = request.match_info["id"]
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ApiError(
            404,
            "not_found",
            f"incident id {raw[:64]!r} is not a UUID: expected an id such as returned by POST",
        ) from None


def _links(incident_id: str) -> dict[str, str]:
    return {
        "self": f"/api/v1/incidents/{incident_id}",
        "legs": f"/api/v1/incidents/{incident_id}/legs",
        "page": f"/incidents/{incident_id}",
    }


# ---------------------------------------------------------------------------------------------------- raise


async def create_incident(request: web.Request) -> web.StreamResponse:
    """POST /api/v1/incidents ``{"room": code, "severity": one of SEVERITIES}`` with the room's token."""
    principal = request[PRINCIPAL]
    assert isinstance(principal, DevicePrincipal)  # the route is device-only
    services = request.app[SERVICES]
    body = await read_json_object(request, '{"room": "<room code>", "severity": "severe"}')
    unknown = sorted(set(body) - set(_RAISE_FIELDS))
    if unknown:
        raise ApiError(
            422, "unknown_field", f"unexpected field(s) {unknown}: expected only {list(_RAISE_FIELDS)}"
        )
    missing = [name for name in _RAISE_FIELDS if name not in body]
    if missing:
        raise ApiError(
            422, "missing_field", f'missing field(s) {missing}: expected {{"room": ..., "severity": ...}}'
        )
    room_code, severity = body["room"], body["severity"]
    for name, value in (("room", room_code), ("severity", severity)):
        if not isinstance(value, str):
            raise ApiError(
                422,
                "invalid",
                f"field {name!r} is a JSON {type(value).__name__} ({value!r:.40}): expected a string",
            )
    if severity not in SEVERITIES:
        raise ApiError(
            422,
            "unknown_severity",
            f"severity {severity[:40]!r} is unknown: expected one of {', '.join(SEVERITIES)}",
        )
    if room_code != principal.room_code:
        async with services.session_factory() as db:
            exists = (await db.execute(sa.select(Room.id).where(Room.code == room_code))).first() is not None
        if not exists:
            raise ApiError(
                404,
                "unknown_room",
                f"room {room_code[:40]!r} does not exist: expected this device's room "
                f"{principal.room_code!r}",
            )
        raise ApiError(
            403,
            "wrong_room",
            f"this device token belongs to room {principal.room_code!r}: "
            f"it cannot raise an alert for {room_code!r}",
        )
    try:
        incident_id = await services.runner.raise_incident(
            room_code=room_code, severity=severity, source=SOURCE_DEVICE
        )
    except ValidationError as exc:
        raise ApiError(422, "rejected", f"the alert was refused: {exc}") from exc
    async with services.session_factory() as db:
        incident = await db.get(Incident, incident_id)
    if incident is None:  # the runner committed it; not seeing it is our bug, not the caller's
        raise RuntimeError(f"runner returned incident {incident_id!r} but it is not in the database")
    log.info("[incident=%s] raised by room %s (%s) through the API", incident.id, room_code, severity)
    response = json_response(
        {
            "id": incident.id,
            "code": incident.code,
            "state": incident.state.value,
            "severity": incident.severity.value,
            "links": _links(incident.id),
        },
        status=201,
    )
    response.headers["Location"] = f"/api/v1/incidents/{incident.id}"
    return response


# ----------------------------------------------------------------------------------------------------- read


@dataclass(frozen=True)
class IncidentBundle:
    incident: Incident
    events: list[Event]
    legs: list[CallLeg]
    leg_events: dict[str, list[Event]]


async def load_incident(db: AsyncSession, incident_id: str) -> IncidentBundle | None:
    """The incident with its room, site, acceptor, legs (with persons) and events in sequence order."""
    incident = (
        await db.execute(
            sa.select(Incident)
            .where(Incident.id == incident_id)
            .options(
                selectinload(Incident.room),
                selectinload(Incident.site),
                selectinload(Incident.accepted_by),
                selectinload(Incident.legs).selectinload(CallLeg.person),
            )
        )
    ).scalar_one_or_none()
    if incident is None:
        return None
    events = list(
        (
            await db.execute(sa.select(Event).where(Event.incident_id == incident_id).order_by(Event.seq))
        ).scalars()
    )
    leg_events: dict[str, list[Event]] = defaultdict(list)
    for ev in events:
        if ev.leg_id is not None:
            leg_events[ev.leg_id].append(ev)
    return IncidentBundle(incident, events, list(incident.legs), dict(leg_events))


async def _authorised_bundle(request: web.Request) -> IncidentBundle:
    incident_id = parse_incident_id(request)
    async with request.app[SERVICES].session_factory() as db:
        bundle = await load_incident(db, incident_id)
    if bundle is None:
        raise ApiError(404, "not_found", f"no incident with id {incident_id!r}")
    principal: Principal = request[PRINCIPAL]
    if isinstance(principal, DevicePrincipal) and bundle.incident.room_id != principal.room_id:
        raise ApiError(
            403,
            "wrong_room",
            f"this device token belongs to room {principal.room_code!r}: "
            f"incident {incident_id} is another room's",
        )
    return bundle


def seconds_to_accept(incident: Incident) -> float | None:
    if incident.accepted_at is None:
        return None
    return round((incident.accepted_at - incident.raised_at).total_seconds(), 3)


#: event data a room device may see; anything else (a radiologist's number or SIP address, SIP details) is
#: left out of the device's view. An allowlist, so that a new field is private until someone decides otherwise.
DEVICE_VISIBLE_DATA = frozenset(
    {
        "code",
        "severity",
        "room",
        "site",
        "tier",
        "person",
        "status",
        "cause",
        "reason",
        "method",
        "seconds_to_accept",
        "deadline",
    }
)


def event_json(ev: Event, *, for_device: bool) -> dict[str, Any]:
    data = ev.data
    if for_device:
        data = {k: v for k, v in data.items() if k in DEVICE_VISIBLE_DATA}
    return {
        "seq": ev.seq,
        "at": iso_ms(ev.at),
        "kind": ev.kind,
        "source": ev.source,
        "leg_id": ev.leg_id,
        "data": data,
    }


def leg_json(leg: CallLeg, events: list[Event], *, for_device: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": leg.id,
        "tier": leg.tier,
        "person": {"id": leg.person.id, "display_name": leg.person.display_name} if leg.person else None,
        "channel": leg.channel.value,
        "direction": leg.direction.value,
        "status": leg_status(events).value,
        "created_at": iso_ms(leg.created_at),
        "events": [event_json(ev, for_device=for_device) for ev in events],
    }
    if not for_device:  # a radiologist's number or SIP address is not the room's business
        data["address"] = leg.address
    return data


def incident_json(bundle: IncidentBundle, *, for_device: bool) -> dict[str, Any]:
    inc = bundle.incident
    to_accept = seconds_to_accept(inc)
    views = [
        LegView(
            leg.tier,
            leg.person.display_name if leg.person else None,
            leg_status(bundle.leg_events.get(leg.id, [])),
        )
        for leg in bundle.legs
    ]
    line = status_line(
        inc.state,
        legs=views,
        current_tier=inc.current_tier,
        accepted_by=inc.accepted_by.display_name if inc.accepted_by else None,
        seconds_to_accept=to_accept,
    )
    return {
        "id": inc.id,
        "code": inc.code,
        "state": inc.state.value,
        "severity": inc.severity.value,
        "room": {"id": inc.room.id, "code": inc.room.code, "name": inc.room.name},
        "site": {
            "id": inc.site.id,
            "code": inc.site.code,
            "name": inc.site.name,
            "timezone": inc.site.timezone,
        },
        "raised_at": iso_ms(inc.raised_at),
        "accepted_by": (
            {"id": inc.accepted_by.id, "display_name": inc.accepted_by.display_name}
            if inc.accepted_by
            else None
        ),
        "accepted_at": iso_ms(inc.accepted_at),
        "seconds_to_accept": to_accept,
        "ended_at": iso_ms(inc.ended_at),
        "current_tier": inc.current_tier,
        "status_line": {"text": line.text, "tone": line.tone},
        "timeline": [event_json(ev, for_device=for_device) for ev in bundle.events],
        "links": _links(inc.id),
    }


async def get_incident(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/incidents/{id}: state, people, times, status line and the timeline in sequence order."""
    bundle = await _authorised_bundle(request)
    return json_response(incident_json(bundle, for_device=isinstance(request[PRINCIPAL], DevicePrincipal)))


async def get_legs(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/incidents/{id}/legs: every call leg with its status derived from its events."""
    bundle = await _authorised_bundle(request)
    for_device = isinstance(request[PRINCIPAL], DevicePrincipal)
    return json_response(
        {
            "incident_id": bundle.incident.id,
            "legs": [
                leg_json(leg, bundle.leg_events.get(leg.id, []), for_device=for_device) for leg in bundle.legs
            ],
        }
    )


async def get_room(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/rooms/{code}: the room a device token belongs to (the room page checks its token)."""
    code = request.match_info["code"]
    principal = request[PRINCIPAL]
    if isinstance(principal, DevicePrincipal) and principal.room_code != code:
        raise ApiError(
            403, "wrong_room", f"this device token belongs to room {principal.room_code!r}, not {code[:40]!r}"
        )
    async with request.app[SERVICES].session_factory() as db:
        room = (
            await db.execute(sa.select(Room).where(Room.code == code).options(selectinload(Room.site)))
        ).scalar_one_or_none()
    if room is None:
        raise ApiError(404, "unknown_room", f"room {code[:40]!r} does not exist")
    return json_response(
        {
            "code": room.code,
            "name": room.name,
            "active": room.active,
            "site": {"code": room.site.code, "name": room.site.name, "timezone": room.site.timezone},
        }
    )


async def rotate_room_token(request: web.Request) -> web.StreamResponse:
    """POST /api/v1/rooms/{code}/device-token (admin): a new device token for the room, shown once.

    The old token stops working at once; only the new token's SHA-256 is stored. The change is an evidence
    event.
    """
    code = request.match_info["code"]
    principal = request[PRINCIPAL]
    assert isinstance(principal, StaffPrincipal)  # admin-only route
    services = request.app[SERVICES]
    token = new_device_token()
    async with services.session_factory() as db, db.begin():
        room = (await db.execute(sa.select(Room).where(Room.code == code))).scalar_one_or_none()
        if room is None:
            raise ApiError(404, "unknown_room", f"room {code[:40]!r} does not exist")
        room.device_token_hash = hash_device_token(token)
        await append_event(
            db,
            incident=None,
            leg_id=None,
            kind="directory.room_token_rotated",
            data={"room": room.code, "by": principal.username},
            clock=services.clock,
            source=EVENT_SOURCE,
        )
    log.info("device token of room %s rotated by %s", code, principal.username)
    return json_response({"room": code, "token": token, "page": f"/rooms/{code}?token={token}"})


ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec("POST", "/api/v1/incidents", create_incident, Access.device_only(), "api_incident_create"),
    RouteSpec("GET", "/api/v1/incidents/{id}", get_incident, Access.staff_or_device(), "api_incident"),
    RouteSpec("GET", "/api/v1/incidents/{id}/legs", get_legs, Access.staff_or_device(), "api_incident_legs"),
    RouteSpec("GET", "/api/v1/rooms/{code}", get_room, Access.staff_or_device(), "api_room"),
    RouteSpec(
        "POST",
        "/api/v1/rooms/{code}/device-token",
        rotate_room_token,
        Access.staff(Role.ADMIN),
        "api_room_token",
    ),
)
