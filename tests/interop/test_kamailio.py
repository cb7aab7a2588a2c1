"""Calls between our UA and real peers through Kamailio 5.6 as registrar and record-routing proxy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sip.auth import Credentials
from sip.ua import CallAnswered, DtmfReceived, UserAgent
from tests.interop.conftest import Inbox, event, ring_and_answer
from tests.peers.kamailio import Kamailio

pytestmark = [pytest.mark.peer, pytest.mark.timeout(20)]
KamailioFactory = Callable[..., Kamailio]


async def test_we_call_a_registered_softphone_through_kamailio(
    ua: UserAgent, kamailio: KamailioFactory, softphone_config: Any
) -> None:
    from sip.softphone import Behaviour, Disconnected, IncomingCall, Registered
    from sip.softphone import DtmfReceived as PhoneDtmf

    proxy = kamailio()
    await proxy.start()
    phone = await softphone_config(registrar=proxy.uri(), user="drpj")
    phone.set_behaviour(Behaviour(answer_after=0.2, press="1", press_after=0.3, dtmf="rfc4733"))
    assert (await phone.wait_for(Registered)).status == 200
    call = await ua.dial(proxy.uri("drpj"), from_uri="sip:comms@127.0.0.1")
    await event(call, CallAnswered)
    assert (await event(call, DtmfReceived)).digit == "1"
    incoming = await phone.wait_for(IncomingCall)
    await call.send_dtmf("4", "info")  # in-dialog request: must follow the recorded route
    assert (await phone.wait_for(PhoneDtmf, call=incoming.call)).digit == "4"
    await call.hangup()
    assert (await phone.wait_for(Disconnected, call=incoming.call)).status == 200
    assert call.dialog is not None
    assert call.dialog.route_set, "Kamailio's Record-Route was not kept"
    for method in ("INVITE", "ACK", "INFO", "BYE"):
        await proxy.wait_log(f"request {method} ")


async def test_softphone_reaches_us_through_kamailio(
    ua: UserAgent, kamailio: KamailioFactory, softphone_config: Any
) -> None:
    from sip.softphone import Answered, Disconnected

    host, port = ua.address("UDP")
    proxy = kamailio(target=f"{host}:{port}")
    await proxy.start()
    inbox = Inbox(ring_and_answer)
    ua.on_incoming(inbox)
    phone = await softphone_config(proxy=proxy.route())
    handle = await phone.dial(proxy.uri("comms"))
    await phone.wait_for(Answered, call=handle)
    call = await inbox.next()
    await call.hangup()  # our BYE goes back through the proxy
    assert (await phone.wait_for(Disconnected, call=handle)).status == 200
    await proxy.wait_log("request BYE ")


async def test_we_answer_kamailio_proxy_digest(
    ua: UserAgent, kamailio: KamailioFactory, softphone_config: Any
) -> None:
    from sip.softphone import Disconnected, Registered

    proxy = kamailio(users={"comms": "pw-comms", "drpj": "pw-drpj"})
    await proxy.start()
    phone = await softphone_config(registrar=proxy.uri(), user="drpj", username="drpj", password="pw-drpj")
    assert (await phone.wait_for(Registered)).status == 200
    call = await ua.dial(
        proxy.uri("drpj"), from_uri="sip:comms@127.0.0.1", credentials=Credentials("comms", "pw-comms")
    )
    await event(call, CallAnswered)
    await call.hangup()
    await phone.wait_for(Disconnected)
    await proxy.wait_log(r"request INVITE [^\n]*\n(.*\n)*.*request INVITE ")  # 407, then with credentials


async def test_kamailio_refuses_us_without_credentials(ua: UserAgent, kamailio: KamailioFactory) -> None:
    proxy = kamailio(users={"comms": "pw-comms"})
    await proxy.start()
    call = await ua.dial(proxy.uri("nobody"), from_uri="sip:comms@127.0.0.1")
    ended = await call.wait_ended()
    assert (ended.status, ended.by) == (407, "remote")
