"""The aiohttp application: route table, JSON error middleware, access middleware, security headers.

Every route is declared once in :data:`ROUTES` with its :class:`~comms.web.auth.Access`; :func:`build_app`
registers exactly those routes (plus ``/static/``, declared public) and records each one's access in
``app[ROUTE_ACCESS]``. The access middleware refuses a matched route that has no entry there, and
``tests/web/test_routes.py`` walks the router so that an undeclared route fails the build.

Errors: every 4xx/5xx leaves as ``{"error": {"code": ..., "message": ...}}``. Bad input is an
:class:`ApiError` (400/401/403/404/409/413/415/422/429) raised by the handler; anything unexpected is logged
with the request and answered 500 without detail; the server goes on.
"""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web
from yarl import URL

from comms.errors import ValidationError
from comms.web import api, pages, sessions
from comms.web.auth import Access, LoginThrottle, SessionCodec, SessionRevocations
from comms.web.context import (
    CODEC,
    PRINCIPAL,
    REVOCATIONS,
    ROUTE_ACCESS,
    SERVICES,
    THROTTLE,
    ApiError,
    Handler,
    RouteSpec,
    WebServices,
)

__all__ = ["ROUTES", "STATIC_ACCESS", "WebServices", "add_route", "build_app", "undeclared_routes"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
STATIC_ACCESS = Access.public()

ROUTES: tuple[RouteSpec, ...] = (*sessions.ROUTES, *api.ROUTES, *pages.ROUTES)

_REASON_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    431: "headers_too_large",
}
_PASS_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate", "Location")

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"code": code, "message": message}}
    hdrs = {"Cache-Control": "no-store", **(headers or {})}
    return web.json_response(body, status=status, headers=hdrs)


def _http_exception_message(exc: web.HTTPException, request: web.Request) -> str:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"method {request.method} is not allowed on {request.path}: expected one of {allowed}"
    if isinstance(exc, web.HTTPNotFound) and exc.text in (None, "", "404: Not Found"):
        return f"no such resource: {request.method} {request.path}"
    text = (exc.text or exc.reason or "").strip()
    return text or f"{exc.status} {exc.reason}"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into the JSON error shape with the right status; never let bad input become a 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    except ValidationError as exc:
        return error_response(422, "invalid", str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {h: exc.headers[h] for h in _PASS_HEADERS if h in exc.headers}
        code = _REASON_CODES.get(exc.status, "http_error" if exc.status < 500 else "server_error")
        return error_response(exc.status, code, _http_exception_message(exc, request), headers)
    except Exception:
        log.exception("unhandled error answering %s %s", request.method, request.path)
        return error_response(
            500, "internal", "the server failed to answer this request; the failure is logged with its time"
        )


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate and authorise against the matched route's declared :class:`Access` (fail closed)."""
    match_info = request.match_info
    resource = match_info.route.resource
    if match_info.http_exception is not None or resource is None:
        return await handler(request)  # raises the router's 404/405
    access = request.app[ROUTE_ACCESS].get((match_info.route.method, resource.canonical))
    if access is None:
        log.error(
            "route %s %s has no access declaration: refused", match_info.route.method, resource.canonical
        )
        raise ApiError(403, "undeclared_route", f"{request.method} {resource.canonical} declares no access")
    if not access.is_public:
        try:
            request[PRINCIPAL] = await sessions.authenticate(request, access)
        except ApiError as exc:
            if access.page and exc.status == 401:
                raise web.HTTPSeeOther(location=URL("/login").with_query(next=request.path_qs)) from None
            raise
    return await handler(request)


@web.middleware
async def headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # redirects pass through here
        for name, value in _SECURITY_HEADERS.items():
            exc.headers.setdefault(name, value)
        raise
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def add_route(app: web.Application, spec: RouteSpec) -> None:
    """Register ``spec`` on ``app`` with its access declaration (for routes added outside :data:`ROUTES`)."""
    route = app.router.add_route(spec.method, spec.path, spec.handler, name=spec.name)
    key = (route.method, route.resource.canonical if route.resource else spec.path)
    access = app[ROUTE_ACCESS]
    if key in access:
        raise ValueError(f"route {spec.method} {spec.path} is declared twice")
    access[key] = spec.access


def undeclared_routes(app: web.Application) -> list[str]:
    """Every registered route without an access declaration, as ``"METHOD /path"`` (should be empty)."""
    access = app[ROUTE_ACCESS]
    missing = []
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else "<no resource>"
        if (route.method, canonical) not in access:
            missing.append(f"{route.method} {canonical}")
    return missing


async def _refuse_undeclared(app: web.Application) -> None:
    missing = undeclared_routes(app)
    if missing:
        raise RuntimeError(f"routes without an access declaration: {missing}; expected every route declared")


def build_app(services: WebServices) -> web.Application:
    """The web application for ``services``: pages, the JSON API and login, every route access-checked."""
    app = web.Application(
        middlewares=[headers_middleware, error_middleware, access_middleware],
        client_max_size=services.max_body_bytes,
    )
    app[SERVICES] = services
    app[CODEC] = SessionCodec(services.session_secret, services.session_lifetime_s)
    app[REVOCATIONS] = SessionRevocations()
    app[THROTTLE] = LoginThrottle(services.throttle)
    app[ROUTE_ACCESS] = {}
    for spec in ROUTES:
        add_route(app, spec)
    static = app.router.add_static("/static/", STATIC_DIR, name="static", append_version=True)
    for route in static:
        app[ROUTE_ACCESS][(route.method, static.canonical)] = STATIC_ACCESS
    # the server refuses to start with an undeclared route (someone added one straight to app.router)
    app.on_startup.append(_refuse_undeclared)
    return app
