"""Our UA against the pjsua2 reference softphone (an independent PJSIP stack), both ways, both DTMF methods."""

from __future__ import annotations

import asyncio
import math
import struct
import wave
from pathlib import Path
from typing import Any, Literal

import pytest

from sip.auth import Credentials, DigestServer
from sip.ua import CallAnswered, CallEnded, CallRinging, DtmfReceived, UserAgent
from tests.interop.conftest import Inbox, UaFactory, event, ring_and_answer, uri_of

pytestmark = [pytest.mark.peer, pytest.mark.timeout(20)]
FROM = "sip:comms@127.0.0.1"
Method = Literal["rfc4733", "info"]


@pytest.mark.parametrize("method", ["rfc4733", "info"])
async def test_softphone_calls_us_and_presses_1(ua: UserAgent, softphone: Any, method: Method) -> None:
    from sip.softphone import Answered, Behaviour, Disconnected

    inbox = Inbox(ring_and_answer)
    ua.on_incoming(inbox)
    handle = await softphone.dial(uri_of(ua), behaviour=Behaviour(press="1", press_after=0.3, dtmf=method))
    call = await inbox.next()
    await softphone.wait_for(Answered, call=handle)
    digit = await event(call, DtmfReceived)
    assert (digit.digit, digit.method) == ("1", method)
    await call.hangup()
    assert (await softphone.wait_for(Disconnected, call=handle)).status == 200


@pytest.mark.parametrize(("method", "transport"), [("rfc4733", "UDP"), ("info", "UDP"), ("info", "TCP")])
async def test_we_call_softphone_and_press_it_answers_with_a_digit(
    ua: UserAgent, softphone: Any, method: Method, transport: str
) -> None:
    from sip.softphone import Behaviour, Disconnected, IncomingCall
    from sip.softphone import DtmfReceived as PhoneDtmf

    softphone.set_behaviour(Behaviour(answer_after=0.2, press="2", press_after=0.3, dtmf=method))
    call = await ua.dial(softphone.uri(transport.lower()), from_uri=FROM)
    await event(call, CallAnswered)
    incoming = await softphone.wait_for(IncomingCall)
    assert "comms@127.0.0.1" in incoming.remote_uri
    await call.send_dtmf("1", method)
    received = await softphone.wait_for(PhoneDtmf, call=incoming.call)
    assert (received.digit, received.method) == ("1", method)
    digit = await event(call, DtmfReceived)
    assert (digit.digit, digit.method) == ("2", method)
    await call.hangup()
    assert (await softphone.wait_for(Disconnected, call=incoming.call)).status == 200


@pytest.mark.parametrize("status", [486, 603])
async def test_softphone_rejects_us(ua: UserAgent, softphone: Any, status: int) -> None:
    from sip.softphone import Behaviour

    softphone.set_behaviour(Behaviour(reject=status))
    call = await ua.dial(softphone.uri(), from_uri=FROM)
    ended = await call.wait_ended()
    assert (ended.status, ended.by) == (status, "remote")


async def test_we_cancel_a_softphone_that_never_answers(ua: UserAgent, softphone: Any) -> None:
    from sip.softphone import Behaviour, Disconnected

    softphone.set_behaviour(Behaviour(answer_after=None))
    call = await ua.dial(softphone.uri(), from_uri=FROM, ring_timeout=1.0)
    assert (await event(call, CallRinging)).status == 180
    ended: CallEnded = await call.wait_ended()
    assert ended.status == 487
    assert (await softphone.wait_for(Disconnected)).status == 487


async def test_softphone_hears_what_we_play(ua: UserAgent, softphone: Any, tmp_path: Path) -> None:
    from sip.softphone import Behaviour, RecordingClosed

    tone = tmp_path / "tone.wav"
    _write_tone(tone, seconds=1.0)
    softphone.set_behaviour(Behaviour(answer_after=0.0, record_dir=tmp_path))
    call = await ua.dial(softphone.uri(), from_uri=FROM)
    await event(call, CallAnswered)
    await call.play(tone)
    await call.hangup()
    recording = await softphone.wait_for(RecordingClosed)
    assert _rms(recording.path) > 1000, "the softphone recorded (near) silence"


async def test_we_hear_what_the_softphone_plays(ua: UserAgent, softphone: Any, tmp_path: Path) -> None:
    from sip.softphone import Behaviour

    tone = tmp_path / "tone.wav"
    _write_tone(tone, seconds=3.0)
    inbox = Inbox(ring_and_answer)
    ua.on_incoming(inbox)
    await softphone.dial(uri_of(ua), behaviour=Behaviour(play=tone, hangup_after=2.0))
    call = await inbox.next()
    await event(call, CallAnswered)
    await asyncio.sleep(1.0)
    assert call.media is not None
    level = call.media.energy_dbfs(0.5)
    assert level > -20.0, f"we received {level:.1f} dBFS from a -8.7 dBFS tone"
    assert call.media.stats.packets_received > 25
    await call.wait_ended()


async def test_softphone_answers_our_digest_challenge(make_ua: UaFactory) -> None:
    pytest.importorskip("pjsua2")
    from sip.softphone import Answered, Softphone, SoftphoneConfig

    ua = await make_ua()
    ua.require_auth(DigestServer("comms.test", {"phone": "pw-phone"}.get, secret=b"0123456789abcdef0123"))
    inbox = Inbox(ring_and_answer)
    ua.on_incoming(inbox)
    async with Softphone() as phone:
        await phone.start(SoftphoneConfig(username="phone", password="pw-phone"))
        handle = await phone.dial(uri_of(ua))
        await phone.wait_for(Answered, call=handle)
        call = await inbox.next()
        await call.hangup()


async def test_we_answer_no_challenge_from_a_softphone_with_credentials(
    ua: UserAgent, softphone: Any
) -> None:
    # credentials offered but never asked for: the call goes through unchanged
    call = await ua.dial(softphone.uri(), from_uri=FROM, credentials=Credentials("x", "y"))
    await event(call, CallAnswered)
    await call.hangup()


def _write_tone(path: Path, seconds: float, hz: float = 440.0) -> None:
    rate = 8000
    frames = b"".join(
        struct.pack("<h", int(12000 * math.sin(2 * math.pi * hz * n / rate)))
        for n in range(int(rate * seconds))
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)


def _rms(path: Path) -> float:
    with wave.open(str(path), "rb") as recorded:
        raw = recorded.readframes(recorded.getnframes())
    samples = struct.unpack(f"<{len(raw) // 2}h", raw)
    loud = sorted(abs(s) for s in samples)[len(samples) // 2 :]  # the louder half: skip the silent lead-in
    return math.sqrt(sum(s * s for s in loud) / max(1, len(loud)))
