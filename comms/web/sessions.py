"""Request authentication (session cookie or device bearer token) and the login/logout/me routes."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from aiohttp import web

from comms.db.events import append_event
from comms.db.models import Person, Room
from comms.security import check_password_or_dummy, hash_device_token, verify_device_token
from comms.web.auth import Access, DevicePrincipal, Principal, StaffPrincipal
from comms.web.context import (
    CODEC,
    PRINCIPAL,
    REVOCATIONS,
    SERVICES,
    SESSION_COOKIE,
    THROTTLE,
    ApiError,
    RouteSpec,
    WebServices,
    json_response,
)

log = logging.getLogger(__name__)

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="contrast-comms"'}
_MAX_USERNAME = 64
_MAX_PASSWORD = 1024


#: ``source`` of the evidence events the web app writes
EVENT_SOURCE = "web"


async def audit(services: WebServices, kind: str, data: dict[str, Any]) -> None:
    """Append an access/directory fact to the global evidence chain (its own short transaction)."""
    async with services.session_factory() as db, db.begin():
        await append_event(
            db, incident=None, leg_id=None, kind=kind, data=data, clock=services.clock, source=EVENT_SOURCE
        )


def _now_unix(request: web.Request) -> int:
    return int(request.app[SERVICES].clock.now().timestamp())


async def _device_principal(request: web.Request, header: str, access: Access) -> DevicePrincipal:
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "bad_authorization",
            f"Authorization header uses scheme {scheme[:20]!r}"
            + ("" if token else " with no credentials")
            + ": expected 'Bearer <room device token>'",
            headers=_BEARER_CHALLENGE,
        )
    if not access.device:
        raise ApiError(
            403,
            "device_not_allowed",
            f"{request.method} {request.path} needs {access.describe()}: a room device token was given",
        )
    digest = hash_device_token(token)
    async with request.app[SERVICES].session_factory() as db:
        room = (
            await db.execute(sa.select(Room).where(Room.device_token_hash == digest))
        ).scalar_one_or_none()
    if room is None or not verify_device_token(token, room.device_token_hash):
        raise ApiError(
            401,
            "bad_token",
            "the bearer token matches no room: expected the device token issued for a room",
            headers=_BEARER_CHALLENGE,
        )
    if not room.active:
        raise ApiError(403, "room_inactive", f"room {room.code!r} is deactivated: expected an active room")
    return DevicePrincipal(room_id=room.id, room_code=room.code, site_id=room.site_id)


async def staff_from_cookie(request: web.Request) -> StaffPrincipal | None:
    """The person behind the session cookie, or None (no cookie, forged, expired, revoked, inactive)."""
    value = request.cookies.get(SESSION_COOKIE)
    if not value:
        return None
    codec = request.app[CODEC]
    unverified = codec.parse(value)
    if unverified is None or request.app[REVOCATIONS].is_revoked(unverified.session_id):
        return None
    async with request.app[SERVICES].session_factory() as db:
        person = await db.get(Person, unverified.person_id)
    if person is None or not person.active or not person.password_hash:
        return None
    if not codec.verify(unverified, person.password_hash, _now_unix(request)):
        return None
    return StaffPrincipal(
        person_id=person.id,
        username=person.username,
        display_name=person.display_name,
        roles=person.role_set,
        session_id=unverified.session_id,
        expires_at=unverified.expires_at,
    )


def _check_origin(request: web.Request) -> None:
    """Cookie-authenticated writes must come from our pages (SameSite=Strict already; belt and braces)."""
    origin = request.headers.get("Origin")
    if origin is None or request.method in _SAFE_METHODS:
        return
    if origin == "null" or urlsplit(origin).netloc != request.host:
        raise ApiError(
            403, "bad_origin", f"request Origin {origin[:100]!r} is not this site: expected {request.host!r}"
        )


async def authenticate(request: web.Request, access: Access) -> Principal:
    """Who is calling, checked against ``access``; raises ApiError 401 (who?) or 403 (not allowed)."""
    header = request.headers.get("Authorization")
    if header is not None:
        return await _device_principal(request, header, access)
    staff = await staff_from_cookie(request)
    if staff is None:
        raise ApiError(
            401,
            "not_authenticated",
            f"{request.method} {request.path} needs {access.describe()}: "
            "got no valid session or bearer token",
            headers=_BEARER_CHALLENGE if access.device else None,
        )
    if not staff.roles & access.roles:
        have = ", ".join(sorted(r.value for r in staff.roles)) or "none"
        raise ApiError(
            403,
            "forbidden",
            f"{request.method} {request.path} needs {access.describe()}: your roles are {have}",
        )
    _check_origin(request)
    return staff


# ------------------------------------------------------------------------------------------------- handlers


def _safe_next(value: str | None) -> str:
    """Only a local absolute path may follow a login (no open redirect to another site)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/incidents"
    return value


async def _read_credentials(request: web.Request) -> tuple[str, str, str | None, bool]:
    """``(username, password, next, wants_json)`` from a JSON or form body."""
    ctype = request.content_type
    if ctype == "application/json":
        try:
            body: Any = json.loads(await request.text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, "bad_json", f"body is not valid JSON ({exc}): expected an object") from None
        if not isinstance(body, dict):
            raise ApiError(
                400,
                "bad_json",
                f"body is a JSON {type(body).__name__}: expected an object with username, password",
            )
        fields, wants_json = body, True
    elif ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        fields, wants_json = dict(await request.post()), False
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"login body has content type {ctype!r}: expected application/json or a form",
        )
    username, password, nxt = fields.get("username"), fields.get("password"), fields.get("next")
    missing = [n for n, val in (("username", username), ("password", password)) if not val]
    if missing:
        raise ApiError(
            422, "missing_field", f"login needs {' and '.join(missing)}: got an empty or absent value"
        )
    if not isinstance(username, str) or not isinstance(password, str):
        raise ApiError(422, "invalid", "username and password must be strings")
    if len(username) > _MAX_USERNAME or len(password) > _MAX_PASSWORD:
        raise ApiError(
            422,
            "invalid",
            f"username or password too long: expected at most {_MAX_USERNAME} and {_MAX_PASSWORD} characters",
        )
    return username.strip().lower(), password, nxt if isinstance(nxt, str) else None, wants_json


async def login(request: web.Request) -> web.StreamResponse:
    """POST /login: username + password (JSON or form) -> session cookie; throttled per username/address."""
    services = request.app[SERVICES]
    throttle = request.app[THROTTLE]
    _check_origin(request)  # no logging in from another site's form (login CSRF)
    username, password, nxt, wants_json = await _read_credentials(request)
    address = request.remote or "unknown"
    wait = throttle.retry_after(username, address, services.clock.monotonic())
    if wait is not None:
        seconds = max(1, int(wait + 0.999))
        log.warning("login throttled for username %r from %s for %d s", username, address, seconds)
        raise ApiError(
            429,
            "too_many_attempts",
            f"too many failed logins for this username or address: try again in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )
    async with services.session_factory() as db:
        person = (await db.execute(sa.select(Person).where(Person.username == username))).scalar_one_or_none()
    usable = person is not None and person.active and person.password_hash is not None
    stored = person.password_hash if usable and person is not None else None
    ok = await asyncio.get_running_loop().run_in_executor(
        None, functools.partial(check_password_or_dummy, stored, password, hasher=services.password_hasher)
    )
    if not ok or person is None or stored is None:
        throttle.failed(username, address, services.clock.monotonic())
        log.info("login failed for username %r from %s", username, address)
        await audit(services, "access.login_failed", {"username": username, "address": address})
        raise ApiError(
            401, "bad_credentials", "username or password is wrong: expected an active account's password"
        )
    throttle.succeeded(username, address)
    value, session_id, _expires = request.app[CODEC].issue(person.id, stored, _now_unix(request))
    log.info("login: %s (session %s…)", person.username, session_id[:6])
    await audit(
        services, "access.login", {"username": person.username, "address": address, "session": session_id[:8]}
    )
    target = _safe_next(nxt)
    response: web.StreamResponse
    if wants_json:
        response = json_response(
            {
                "person": {
                    "id": person.id,
                    "username": person.username,
                    "display_name": person.display_name,
                    "roles": sorted(r.value for r in person.role_set),
                },
                "next": target,
            }
        )
    else:
        response = web.Response(status=303, headers={"Location": target})
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=services.session_lifetime_s,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=services.cookie_secure,
    )
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    """POST /logout: revoke the session (if any) and clear the cookie."""
    staff = await staff_from_cookie(request)
    if staff is not None:
        request.app[REVOCATIONS].revoke(staff.session_id, staff.expires_at, _now_unix(request))
        log.info("logout: %s", staff.username)
        await audit(
            request.app[SERVICES],
            "access.logout",
            {
                "username": staff.username,
                "address": request.remote or "unknown",
                "session": staff.session_id[:8],
            },
        )
    response: web.StreamResponse
    if request.content_type == "application/json":
        response = json_response({"logged_out": staff is not None})
    else:
        response = web.Response(status=303, headers={"Location": "/login"})
    response.del_cookie(
        SESSION_COOKIE, path="/", samesite="Strict", secure=request.app[SERVICES].cookie_secure
    )
    return response


async def me(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/me: the logged-in person (or the room a device token belongs to)."""
    principal = request[PRINCIPAL]
    if isinstance(principal, DevicePrincipal):
        return json_response({"device": {"room": principal.room_code}})
    return json_response(
        {
            "person": {
                "id": principal.person_id,
                "username": principal.username,
                "display_name": principal.display_name,
                "roles": sorted(r.value for r in principal.roles),
            }
        }
    )


ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec("POST", "/login", login, Access.public(), "login"),
    RouteSpec("POST", "/logout", logout, Access.public(), "logout"),
    RouteSpec("GET", "/api/v1/me", me, Access.staff_or_device(), "me"),
)
