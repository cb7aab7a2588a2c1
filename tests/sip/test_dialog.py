"""RFC 3261 §12 dialogs: creation at UAC and UAS, route sets (loose and strict), remote target and its
refresh, CSeq rules, in-dialog requests and ACK for 2xx; and the UAS's 2xx retransmission (§13.3.1.4)."""

from __future__ import annotations

import pytest

from sip.dialog import (
    AckTimeout,
    AnswerRetransmitter,
    Dialog,
    DialogState,
    RequestRefused,
    next_hop,
    request_dialog_id,
    response_dialog_id,
    tear_down_late_answer,
)
from sip.errors import LocalProtocolError, RemoteProtocolError
from sip.message import URI, NameAddr, Request, Response, Via, parse_message
from sip.transaction import SendMessage, Timers, make_response

T0 = 1000.0

INVITE = (
    "INVITE sip:bob@example.org SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-inv-1\r\n"
    "Max-Forwards: 70\r\n"
    'From: "Alice" <sip:alice@example.org>;tag=alice-tag\r\n'
    "To: <sip:bob@example.org>\r\n"
    "Call-ID: dlg-call-1\r\n"
    "CSeq: 10 INVITE\r\n"
    "Contact: <sip:alice@10.0.0.1:5060>\r\n"
    "{extra}"
    "\r\n"
)


def state(d: Dialog) -> DialogState:
    return d.state


def invite(extra: str = "") -> Request:
    msg = parse_message(INVITE.format(extra=extra).encode())
    assert isinstance(msg, Request)
    return msg


def wire_request(msg: Request) -> Request:
    """What the peer sees (a Via added here if the caller of new_request() did not pass one)."""
    if "Via" not in msg.headers:
        msg.headers.prepend("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-w")
    out = parse_message(bytes(msg))
    assert isinstance(out, Request)
    return out


def answer(
    inv: Request, status: int = 200, *, tag: str = "bob-tag", contact: str | None = "<sip:bob@10.0.0.2:5070>"
) -> Response:
    """The response as the UAC receives it (Record-Route copied by make_response from the INVITE)."""
    headers = [("Contact", contact)] if contact else []
    inv = wire_request(inv)
    resp = parse_message(bytes(make_response(inv, status, to_tag=tag, headers=headers)))
    assert isinstance(resp, Response)
    return resp


def incoming(method: str, dialog: Dialog, cseq: int, *, extra: str = "") -> Request:
    """A request the peer sends within ``dialog`` (the peer's From tag is our remote tag)."""
    text = (
        f"{method} sip:alice@10.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bK-in-1\r\n"
        f"From: <sip:peer@example.org>;tag={dialog.remote_tag}\r\n"
        f"To: <sip:us@example.org>;tag={dialog.local_tag}\r\n"
        f"Call-ID: {dialog.call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"{extra}\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


RR = "Record-Route: <sip:p1.example.org;lr>, <sip:p2.example.org;lr>\r\n"


# ---------------------------------------------------------------------------------------------------------
# UAC


def test_uac_dialog_from_2xx() -> None:
    inv = invite(RR)
    ok = answer(inv)
    d = Dialog.uac(inv, ok)
    assert state(d) is DialogState.CONFIRMED
    assert d.id == ("dlg-call-1", "alice-tag", "bob-tag") == response_dialog_id(ok)
    assert [str(r.uri) for r in d.route_set] == ["sip:p2.example.org;lr", "sip:p1.example.org;lr"]  # reversed
    assert d.remote_target == URI.parse("sip:bob@10.0.0.2:5070")
    assert d.next_hop() == URI.parse("sip:p2.example.org;lr")
    bye = wire_request(d.new_request("BYE", via=Via("UDP", "10.0.0.1", 5060, (("branch", "z9hG4bK-b"),))))
    assert bye.uri == d.remote_target  # loose routing: the Request-URI is the remote target
    assert bye.headers.get_all("Route") == ["<sip:p2.example.org;lr>", "<sip:p1.example.org;lr>"]
    assert bye.cseq == (11, "BYE")
    assert bye.from_.tag == "alice-tag"
    assert bye.from_.display == "Alice"
    assert bye.to.tag == "bob-tag"
    assert bye.call_id == "dlg-call-1"
    assert bye.top_via.branch == "z9hG4bK-b"
    assert bye.headers.get("Max-Forwards") == "70"
    assert "Contact" not in bye.headers
    assert next_hop(bye) == d.next_hop()
    info = d.new_request("INFO", body=b"Signal=1\r\n", content_type="application/dtmf-relay")
    assert info.cseq == (12, "INFO")
    assert info.content_type == "application/dtmf-relay"
    assert "Via" not in info.headers  # the caller adds it


def test_uac_early_dialog_confirmed_by_2xx_with_recomputed_route_set() -> None:
    inv = invite(RR)
    ringing = answer(inv, 180, contact="<sip:bob@10.0.0.9>")
    d = Dialog.uac(inv, ringing)
    assert state(d) is DialogState.EARLY
    assert d.remote_target == URI.parse("sip:bob@10.0.0.9")
    d.receive_response(answer(inv, 183, contact="<sip:bob@10.0.0.8>"))
    assert d.remote_target == URI.parse("sip:bob@10.0.0.8")
    ok = parse_message(bytes(answer(inv)).replace(b"p1.example.org", b"p3.example.org"))
    assert isinstance(ok, Response)
    d.receive_response(ok)
    assert state(d) is DialogState.CONFIRMED
    assert [r.uri.host for r in d.route_set] == ["p2.example.org", "p3.example.org"]
    assert d.remote_target == URI.parse("sip:bob@10.0.0.2:5070")


def test_uac_early_dialog_ends_on_a_failure() -> None:
    inv = invite()
    d = Dialog.uac(inv, answer(inv, 180))
    d.receive_response(answer(inv, 486))
    assert state(d) is DialogState.TERMINATED


def test_uac_without_contact_falls_back_to_the_request_uri() -> None:
    inv = invite()
    d = Dialog.uac(inv, answer(inv, 200, contact=None))
    assert d.remote_target == inv.uri
    assert d.next_hop() == inv.uri  # no route set


def test_uac_refuses_a_response_without_to_tag() -> None:
    inv = invite()
    no_tag = parse_message(bytes(make_response(inv, 200)))
    assert isinstance(no_tag, Response)
    with pytest.raises(RemoteProtocolError, match="without a To tag"):
        Dialog.uac(inv, no_tag)
    with pytest.raises(LocalProtocolError, match="101-299"):
        Dialog.uac(inv, answer(inv, 100))


def test_ack_for_2xx_uses_the_invite_cseq_and_is_stable() -> None:
    inv = invite(RR)
    ok = answer(inv)
    d = Dialog.uac(inv, ok)
    ack = d.ack(ok, via="SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-ack")
    assert ack.method == "ACK"
    assert ack.cseq == (10, "ACK")
    assert ack.uri == d.remote_target
    assert ack.headers.get_all("Route") == ["<sip:p2.example.org;lr>", "<sip:p1.example.org;lr>"]
    assert d.ack(ok) is ack  # a retransmitted 2xx gets the very same ACK again
    assert d.local_seq == 10  # an ACK does not count
    assert d.new_request("ACK").cseq == (10, "ACK")
    with pytest.raises(LocalProtocolError, match="needs a 2xx to INVITE"):
        d.ack(answer(inv, 180))


def test_reinvite_target_refresh_keeps_the_route_set() -> None:
    inv = invite(RR)
    d = Dialog.uac(inv, answer(inv))
    reinvite = d.new_request("INVITE", body=b"v=0\r\n", content_type="application/sdp")
    assert reinvite.cseq == (11, "INVITE")
    assert reinvite.contact == NameAddr.parse("<sip:alice@10.0.0.1:5060>")
    routes = list(d.route_set)
    ok = parse_message(bytes(answer(reinvite, contact="<sip:bob@10.0.0.77>")).replace(b"p1.", b"px."))
    assert isinstance(ok, Response)
    d.receive_response(ok)
    assert d.remote_target == URI.parse("sip:bob@10.0.0.77")
    assert d.route_set == routes
    ack = d.ack(ok)
    assert ack.cseq == (11, "ACK")
    assert ack.uri == URI.parse("sip:bob@10.0.0.77")


@pytest.mark.parametrize("status", [408, 481])
def test_in_dialog_408_or_481_ends_the_dialog(status: int) -> None:
    inv = invite()
    d = Dialog.uac(inv, answer(inv))
    info = d.new_request("INFO")
    d.receive_response(answer(info, status))
    assert state(d) is DialogState.TERMINATED
    with pytest.raises(LocalProtocolError, match="cannot send INFO in state terminated"):
        d.new_request("INFO")
    assert d.new_request("BYE").method == "BYE"  # a BYE is still allowed


def test_cancel_is_not_an_in_dialog_request() -> None:
    inv = invite()
    d = Dialog.uac(inv, answer(inv, 180))
    with pytest.raises(LocalProtocolError, match="make_cancel"):
        d.new_request("CANCEL")


def test_strict_route() -> None:
    inv = invite(
        "Record-Route: <sip:loose.example.org;lr>, <sip:strict.example.org;method=INVITE;maddr=x>\r\n"
    )
    d = Dialog.uac(inv, answer(inv))
    # reversed: the strict router is first
    assert d.route_set[0].uri.host == "strict.example.org"
    bye = wire_request(d.new_request("BYE"))
    assert bye.uri == URI.parse("sip:strict.example.org;maddr=x")  # method stripped (§19.1.1)
    assert bye.headers.get_all("Route") == ["<sip:loose.example.org;lr>", "<sip:bob@10.0.0.2:5070>"]
    assert d.next_hop() == d.route_set[0].uri


# ---------------------------------------------------------------------------------------------------------
# UAS


def test_uas_dialog_from_invite() -> None:
    inv = invite(RR)
    d = Dialog.uas(inv, "bob-tag", URI.parse("sip:bob@10.0.0.2:5070"))
    assert state(d) is DialogState.EARLY
    d.confirm()
    assert state(d) is DialogState.CONFIRMED
    d.confirm()
    assert d.id == ("dlg-call-1", "bob-tag", "alice-tag")
    assert [r.uri.host for r in d.route_set] == ["p1.example.org", "p2.example.org"]  # in order at the UAS
    assert d.remote_target == URI.parse("sip:alice@10.0.0.1:5060")
    assert d.remote_seq == 10
    bye = wire_request(d.new_request("BYE"))
    assert bye.uri == URI.parse("sip:alice@10.0.0.1:5060")
    assert bye.headers.get_all("Route") == ["<sip:p1.example.org;lr>", "<sip:p2.example.org;lr>"]
    assert bye.from_ == NameAddr.parse("<sip:bob@example.org>;tag=bob-tag")
    assert bye.to == NameAddr.parse('"Alice" <sip:alice@example.org>;tag=alice-tag')
    assert 0 < bye.cseq[0] < 2**31
    reinvite = d.new_request("INVITE")
    assert reinvite.cseq[0] == bye.cseq[0] + 1
    assert reinvite.contact == NameAddr.parse("<sip:bob@10.0.0.2:5070>")


def test_uas_refuses_an_invite_without_contact() -> None:
    inv = parse_message(bytes(invite()).replace(b"Contact: <sip:alice@10.0.0.1:5060>\r\n", b""))
    assert isinstance(inv, Request)
    with pytest.raises(RequestRefused, match="without Contact") as err:
        Dialog.uas(inv, "t", "<sip:bob@10.0.0.2>")
    assert err.value.status == 400


def test_receive_request_cseq_order() -> None:
    d = Dialog.uas(invite(), "bob-tag", "<sip:bob@10.0.0.2>")
    info = incoming("INFO", d, 11)
    assert request_dialog_id(info) == d.id
    d.receive_request(info)
    assert d.remote_seq == 11
    with pytest.raises(RequestRefused, match="CSeq 9 is out of order: expected at least 11") as err:
        d.receive_request(incoming("INFO", d, 9))
    assert err.value.status == 500
    assert d.remote_seq == 11
    d.receive_request(incoming("ACK", d, 10))  # an ACK carries its INVITE's number
    d.receive_request(incoming("BYE", d, 12))
    assert state(d) is DialogState.TERMINATED


def test_receive_request_for_another_dialog_is_481() -> None:
    d = Dialog.uas(invite(), "bob-tag", "<sip:bob@10.0.0.2>")
    other = Dialog.uas(invite(), "someone-else", "<sip:bob@10.0.0.2>")
    with pytest.raises(RequestRefused) as err:
        d.receive_request(incoming("BYE", other, 11))
    assert err.value.status == 481


def test_receive_reinvite_refreshes_the_target() -> None:
    d = Dialog.uas(invite(RR), "bob-tag", "<sip:bob@10.0.0.2>")
    d.confirm()
    routes = list(d.route_set)
    d.receive_request(incoming("INVITE", d, 11, extra="Contact: <sip:alice@192.0.2.5:6000>\r\n"))
    assert d.remote_target == URI.parse("sip:alice@192.0.2.5:6000")
    assert d.route_set == routes
    d.receive_request(incoming("INFO", d, 12, extra="Contact: <sip:alice@198.51.100.1>\r\n"))
    assert d.remote_target == URI.parse("sip:alice@192.0.2.5:6000")  # INFO is no target refresh


def test_uas_new_request_ack_needs_an_invite_of_ours() -> None:
    d = Dialog.uas(invite(), "bob-tag", "<sip:bob@10.0.0.2>")
    with pytest.raises(LocalProtocolError, match="no INVITE of ours"):
        d.new_request("ACK")


def test_next_hop_out_of_dialog() -> None:
    assert next_hop(invite()) == URI.parse("sip:bob@example.org")
    assert next_hop(invite("Route: <sip:outbound.example.org;lr>\r\n")) == URI.parse(
        "sip:outbound.example.org;lr"
    )


def test_tear_down_late_answer_builds_ack_then_bye() -> None:
    inv = invite()
    ok = answer(inv, tag="late")
    d, ack, bye = tear_down_late_answer(inv, ok, via_ack="SIP/2.0/UDP h;branch=z9hG4bK-1")
    assert (ack.method, ack.cseq, ack.to.tag) == ("ACK", (10, "ACK"), "late")
    assert (bye.method, bye.cseq, bye.to.tag) == ("BYE", (11, "BYE"), "late")
    assert bye.uri == URI.parse("sip:bob@10.0.0.2:5070")
    assert state(d) is DialogState.TERMINATED
    assert d.ack(ok) is ack


# ---------------------------------------------------------------------------------------------------------
# 2xx retransmission (§13.3.1.4)


def drive(r: AnswerRetransmitter, until: float) -> list[tuple[float, list[object]]]:
    out: list[tuple[float, list[object]]] = []
    while (deadline := r.next_deadline()) is not None and deadline <= until:
        r.on_timer(deadline)
        out.append((deadline, list(r.take_actions())))
    return out


def test_answer_retransmitter_until_ack_timeout() -> None:
    ok = answer(invite())
    r = AnswerRetransmitter(ok, T0)
    firings = drive(r, T0 + 100)
    sends = [round(t - T0, 6) for t, acts in firings if acts == [SendMessage(ok)]]
    assert sends == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert firings[-1] == (T0 + 32, [AckTimeout()])
    assert r.timed_out
    assert r.next_deadline() is None


def test_answer_retransmitter_stops_on_ack() -> None:
    ok = answer(invite())
    r = AnswerRetransmitter(ok, T0, Timers(t1=0.1, t2=0.4))
    firings = drive(r, T0 + 0.35)
    assert [round(t - T0, 6) for t, _ in firings] == [0.1, 0.3]
    r.ack_received()
    assert r.next_deadline() is None
    r.on_timer(T0 + 100)
    assert r.take_actions() == []
    assert not r.timed_out


def test_answer_retransmitter_needs_a_2xx() -> None:
    with pytest.raises(LocalProtocolError, match="needs a 2xx, got 180"):
        AnswerRetransmitter(answer(invite(), 180), T0)
