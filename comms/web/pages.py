"""HTML pages: the room button, the login form, the staff incident list and one incident's timeline.

Pages are plain HTML from ``templates/`` filled with :class:`string.Template` (every value escaped here),
plus small vanilla scripts in ``static/`` (no inline script: the CSP forbids it). The room page holds no data
server-side: its script authenticates with the room's device token against the JSON API.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
import zoneinfo
from functools import cache
from pathlib import Path
from string import Template

import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.orm import selectinload

from comms.db.models import Incident
from comms.db.types import Severity
from comms.web.api import incident_json, leg_json, load_incident, parse_incident_id, seconds_to_accept
from comms.web.auth import Access, StaffPrincipal
from comms.web.context import PRINCIPAL, SERVICES, ApiError, RouteSpec, iso_ms

TEMPLATES = Path(__file__).parent / "templates"
_ROOM_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}")
RECENT_LIMIT = 100


@cache
def _template(name: str) -> Template:
    return Template((TEMPLATES / name).read_text(encoding="utf-8"))


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _static(request: web.Request, name: str) -> str:
    """URL of a static file with its version hash (so a deploy never serves a stale script)."""
    return str(request.app.router["static"].url_for(filename=name))


def _page(
    request: web.Request,
    *,
    title: str,
    body: str,
    scripts: tuple[str, ...] = (),
    status: int = 200,
    body_class: str = "",
) -> web.Response:
    principal = request.get(PRINCIPAL)
    if isinstance(principal, StaffPrincipal):
        nav = _template("nav.html").substitute(name=_e(principal.display_name))
    else:
        nav = ""
    text = _template("base.html").substitute(
        title=_e(title),
        css=_e(_static(request, "style.css")),
        scripts="".join(f'<script src="{_e(_static(request, s))}" defer></script>' for s in scripts),
        nav=nav,
        body=body,
        body_class=_e(body_class),
    )
    return web.Response(
        text=text, status=status, content_type="text/html", headers={"Cache-Control": "no-store"}
    )


def _local(value: dt.datetime | None, tz_name: str) -> str:
    if value is None:
        return ""
    try:
        zone = zoneinfo.ZoneInfo(tz_name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        zone = zoneinfo.ZoneInfo("UTC")
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")


# ---------------------------------------------------------------------------------------------------- pages


async def room_page(request: web.Request) -> web.StreamResponse:
    """GET /rooms/{code}: the big button. A public shell: the token (``?token=`` once, then localStorage)
    does the rest from the browser."""
    code = request.match_info["code"]
    if not _ROOM_CODE.fullmatch(code):
        raise ApiError(
            404, "unknown_room", f"room code {code[:40]!r} is not a room code: expected e.g. 'CT-1'"
        )
    body = _template("room.html").substitute(
        code=_e(code),
        poll_ms=_e(request.app[SERVICES].poll_interval_ms),
        severities="".join(
            f'<label class="sev"><input type="radio" name="severity" value="{_e(s.value)}"'
            f"{' checked' if s is Severity.SEVERE else ''}><span>{_e(s.value.capitalize())}</span></label>"
            for s in (Severity.SEVERE, Severity.MODERATE, Severity.MILD, Severity.UNKNOWN)
        ),
    )
    return _page(
        request, title=f"Room {code}", body=body, scripts=("room.js", "room_media.js"), body_class="room"
    )


async def login_page(request: web.Request) -> web.StreamResponse:
    """GET /login: the login form (its script logs in through POST /login and follows ``next``)."""
    nxt = request.query.get("next", "/incidents")
    body = _template("login.html").substitute(next=_e(nxt))
    return _page(request, title="Log in", body=body, scripts=("login.js",))


async def root_page(request: web.Request) -> web.StreamResponse:
    """GET /: staff land on the incident list (anonymous browsers are sent to /login first)."""
    raise web.HTTPSeeOther(location="/incidents")


async def incidents_page(request: web.Request) -> web.StreamResponse:
    """GET /incidents: the most recent incidents, newest first."""
    async with request.app[SERVICES].session_factory() as db:
        rows = (
            await db.execute(
                sa.select(Incident)
                .order_by(Incident.raised_at.desc())
                .limit(RECENT_LIMIT)
                .options(
                    selectinload(Incident.room),
                    selectinload(Incident.site),
                    selectinload(Incident.accepted_by),
                )
            )
        ).scalars()
        items = []
        for inc in rows:
            to_accept = seconds_to_accept(inc)
            items.append(
                "<tr>"
                f'<td><a href="/incidents/{_e(inc.id)}">{_e(inc.code)}</a></td>'
                f'<td><time datetime="{_e(iso_ms(inc.raised_at))}">'
                f"{_e(_local(inc.raised_at, inc.site.timezone))}"
                "</time></td>"
                f"<td>{_e(inc.site.name)}</td><td>{_e(inc.room.code)}</td>"
                f'<td class="sev-{_e(inc.severity.value)}">{_e(inc.severity.value)}</td>'
                f'<td class="state-{_e(inc.state.value)}">{_e(inc.state.value)}</td>'
                f"<td>{_e(inc.accepted_by.display_name if inc.accepted_by else '')}</td>"
                f"<td>{'' if to_accept is None else f'{to_accept:.1f} s'}</td>"
                "</tr>"
            )
    body = _template("incidents.html").substitute(
        rows="".join(items) or '<tr><td colspan="8">No incidents yet.</td></tr>', limit=RECENT_LIMIT
    )
    return _page(request, title="Incidents", body=body)


async def incident_page(request: web.Request) -> web.StreamResponse:
    """GET /incidents/{id}: one incident, its legs and its timeline (refreshed by incident.js)."""
    incident_id = parse_incident_id(request)
    async with request.app[SERVICES].session_factory() as db:
        bundle = await load_incident(db, incident_id)
    if bundle is None:
        raise ApiError(404, "not_found", f"no incident with id {incident_id!r}")
    data = incident_json(bundle, for_device=False)
    inc = bundle.incident
    tz = inc.site.timezone
    legs = "".join(
        "<tr>"
        f"<td>{_e((leg['person'] or {}).get('display_name', ''))}</td>"
        f"<td>{_e('' if leg['tier'] is None else leg['tier'] + 1)}</td>"
        f"<td>{_e(leg['channel'])}</td><td>{_e(leg.get('address', ''))}</td>"
        f'<td class="leg-{_e(leg["status"])}">{_e(leg["status"])}</td>'
        "</tr>"
        for leg in (leg_json(leg, bundle.leg_events.get(leg.id, []), for_device=False) for leg in bundle.legs)
    )
    timeline = "".join(
        "<tr>"
        f"<td>{_e(ev.seq)}</td>"
        f'<td><time datetime="{_e(iso_ms(ev.at))}">{_e(iso_ms(ev.at))}</time></td>'
        f"<td>{_e(ev.kind)}</td><td>{_e(ev.source)}</td>"
        f"<td><code>{_e(json.dumps(ev.data, sort_keys=True))}</code></td>"
        "</tr>"
        for ev in bundle.events
    )
    body = _template("incident.html").substitute(
        id=_e(inc.id),
        code=_e(inc.code),
        state=_e(inc.state.value),
        severity=_e(inc.severity.value),
        room=_e(f"{inc.room.code} — {inc.room.name}"),
        site=_e(inc.site.name),
        raised=_e(_local(inc.raised_at, tz)),
        accepted=_e(
            f"{data['accepted_by']['display_name']} at {_local(inc.accepted_at, tz)} "
            f"({data['seconds_to_accept']:.1f} s)"
            if data["accepted_by"] and data["seconds_to_accept"] is not None
            else "—"
        ),
        status=_e(data["status_line"]["text"]),
        tone=_e(data["status_line"]["tone"]),
        legs=legs or '<tr><td colspan="5">No call legs yet.</td></tr>',
        timeline=timeline,
    )
    return _page(request, title=f"Incident {inc.code}", body=body, scripts=("incident.js",))


ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec("GET", "/", root_page, Access.staff(page=True), "root"),
    RouteSpec("GET", "/login", login_page, Access.public(page=True), "login_page"),
    RouteSpec("GET", "/rooms/{code}", room_page, Access.public(page=True), "room_page"),
    RouteSpec("GET", "/incidents", incidents_page, Access.staff(page=True), "incidents_page"),
    RouteSpec("GET", "/incidents/{id}", incident_page, Access.staff(page=True), "incident_page"),
)
