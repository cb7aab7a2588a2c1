"""Twilio Media Streams: a PSTN leg's audio bridged into the room through a bidirectional WebSocket.

An accepted Twilio call is connected with TwiML (built by the Twilio channel)::

    <Response><Connect><Stream url="wss://PUBLIC/twilio/media-stream">
      <Parameter name="incident" value="INCIDENT_ID"/><Parameter name="leg" value="LEG_ID"/>
    </Stream></Connect></Response>

Twilio opens the WebSocket with an ``X-Twilio-Signature`` over the ``wss://`` URL (no body parameters); it is
checked with ``RequestValidator`` against the configured *public* URL before the upgrade. Messages in:
``connected``, ``start`` (``streamSid``, ``customParameters``, ``mediaFormat`` audio/x-mulaw 8000),
``media`` (base64 µ-law, 20 ms), ``dtmf``, ``mark``, ``stop``; out: ``media`` with our 20 ms frames. Audio goes
through :meth:`media.gateway.MediaGateway.join_stream`; its supervision and evidence are the gateway's.
Mount :func:`media_stream_handler` on the Twilio webhook application (``comms.twilio_web``) at
``GET /twilio/media-stream``.
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

from media.errors import MediaError
from media.gateway import MediaGateway, StreamLeg

__all__ = ["PATH", "media_stream_handler"]

log = logging.getLogger(__name__)

PATH = "/twilio/media-stream"
MAX_QUEUED = 10  # frames (200 ms) waiting for the socket before the oldest are dropped


def media_stream_handler(
    gateway: MediaGateway, auth_token: str, public_base_url: str
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler for Twilio's WebSocket (signature checked against ``public_base_url``)."""
    validator = RequestValidator(auth_token)
    base = public_base_url.rstrip("/")
    ws_base = "wss://" + base.split("://", 1)[1] if "://" in base else base

    async def handler(request: web.Request) -> web.StreamResponse:
        signature = request.headers.get("X-Twilio-Signature", "")
        url = ws_base + request.rel_url.path_qs
        if not signature or not validator.validate(url, {}, signature):
            log.warning("Twilio media stream from %s refused: bad or missing signature", request.remote)
            return web.Response(status=403, text="forbidden")
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        await _serve(ws, gateway)
        return ws

    return handler


async def _serve(ws: web.WebSocketResponse, gateway: MediaGateway) -> None:
    outbox: asyncio.Queue[bytes] = asyncio.Queue()
    leg: StreamLeg | None = None
    incident = ""
    stream_sid = ""
    sender: asyncio.Task[None] | None = None

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

    reason = "socket closed"
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
                    incident = str(params.get("incident", ""))
                    try:
                        leg = gateway.join_stream(incident, stream_sid, send, leg_id=params.get("leg"))
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
    finally:
        if sender is not None:
            sender.cancel()
        if leg is not None:
            gateway.leave_stream(incident, leg, reason)
        await ws.close()
