"""The Twilio webhooks as one aiohttp application: TwiML fetch, Gather action, call status, SMS status, inbound SMS.

Every request is checked with ``twilio.request_validator.RequestValidator`` against the configured *public*
URL (``public_base_url`` + the path and query we were called with), never the URL a reverse proxy shows us:
Twilio signs what it called. A missing or bad ``X-Twilio-Signature`` is answered 403 and recorded as a
``security.webhook_refused`` event (global chain) with the path, the peer address and the reason; the body is
not parsed further. Handlers do database writes only (no outbound HTTP), so they answer in milliseconds, far
inside Twilio's 15 s limit.

Routes (relative to the public base URL; the proxy must forward them with the same path)::

    POST /twilio/voice/{leg_id}          TwiML for an answered alert call
    POST /twilio/gather/{leg_id}?turn=N  the Gather action of turn N
    POST /twilio/call-status/{leg_id}    call status callbacks
    POST /twilio/sms-status/{leg_id}     message status callbacks
    POST /twilio/sms                     inbound SMS (configure it on the Twilio number)
    POST /twilio/dialin                  an inbound call to the dial-in number (its voice URL)
    POST /twilio/dialin/gather/{sid}?turn=N  the dial-in menu's Gather action
    POST /twilio/dialin/hold/{sid}?n=K   a supervised hold's Redirect
    POST /twilio/dialin/status           the dial-in number's call status callback
    POST /twilio/dialin/conference/{sid} conference participant callbacks (a caller with a Twilio radiologist)
    GET  /twilio/media-stream            the Media Streams WebSocket (:mod:`comms.twilio_media`)

The application runs on its own listener (it is not behind the staff session middleware of
:mod:`comms.web.app`: Twilio authenticates by signature, not by cookie).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from multidict import MultiDict
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from twilio.request_validator import RequestValidator

from comms import twilio_media
from comms.clock import Clock
from comms.db.events import append_event
from escalation.twilio_channel import TwilioSettings, TwilioSmsChannel, TwilioVoiceChannel
from escalation.twilio_dialin import TwilioDialIn
from escalation.twilio_streams import StreamGrants

log = logging.getLogger(__name__)

TWIML = "text/xml"
SECURITY_EVENT = "security.webhook_refused"

Handler = Callable[[web.Request, MultiDict[str]], Awaitable[web.StreamResponse]]


def build_twilio_app(
    settings: TwilioSettings,
    *,
    sessions: async_sessionmaker[AsyncSession],
    clock: Clock,
    node_id: str,
    voice: TwilioVoiceChannel | None,
    sms: TwilioSmsChannel | None,
    dialin: TwilioDialIn | None = None,
    grants: StreamGrants | None = None,
) -> web.Application:
    """The webhook application for ``voice``, ``sms`` and ``dialin`` (each may be None: its routes answer 404);
    with ``grants``, also the Media Streams WebSocket (each stream needs a token one of them grants)."""
    validator = RequestValidator(settings.auth_token)
    base = settings.public_base_url.rstrip("/")

    async def record_refusal(request: web.Request, reason: str) -> None:
        peer = request.remote or ""
        log.warning("Twilio webhook %s %s from %s refused: %s", request.method, request.path, peer, reason)
        async with sessions() as s, s.begin():
            await append_event(
                s,
                incident=None,
                leg_id=None,
                kind=SECURITY_EVENT,
                data={"path": request.path, "method": request.method, "peer": peer, "reason": reason},
                clock=clock,
                source=node_id,
            )

    async def refuse(request: web.Request, reason: str) -> web.Response:
        await record_refusal(request, reason)
        return web.Response(status=403, text="forbidden")

    def signed(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def checked(request: web.Request) -> web.StreamResponse:
            signature = request.headers.get("X-Twilio-Signature")
            if not signature:
                return await refuse(request, "missing X-Twilio-Signature")
            if request.content_type not in ("application/x-www-form-urlencoded", ""):
                return await refuse(request, f"unexpected content type {request.content_type}")
            form = MultiDict((k, v) for k, v in (await request.post()).items() if isinstance(v, str))
            url = base + request.rel_url.path_qs
            if not validator.validate(url, form, signature):
                return await refuse(request, "bad X-Twilio-Signature")
            return await handler(request, form)

        return checked

    def twiml(body: str) -> web.Response:
        return web.Response(text=body, content_type=TWIML)

    def voice_channel() -> TwilioVoiceChannel:
        if voice is None:
            raise web.HTTPNotFound(text="no Twilio voice channel here")
        return voice

    def sms_channel() -> TwilioSmsChannel:
        if sms is None:
            raise web.HTTPNotFound(text="no Twilio SMS channel here")
        return sms

    async def on_voice(request: web.Request, form: MultiDict[str]) -> web.StreamResponse:
        return twiml(await voice_channel().voice(request.match_info["leg_id"], form))

    async def on_gather(request: web.Request, form: MultiDict[str]) -> web.StreamResponse:
        try:
            turn = int(request.query.get("turn", ""))
        except ValueError:
            raise web.HTTPBadRequest(text="turn must be an integer") from None
        return twiml(await voice_channel().gather(request.match_info["leg_id"], turn, form))

    async def on_call_status(request: web.Request, form: MultiDict[str]) -> web.StreamResponse:
        await voice_channel().status(request.match_info["leg_id"], form)
        return web.Response(status=204)

    async def on_sms_status(request: web.Request, form: MultiDict[str]) -> web.StreamResponse:
        await sms_channel().status(request.match_info["leg_id"], form)
        return web.Response(status=204)

    async def on_sms(request: web.Request, form: MultiDict[str]) -> web.StreamResponse:
        return twiml(await sms_channel().inbound(form))

    def dialin_service() -> TwilioDialIn:
        if dialin is None:
            raise web.HTTPNotFound(text="no Twilio dial-in here")
        return dialin

    async def on_dialin(request: web.Request, form: MultiDict[str]) -> web.StreamResponse:
        return twiml(await dialin_service().incoming(form))

    async def on_dialin_gather(request: web.Request, form: MultiDict[str]) -> web.StreamResponse:
        try:
            turn = int(request.query.get("turn", ""))
        except ValueError:
            raise web.HTTPBadRequest(text="turn must be an integer") from None
        return twiml(await dialin_service().gather(request.match_info["sid"], turn, form))

    async def on_dialin_hold(request: web.Request, form: MultiDict[str]) -> web.StreamResponse:
        return twiml(await dialin_service().hold(request.match_info["sid"], form))

    async def on_dialin_status(request: web.Request, form: MultiDict[str]) -> web.StreamResponse:
        await dialin_service().status(form)
        return web.Response(status=204)

    async def on_dialin_conference(request: web.Request, form: MultiDict[str]) -> web.StreamResponse:
        await dialin_service().conference(request.match_info["sid"], form)
        return web.Response(status=204)

    app = web.Application(client_max_size=64 * 1024)
    app.router.add_post("/twilio/voice/{leg_id}", signed(on_voice))
    app.router.add_post("/twilio/gather/{leg_id}", signed(on_gather))
    app.router.add_post("/twilio/call-status/{leg_id}", signed(on_call_status))
    app.router.add_post("/twilio/sms-status/{leg_id}", signed(on_sms_status))
    app.router.add_post("/twilio/sms", signed(on_sms))
    app.router.add_post("/twilio/dialin", signed(on_dialin))
    app.router.add_post("/twilio/dialin/gather/{sid}", signed(on_dialin_gather))
    app.router.add_post("/twilio/dialin/hold/{sid}", signed(on_dialin_hold))
    app.router.add_post("/twilio/dialin/status", signed(on_dialin_status))
    app.router.add_post("/twilio/dialin/conference/{sid}", signed(on_dialin_conference))
    if grants is not None:
        app.router.add_get(
            twilio_media.PATH,
            twilio_media.media_stream_handler(
                grants, settings.auth_token, settings.public_base_url, on_refused=record_refusal
            ),
        )
    return app
