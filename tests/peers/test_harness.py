"""The harnesses against each other: each SIPp scenario, baresip, Kamailio and the pjsua2 softphone are proven
with another real peer here, so a failing interop test points at our UA, not at the scenario or the harness."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.peers.baresip import Baresip
from tests.peers.kamailio import Kamailio
from tests.peers.sipp import Sipp
from tests.peers.tlscert import LoopbackCert

pytestmark = [pytest.mark.peer, pytest.mark.timeout(30)]

SippFactory = Callable[..., Sipp]
Method = Literal["rfc4733", "info"]


@pytest.mark.parametrize(
    ("uas_scenario", "uac_scenario"),
    [
        ("uas_answer.xml", "uac_call.xml"),
        ("uas_ring_no_answer.xml", "uac_cancel.xml"),
        ("uas_answer_dtmf2833.xml", "uac_dtmf2833.xml"),
        ("uas_decline.xml", "uac_call.xml"),
        ("uas_digest.xml", "uac_call_digest.xml"),
    ],
)
async def test_sipp_scenarios_pair_up(sipp: SippFactory, uas_scenario: str, uac_scenario: str) -> None:
    uas = sipp(
        uas_scenario, variables={"user": "alice", "pass": "s3cret"} if "digest" in uas_scenario else None
    )
    await uas.start()
    uac = sipp(uac_scenario, remote=f"127.0.0.1:{uas.port}", auth=("alice", "s3cret"))
    await uac.start()
    uac_result, uas_result = await uac.wait(), await uas.wait()
    assert uac_result.ok, uac_result.report()
    assert uas_result.ok, uas_result.report()


async def test_sipp_digest_refuses_a_wrong_password(sipp: SippFactory) -> None:
    uas = sipp("uas_digest.xml", variables={"user": "alice", "pass": "s3cret"}, timeout=5)
    await uas.start()
    uac = sipp("uac_call_digest.xml", remote=f"127.0.0.1:{uas.port}", auth=("alice", "wrong"), timeout=5)
    await uac.start()
    uac_result, uas_result = await uac.wait(), await uas.wait()
    assert uac_result.failed == 1
    assert "403" in uac_result.errors
    assert uas_result.failed == 1


# -- SIPp <-> pjsua2 softphone ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("scenario", "transport"), [("uac_call.xml", "u1"), ("uac_call.xml", "t1")])
async def test_sipp_calls_softphone(sipp: SippFactory, softphone: Any, scenario: str, transport: str) -> None:
    from sip.softphone import Answered, Disconnected, IncomingCall

    port = softphone.tcp_port if transport == "t1" else softphone.udp_port
    uac = sipp(scenario, remote=f"127.0.0.1:{port}", transport=transport, service="phone")
    await uac.start()
    result = await uac.wait()
    assert result.ok, result.report()
    incoming = await softphone.wait_for(IncomingCall)
    assert "sipp@127.0.0.1" in incoming.remote_uri
    await softphone.wait_for(Answered, call=incoming.call)
    ended = await softphone.wait_for(Disconnected, call=incoming.call)
    assert ended.status == 200


@pytest.mark.parametrize(("scenario", "method"), [("uac_dtmf2833.xml", "rfc4733"), ("uac_info.xml", "info")])
async def test_sipp_presses_1_at_softphone(
    sipp: SippFactory, softphone: Any, scenario: str, method: str
) -> None:
    from sip.softphone import DtmfReceived

    uac = sipp(scenario, remote=f"127.0.0.1:{softphone.udp_port}", service="phone")
    await uac.start()
    result = await uac.wait()
    assert result.ok, result.report()
    digit = await softphone.wait_for(DtmfReceived)
    assert (digit.digit, digit.method) == ("1", method)


async def test_sipp_cancels_a_ringing_softphone(sipp: SippFactory, softphone: Any) -> None:
    from sip.softphone import Behaviour, Disconnected

    softphone.set_behaviour(Behaviour(answer_after=None))
    uac = sipp("uac_cancel.xml", remote=f"127.0.0.1:{softphone.udp_port}", service="phone")
    await uac.start()
    result = await uac.wait()
    assert result.ok, result.report()
    assert (await softphone.wait_for(Disconnected)).status == 487


async def test_softphone_gets_busy_from_sipp(sipp: SippFactory, softphone: Any) -> None:
    from sip.softphone import Disconnected

    uas = sipp("uas_busy.xml")
    await uas.start()
    call = await softphone.dial(uas.uri())
    assert (await softphone.wait_for(Disconnected, call=call)).status == 486
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
async def test_sipp_answers_softphone_and_presses(
    sipp: SippFactory, softphone: Any, scenario: str, digit: str, method: str
) -> None:
    from sip.softphone import Answered, Disconnected, DtmfReceived

    uas = sipp(scenario)
    await uas.start()
    call = await softphone.dial(uas.uri())
    await softphone.wait_for(Answered, call=call)
    received = await softphone.wait_for(DtmfReceived, call=call)
    assert (received.digit, received.method) == (digit, method)
    await softphone.hangup(call)
    assert (await softphone.wait_for(Disconnected, call=call)).status == 200
    result = await uas.wait()
    assert result.ok, result.report()


async def test_sipp_rings_until_softphone_cancels(sipp: SippFactory, softphone: Any) -> None:
    from sip.softphone import Disconnected, Ringing

    uas = sipp("uas_ring_no_answer.xml")
    await uas.start()
    call = await softphone.dial(uas.uri())
    assert (await softphone.wait_for(Ringing, call=call)).status == 180
    await softphone.hangup(call)
    assert (await softphone.wait_for(Disconnected, call=call)).status == 487
    result = await uas.wait()
    assert result.ok, result.report()


async def test_sipp_uas_hangs_up_when_the_caller_does_not(sipp: SippFactory, softphone: Any) -> None:
    from sip.softphone import Answered, Disconnected

    uas = sipp("uas_answer.xml")
    await uas.start()
    call = await softphone.dial(uas.uri())
    await softphone.wait_for(Answered, call=call)
    ended = await softphone.wait_for(Disconnected, call=call, timeout=10)
    assert ended.status == 200  # SIPp's BYE after 6 s
    result = await uas.wait()
    assert result.ok, result.report()


async def test_softphone_answers_sipp_digest_challenge(sipp: SippFactory) -> None:
    pytest.importorskip("pjsua2")
    from sip.softphone import Answered, Softphone, SoftphoneConfig

    uas = sipp("uas_digest.xml", variables={"user": "alice", "pass": "s3cret"})
    await uas.start()
    async with Softphone() as phone:
        await phone.start(SoftphoneConfig(username="alice", password="s3cret"))
        call = await phone.dial(uas.uri())
        await phone.wait_for(Answered, call=call)
        await phone.hangup(call)
    result = await uas.wait()
    assert result.ok, result.report()


# -- baresip <-> pjsua2 softphone ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["rfc4733", "info"])
async def test_baresip_calls_softphone_with_dtmf_both_ways(
    baresip: Callable[..., Baresip], softphone: Any, method: Method
) -> None:
    from sip.softphone import Behaviour, Disconnected, DtmfReceived, IncomingCall

    softphone.set_behaviour(Behaviour(answer_after=0.2, press="1", press_after=0.5, dtmf=method))
    bob = baresip()
    await bob.start()
    assert (await bob.dial(softphone.uri()))["ok"]
    incoming = await softphone.wait_for(IncomingCall)
    await bob.wait_event("CALL_ESTABLISHED")
    assert (await bob.wait_event("CALL_DTMF_START"))["param"] == "1"
    await bob.sndcode("5")
    received = await softphone.wait_for(DtmfReceived, call=incoming.call)
    assert (received.digit, received.method) == ("5", "rfc4733")
    await bob.hangup()
    assert (await softphone.wait_for(Disconnected, call=incoming.call)).status == 200
    await bob.wait_event("CALL_CLOSED")


async def test_softphone_calls_baresip(baresip: Callable[..., Baresip], softphone: Any) -> None:
    from sip.softphone import Answered, Behaviour, Disconnected

    bob = baresip()
    await bob.start()
    call = await softphone.dial(bob.uri(), behaviour=Behaviour(press="7", press_after=0.3, dtmf="rfc4733"))
    incoming = await bob.wait_event("CALL_INCOMING")
    assert "phone@127.0.0.1" in incoming["peeruri"]
    await bob.accept()
    await softphone.wait_for(Answered, call=call)
    assert (await bob.wait_event("CALL_DTMF_START"))["param"] == "7"
    await softphone.hangup(call)
    await softphone.wait_for(Disconnected, call=call)
    await bob.wait_event("CALL_CLOSED")


async def test_baresip_calls_baresip_over_tls(
    baresip: Callable[..., Baresip], tls_cert: LoopbackCert
) -> None:
    alice = baresip(user="alice", cert=tls_cert, cafile=tls_cert.certfile)
    bob = baresip(user="bob", cert=tls_cert, cafile=tls_cert.certfile)
    await alice.start()
    await bob.start()
    await alice.dial(bob.uri("tls"))
    await bob.wait_event("CALL_INCOMING")
    await bob.accept()
    await alice.wait_event("CALL_ESTABLISHED")
    await bob.wait_event("CALL_ESTABLISHED")
    await alice.sndcode("9")
    assert (await bob.wait_event("CALL_DTMF_START"))["param"] == "9"
    await alice.hangup()
    await bob.wait_event("CALL_CLOSED")
    assert "transport=tls" in bob.output.lower() or "TLS" in bob.output


# -- Kamailio ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("digest", [False, True])
async def test_sipp_calls_registered_softphone_through_kamailio(
    kamailio: Callable[..., Kamailio], sipp: SippFactory, tmp_path: Path, digest: bool
) -> None:
    pytest.importorskip("pjsua2")
    from sip.softphone import Answered, Disconnected, Registered, Softphone, SoftphoneConfig

    users = {"phone": "pw-phone", "sipp": "pw-sipp"} if digest else {}
    proxy = kamailio(users=users)
    await proxy.start()
    async with Softphone() as phone:
        await phone.start(
            SoftphoneConfig(registrar=proxy.uri(), username="phone", password="pw-phone" if digest else None)
        )
        assert (await phone.wait_for(Registered)).status == 200
        uac = sipp(
            "uac_call_digest.xml" if digest else "uac_call.xml",
            remote=f"127.0.0.1:{proxy.port}",
            service="phone",
            auth=("sipp", "pw-sipp"),
        )
        await uac.start()
        result = await uac.wait()
        assert result.ok, result.report()
        await phone.wait_for(Answered)
        assert (await phone.wait_for(Disconnected)).status == 200
    await proxy.wait_log("request INVITE sip:phone@")
    assert "Record-Route:" in result.messages
