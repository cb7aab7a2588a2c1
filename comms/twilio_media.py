"""Twilio Media Streams: a PSTN leg's audio bridged into the room through a bidirectional WebSocket.

An accepted Twilio call (or a technologist who dialled in on the Twilio number, bridged to a SIP radiologist) is
connected with TwiML built by :func:`escalation.twilio_streams.connect_stream`::

    <Response><Connect><Stream url="wss://PUBLIC/twilio/media-stream">
      <Parameter name="token" value="ONE-TIME-TOKEN"/>
    </Stream></Connect></Response>

Twilio opens the WebSocket with an ``X-Twilio-Signature`` over the ``wss://`` URL (no body parameters); it is
checked with ``RequestValidator`` against the configured *public* URL before the upgrade (the ``https://`` form
of the same URL is accepted too). That signature never changes for a given URL, so it cannot say which call a
socket belongs to: with ``grants`` (:class:`escalation.twilio_streams.StreamGrants`) the
``start`` message must carry a one-time ``token`` parameter issued for that CallSid, and the grant decides what
the stream is bridged to (the room, or a SIP leg); a stream without a valid grant is closed and reported through
``on_refused`` (a ``security.webhook_refused`` event). Messages in:
``connected``, ``start`` (``streamSid``, ``customParameters``, ``mediaFormat`` audio/x-mulaw 8000),
``media`` (base64 µ-law, 20 ms), ``dtmf``, ``mark``, ``stop``; out: ``media`` with our 20 ms frames. Audio goes
through the grant's ``attach`` (for the room: :meth:`media.gateway.MediaGateway.join_stream`, whose supervision
and evidence are the gateway's).
:func:`comms.twilio_web.build_twilio_app` mounts :func:`media_stream_handler` (with the grants) at
``GET /twilio/media-stream`` on the Twilio webhook listener: the URL we emit is ``wss://<public base>`` + that
path, so the reverse proxy must forward WebSocket upgrades for it to that listener.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web
from twilio.request_validator import RequestValidator

from escalation.twilio_streams import STREAM_PATH, StreamContext, StreamEndpoint, StreamGrants
from media.errors import MediaError

__all__ = ["PATH", "media_stream_handler"]

log = logging.getLogger(__name__)

PATH = STREAM_PATH
MAX_QUEUED = 10  # frames (200 ms) waiting for the socket before the oldest are dropped


Refused = Callable[[web.Request, str], Awaitable[None]]


def media_stream_handler(
    grants: StreamGrants,
    auth_token: str,
    public_base_url: str,
    *,
    on_refused: Refused | None = None,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler for Twilio's WebSocket (signature checked against ``public_base_url``; the stream
    is bridged to what the grant of its one-time token says)."""
    validator = RequestValidator(auth_token)
    base = public_base_url.rstrip("/")
    host = base.split("://", 1)[1] if "://" in base else base

    async def refuse(request: web.Request, reason: str) -> None:
        log.warning("Twilio media stream from %s refused: %s", request.remote, reason)
        if on_refused is not None:
            await on_refused(request, reason)

    async def handler(request: web.Request) -> web.StreamResponse:
        signature = request.headers.get("X-Twilio-Signature", "")
        urls = (f"wss://{host}{request.rel_url.path_qs}", f"https://{host}{request.rel_url.path_qs}")
        if not signature:
            await refuse(request, "missing X-Twilio-Signature")
            return web.Response(status=403, text="forbidden")
        if not any(validator.validate(url, {}, signature) for url in urls):
            await refuse(request, "bad X-Twilio-Signature")
            return web.Response(status=403, text="forbidden")
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        reason = await _serve(ws, grants)
        if reason is not None:
            await refuse(request, reason)
        return ws

    return handler


async def _close(ws: web.WebSocketResponse) -> None:
    await ws.close()


async def _serve(ws: web.WebSocketResponse, grants: StreamGrants) -> str | None:
    """Run one stream; returns why it was refused (a security matter), or None."""
    outbox: asyncio.Queue[bytes] = asyncio.Queue()
    leg: StreamEndpoint | None = None
    stream_sid = ""
    sender: asyncio.Task[None] | None = None
    refused: str | None = None
    ended = asyncio.Event()
    closing: list[asyncio.Task[None]] = []
    reason = "socket closed"

    def send(payload: bytes) -> None:
        while outbox.qsize() >= MAX_QUEUED:
            outbox.get_nowait()
        outbox.put_nowait(payload)

    async def pump() -> None:
        while True:
            payload = await outbox.get()
            message = {
                "event": "media",
                "streamSid": stream_sid,
                "media": {"payload": base64.b64encode(payload).decode("ascii")},
            }
            await ws.send_str(json.dumps(message))

    def end(why: str) -> None:
        nonlocal reason
        reason = why
        ended.set()
        if not closing:
            closing.append(asyncio.get_running_loop().create_task(_close(ws)))

    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                data: dict[str, Any] = json.loads(msg.data)
                event = data.get("event")
            except (ValueError, AttributeError):
                log.info("Twilio media stream sent a non-JSON message: ignored")
                continue
            match event:
                case "start" if leg is None:
                    start = data.get("start") or {}
                    stream_sid = str(start.get("streamSid") or data.get("streamSid") or "")
                    params = start.get("customParameters") or {}
                    call_sid = str(start.get("callSid") or "")
                    ctx = StreamContext(stream_sid, call_sid, send, end)
                    try:
                        grant = grants.claim(str(params.get("token", "")), call_sid)
                    except MediaError as exc:
                        refused = f"media stream {stream_sid} of call {call_sid}: {exc}"
                        reason = "refused"
                        break
                    try:
                        leg = grant.attach(ctx)
                    except MediaError as exc:
                        log.warning("Twilio stream %s not bridged: %s", stream_sid, exc)
                        reason = str(exc)
                        break
                    sender = asyncio.get_running_loop().create_task(pump())
                case "media" if leg is not None:
                    try:
                        leg.receive(base64.b64decode(data["media"]["payload"], validate=True))
                    except (KeyError, TypeError, binascii.Error) as exc:
                        log.info("Twilio stream %s: bad media message (%s)", stream_sid, exc)
                case "stop":
                    reason = "stop"
                    break
                case _:
                    pass  # connected, mark, dtmf: nothing to do for audio
            if ended.is_set():
                break
    finally:
        if sender is not None:
            sender.cancel()
        if leg is not None:
            leg.close(reason)
        await ws.close()
    return refused
