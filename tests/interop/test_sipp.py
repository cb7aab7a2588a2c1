"""Our UA against SIPp (Debian 3.6.1) running the scenarios of tests/data/sipp (each proven in
tests/peers/test_harness.py against another real peer)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sip.auth import Credentials, DigestServer
from sip.ua import CallAnswered, CallEnded, CallRinging, DtmfReceived, UserAgent
from tests.interop.conftest import Inbox, event, ring_and_answer, ring_only, uri_of
from tests.peers.sipp import Sipp

pytestmark = [pytest.mark.peer, pytest.mark.timeout(20)]
SippFactory = Callable[..., Sipp]
FROM = "sip:comms@127.0.0.1"


# -- SIPp calls us ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
async def test_sipp_calls_us_and_hangs_up(ua: UserAgent, sipp: SippFactory, transport: str) -> None:
    inbox = Inbox(ring_and_answer)
    ua.on_incoming(inbox)
    _, port = ua.address(transport)
    uac = sipp("uac_call.xml", remote=f"127.0.0.1:{port}", transport="t1" if transport == "TCP" else "u1")
    await uac.start()
    result = await uac.wait()
    assert result.ok, result.report()
    call = await inbox.next()
    await event(call, CallAnswered)
    ended = await call.wait_ended()
    assert ended.by == "remote"


async def test_sipp_cancels_while_we_ring(ua: UserAgent, sipp: SippFactory) -> None:
    inbox = Inbox(ring_only)
    ua.on_incoming(inbox)
    uac = sipp("uac_cancel.xml", remote=f"127.0.0.1:{ua.address('UDP')[1]}")
    await uac.start()
    result = await uac.wait()
    assert result.ok, result.report()
    ended = await (await inbox.next()).wait_ended()
    assert (ended.status, ended.by) == (487, "remote")


@pytest.mark.parametrize(("scenario", "method"), [("uac_dtmf2833.xml", "rfc4733"), ("uac_info.xml", "info")])
async def test_sipp_presses_1_at_us(ua: UserAgent, sipp: SippFactory, scenario: str, method: str) -> None:
    inbox = Inbox(ring_and_answer)
    ua.on_incoming(inbox)
    uac = sipp(scenario, remote=f"127.0.0.1:{ua.address('UDP')[1]}")
    await uac.start()
    call = await inbox.next()
    digit = await event(call, DtmfReceived, within=8)
    assert (digit.digit, digit.method) == ("1", method)
    result = await uac.wait()
    assert result.ok, result.report()


def md5_only_server() -> DigestServer:
    # SIPp 3.6 answers only the first challenge and aborts the call ("createAuthHeader: authentication must use
    # MD5 or AKAv1-MD5") when that one is SHA-256, so it gets an MD5-only challenge here.
    return DigestServer(
        "comms.test", {"sipp": "pw-sipp"}.get, secret=b"0123456789abcdef0123", algorithms=("MD5",)
    )


async def test_sipp_answers_our_digest_challenge(ua: UserAgent, sipp: SippFactory) -> None:
    ua.require_auth(md5_only_server())
    inbox = Inbox(ring_and_answer)
    ua.on_incoming(inbox)
    uac = sipp("uac_call_digest.xml", remote=f"127.0.0.1:{ua.address('UDP')[1]}", auth=("sipp", "pw-sipp"))
    await uac.start()
    result = await uac.wait()
    assert result.ok, result.report()
    assert "WWW-Authenticate: Digest" in result.messages
    call = await inbox.next()
    await event(call, CallAnswered)


async def test_sipp_with_a_wrong_password_gets_no_call(ua: UserAgent, sipp: SippFactory) -> None:
    ua.require_auth(md5_only_server())
    inbox = Inbox(ring_and_answer)
    ua.on_incoming(inbox)
    uac = sipp(
        "uac_call_digest.xml", remote=f"127.0.0.1:{ua.address('UDP')[1]}", auth=("sipp", "nope"), timeout=5
    )
    await uac.start()
    result = await uac.wait()
    assert result.failed == 1, result.report()
    assert inbox.calls.empty()


# -- we call SIPp -------------------------------------------------------------------------------------------------


async def test_we_call_sipp_and_hang_up(ua: UserAgent, sipp: SippFactory) -> None:
    uas = sipp("uas_answer.xml")
    await uas.start()
    call = await ua.dial(uas.uri(), from_uri=FROM)
    assert (await event(call, CallRinging)).status == 180
    await event(call, CallAnswered)
    await call.hangup()
    result = await uas.wait()
    assert result.ok, result.report()


async def test_we_get_busy_from_sipp(ua: UserAgent, sipp: SippFactory) -> None:
    uas = sipp("uas_busy.xml")
    await uas.start()
    call = await ua.dial(uas.uri(), from_uri=FROM)
    ended = await call.wait_ended()
    assert (ended.status, ended.by) == (486, "remote")
    result = await uas.wait()
    assert result.ok, result.report()


async def test_we_cancel_when_sipp_rings_too_long(ua: UserAgent, sipp: SippFactory) -> None:
    uas = sipp("uas_ring_no_answer.xml")
    await uas.start()
    call = await ua.dial(uas.uri(), from_uri=FROM, ring_timeout=1.0)
    assert (await event(call, CallRinging)).status == 180
    ended = await call.wait_ended()
    assert ended.status == 487
    assert ended.by in ("timeout", "local")
    result = await uas.wait()
    assert result.ok, result.report()


@pytest.mark.parametrize(
    ("scenario", "digit", "method"),
    [
        ("uas_answer_dtmf2833.xml", "1", "rfc4733"),
        ("uas_answer_info.xml", "1", "info"),
        ("uas_decline.xml", "2", "rfc4733"),
    ],
)
async def test_sipp_answers_and_presses(
    ua: UserAgent, sipp: SippFactory, scenario: str, digit: str, method: str
) -> None:
    uas = sipp(scenario)
    await uas.start()
    call = await ua.dial(uas.uri(), from_uri=FROM)
    await event(call, CallAnswered)
    received = await event(call, DtmfReceived)
    assert (received.digit, received.method) == (digit, method)
    await call.hangup()
    result = await uas.wait()
    assert result.ok, result.report()


async def test_sipp_hangs_up_on_us(ua: UserAgent, sipp: SippFactory) -> None:
    uas = sipp("uas_answer.xml")
    await uas.start()
    call = await ua.dial(uas.uri(), from_uri=FROM)
    await event(call, CallAnswered)
    ended = await call.wait_ended()  # SIPp's BYE, 6 s after the answer
    assert ended.by == "remote"
    result = await uas.wait()
    assert result.ok, result.report()


async def test_we_answer_sipp_digest_challenge(ua: UserAgent, sipp: SippFactory) -> None:
    uas = sipp("uas_digest.xml", variables={"user": "comms", "pass": "pw-comms"})
    await uas.start()
    call = await ua.dial(uas.uri(), from_uri=FROM, credentials=Credentials("comms", "pw-comms"))
    await event(call, CallAnswered)
    await call.hangup()
    result = await uas.wait()
    assert result.ok, result.report()


async def test_sipp_refuses_our_wrong_password(ua: UserAgent, sipp: SippFactory) -> None:
    uas = sipp("uas_digest.xml", variables={"user": "comms", "pass": "pw-comms"}, timeout=5)
    await uas.start()
    call = await ua.dial(uas.uri(), from_uri=FROM, credentials=Credentials("comms", "wrong"))
    ended: CallEnded = await call.wait_ended()
    assert ended.status == 403
    result = await uas.wait()
    assert result.failed == 1


def test_uri_helper(ua: UserAgent) -> None:
    assert uri_of(ua).startswith("sip:comms@127.0.0.1:")
