"""A PSTN leg over a Twilio Media Streams WebSocket (a signed fake Twilio client on loopback) bridged to a room."""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import AsyncIterator

import numpy as np
import pytest
from aiohttp import ClientSession, WSServerHandshakeError, web
from twilio.request_validator import RequestValidator

from comms.clock import SystemClock
from comms.twilio_media import PATH, media_stream_handler
from escalation.twilio_streams import StreamGrants, gateway_attach
from media import audio
from media.gateway import MediaGateway
from tests.gateway.support import AiortcRoom
from tests.support import until

TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC = "https://comms.example.org"


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, MediaGateway, StreamGrants]]:
    clock = SystemClock()
    gw = MediaGateway(clock)
    grants = StreamGrants(clock)
    app = web.Application()
    app.router.add_get(PATH, media_stream_handler(grants, TOKEN, PUBLIC))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"ws://127.0.0.1:{port}{PATH}", gw, grants
    await gw.close()
    await runner.cleanup()


async def test_twilio_stream_hears_the_room_and_is_heard(
    served: tuple[str, MediaGateway, StreamGrants],
) -> None:
    url, gw, grants = served
    room = AiortcRoom(freq=440.0)
    await room.answer(await gw.room_offer("CT-1", await room.offer()))
    await until(lambda: gw.rooms["CT-1"].session.state == "connected")
    gw.open_incident("inc-t", "CT-1")
    token = grants.issue(
        incident_id="inc-t",
        leg_id="L9",
        call_sid="CA1",
        purpose="room",
        attach=gateway_attach(gw, "inc-t", "L9"),
    )
    signature = RequestValidator(TOKEN).compute_signature(f"wss://comms.example.org{PATH}", {})
    levels: list[float] = []
    async with ClientSession() as http, http.ws_connect(url, headers={"X-Twilio-Signature": signature}) as ws:
        await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        start = {
            "streamSid": "MZ1",
            "callSid": "CA1",
            "customParameters": {"token": token},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        await ws.send_str(
            json.dumps({"event": "start", "sequenceNumber": "1", "start": start, "streamSid": "MZ1"})
        )

        async def talk() -> None:
            for k in range(150):  # 3 s of a 700 Hz tone, paced like Twilio
                t = (np.arange(160) + k * 160) / 8000
                pcm = (np.sin(2 * math.pi * 700 * t) * 0.5 * 32767).astype(np.int16)
                payload = base64.b64encode(audio.encode("PCMU", pcm)).decode()
                await ws.send_str(
                    json.dumps({"event": "media", "streamSid": "MZ1", "media": {"payload": payload}})
                )
                await asyncio.sleep(0.02)

        async def listen() -> None:
            async for msg in ws:
                data = json.loads(msg.data)
                assert data["event"] == "media" and data["streamSid"] == "MZ1"
                pcm = audio.decode("PCMU", base64.b64decode(data["media"]["payload"]))
                levels.append(audio.energy_dbfs(pcm))
                if len(levels) > 100:
                    return

        talker = asyncio.get_running_loop().create_task(talk())
        await asyncio.wait_for(listen(), 10)
        await until(lambda: room.listener is not None and room.listener.dbfs() > -25.0)
        talker.cancel()
        await ws.send_str(json.dumps({"event": "stop", "streamSid": "MZ1"}))
    assert max(levels[-50:]) > -20.0  # the PSTN leg hears the room's tone
    kinds = [e.kind for e in gw.history]
    assert "media.phone_joined" in kinds
    await until(lambda: any(e.kind == "media.phone_left" for e in gw.history))
    await room.close()


async def test_unsigned_stream_is_refused(served: tuple[str, MediaGateway, StreamGrants]) -> None:
    url, _, _ = served
    async with ClientSession() as http:
        with pytest.raises(WSServerHandshakeError) as info:
            await http.ws_connect(url, headers={"X-Twilio-Signature": "bogus"})
    assert info.value.status == 403
