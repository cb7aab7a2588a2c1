"""What every web module shares: the services the app is built from, typed app/request keys, and ApiError."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from argon2 import PasswordHasher
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comms.clock import UTC, Clock
from comms.security import DEFAULT_HASHER
from comms.web.auth import (
    Access,
    LoginThrottle,
    Principal,
    SessionCodec,
    SessionRevocations,
    ThrottlePolicy,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class IncidentRaiser(Protocol):
    """What the web needs from the escalation runner (``escalation.runner.EscalationRunner``)."""

    async def raise_incident(self, *, room_code: str, severity: str, source: str) -> str:
        """Create an incident and start paging; return its id. ValidationError for a bad room/severity."""
        ...


@dataclass(frozen=True)
class WebServices:
    """Everything :func:`comms.web.app.build_app` needs; the composition root fills it in."""

    session_factory: async_sessionmaker[AsyncSession]
    clock: Clock
    runner: IncidentRaiser
    #: HMAC key for session cookies: at least 32 random bytes, kept secret, stable across restarts
    session_secret: bytes
    #: mark cookies Secure (only sent over HTTPS); False only for plain-HTTP development and tests
    cookie_secure: bool = True
    session_lifetime_s: int = 12 * 3600
    throttle: ThrottlePolicy = field(default_factory=ThrottlePolicy)
    password_hasher: PasswordHasher = DEFAULT_HASHER
    #: how often the room page polls its incident
    poll_interval_ms: int = 500
    max_body_bytes: int = 64 * 1024


@dataclass(frozen=True)
class RouteSpec:
    """One row of the route table: every route names who may call it."""

    method: str
    path: str
    handler: Handler
    access: Access
    name: str


SERVICES = web.AppKey("services", WebServices)
CODEC = web.AppKey("session_codec", SessionCodec)
REVOCATIONS = web.AppKey("session_revocations", SessionRevocations)
THROTTLE = web.AppKey("login_throttle", LoginThrottle)
#: (method, resource canonical path) -> Access, for every route the app registered
ROUTE_ACCESS = web.AppKey("route_access", dict[tuple[str, str], Access])

PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")

SESSION_COOKIE = "comms_session"


class ApiError(Exception):
    """Answered as ``{"error": {"code", "message"}}`` with ``status``; the message names expected and seen."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def iso_ms(value: dt.datetime | None) -> str | None:
    """``2026-01-05T14:00:07.412Z``: aware UTC with milliseconds, as every API time is rendered."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})
