"""Our UA against baresip 1.0 (driven through ctrl_tcp), both ways, DTMF both ways, over UDP, TCP and TLS."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sip.auth import DigestServer
from sip.ua import CallAnswered, DtmfReceived, UserAgent
from tests.interop.conftest import Inbox, UaFactory, event, ring_and_answer, uri_of
from tests.peers.baresip import Baresip
from tests.peers.tlscert import LoopbackCert

pytestmark = [pytest.mark.peer, pytest.mark.timeout(20)]
BaresipFactory = Callable[..., Baresip]
FROM = "sip:comms@127.0.0.1"


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
async def test_baresip_calls_us_with_dtmf_both_ways(
    ua: UserAgent, baresip: BaresipFactory, transport: str
) -> None:
    inbox = Inbox(ring_and_answer)
    ua.on_incoming(inbox)
    bob = baresip()
    await bob.start()
    assert (await bob.dial(uri_of(ua, transport=transport)))["ok"]
    call = await inbox.next()
    await event(call, CallAnswered)
    await bob.wait_event("CALL_ESTABLISHED")
    await bob.sndcode("1")
    digit = await event(call, DtmfReceived)
    assert (digit.digit, digit.method) == ("1", "rfc4733")
    await call.send_dtmf("5", "rfc4733")
    assert (await bob.wait_event("CALL_DTMF_START"))["param"] == "5"
    await call.send_dtmf("6", "info")
    assert (await bob.wait_event("CALL_DTMF_START"))["param"] == "6"
    await bob.hangup()
    assert (await call.wait_ended()).by == "remote"


async def test_we_call_baresip_and_hang_up(ua: UserAgent, baresip: BaresipFactory) -> None:
    bob = baresip()
    await bob.start()
    call = await ua.dial(bob.uri(), from_uri=FROM)
    incoming = await bob.wait_event("CALL_INCOMING")
    assert "comms@127.0.0.1" in incoming["peeruri"]
    await bob.accept()
    await event(call, CallAnswered)
    await bob.wait_event("CALL_ESTABLISHED")
    await call.send_dtmf("1", "rfc4733")
    assert (await bob.wait_event("CALL_DTMF_START"))["param"] == "1"
    await bob.sndcode("9")
    digit = await event(call, DtmfReceived)
    assert digit.digit == "9"
    await call.hangup()
    await bob.wait_event("CALL_CLOSED")


async def test_baresip_answers_our_call_over_tls(
    make_ua: UaFactory, baresip: BaresipFactory, tls_cert: LoopbackCert
) -> None:
    ua = await make_ua(
        tls_port=0,
        tls_certfile=str(tls_cert.certfile),
        tls_keyfile=str(tls_cert.keyfile),
        tls_cafile=str(tls_cert.certfile),
    )
    bob = baresip(cert=tls_cert, cafile=tls_cert.certfile)
    await bob.start()
    call = await ua.dial(bob.uri("tls"), from_uri="sip:comms@127.0.0.1")
    await bob.wait_event("CALL_INCOMING")
    await bob.accept()
    await event(call, CallAnswered)
    await call.send_dtmf("1", "info")
    assert (await bob.wait_event("CALL_DTMF_START"))["param"] == "1"
    await call.hangup()
    await bob.wait_event("CALL_CLOSED")


async def test_baresip_calls_us_over_tls(
    make_ua: UaFactory, baresip: BaresipFactory, tls_cert: LoopbackCert
) -> None:
    ua = await make_ua(
        tls_port=0,
        tls_certfile=str(tls_cert.certfile),
        tls_keyfile=str(tls_cert.keyfile),
        tls_cafile=str(tls_cert.certfile),
    )
    inbox = Inbox(ring_and_answer)
    ua.on_incoming(inbox)
    bob = baresip(cert=tls_cert, cafile=tls_cert.certfile)
    await bob.start()
    assert (await bob.dial(uri_of(ua, transport="TLS")))["ok"]
    call = await inbox.next()
    await event(call, CallAnswered)
    await bob.wait_event("CALL_ESTABLISHED")
    await bob.sndcode("1")
    assert (await event(call, DtmfReceived)).digit == "1"
    await bob.hangup()
    assert (await call.wait_ended()).by == "remote"


def _server(*algorithms: str) -> DigestServer:
    return DigestServer(
        "comms.test", {"bob": "pw-bob"}.get, secret=b"0123456789abcdef0123", algorithms=algorithms
    )


async def test_baresip_answers_our_md5_digest_challenge(ua: UserAgent, baresip: BaresipFactory) -> None:
    ua.require_auth(_server("MD5"))
    inbox = Inbox(ring_and_answer)
    ua.on_incoming(inbox)
    bob = baresip(password="pw-bob")
    await bob.start()
    await bob.dial(uri_of(ua))
    call = await inbox.next(within=8)
    await event(call, CallAnswered)
    await bob.wait_event("CALL_ESTABLISHED")
    await call.hangup()
    await bob.wait_event("CALL_CLOSED")


async def test_baresip_gives_up_when_sha256_is_challenged_first(
    ua: UserAgent, baresip: BaresipFactory
) -> None:
    """A measured fact, kept as a canary: baresip 1.0 (libre) answers only the first WWW-Authenticate and ends
    the call with ENOSYS when that one is SHA-256 (RFC 8760 wants it to use the next one it supports)."""
    ua.require_auth(_server("SHA-256", "MD5"))
    inbox = Inbox(ring_and_answer)
    ua.on_incoming(inbox)
    bob = baresip(password="pw-bob")
    await bob.start()
    await bob.dial(uri_of(ua))
    closed = await bob.wait_event("CALL_CLOSED")
    assert "Function not implemented" in closed["param"]
    assert inbox.calls.empty()
