"""RFC 3261 §17 transactions: every state, every timer, reliable and unreliable transports, transport errors,
matching keys and the message builders. Time is a plain float ``now``; messages cross a byte boundary
(render + parse) wherever a peer would see them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.errors import LocalProtocolError
from sip.message import Request, Response, parse_message
from sip.transaction import (
    MAGIC_COOKIE,
    Action,
    DeliverRequest,
    DeliverResponse,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    SendMessage,
    Terminated,
    Timers,
    TransactionState,
    TransactionTimeout,
    TransportFailure,
    cancel_target_key,
    client_key,
    make_ack_for_non_2xx,
    make_cancel,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    server_key,
)

T0 = 1000.0
S = TransactionState
Tx = (
    InviteClientTransaction
    | NonInviteClientTransaction
    | InviteServerTransaction
    | NonInviteServerTransaction
)


def request(
    method: str = "INVITE",
    *,
    branch: str = "z9hG4bK-test-1",
    via: str = "10.0.0.1:5060",
    transport: str = "UDP",
    cseq: int = 1,
    cseq_method: str | None = None,
    call_id: str = "call-1@10.0.0.1",
    from_tag: str | None = "alice-tag",
    to_tag: str | None = None,
    uri: str = "sip:bob@10.0.0.2",
    extra: str = "",
) -> Request:
    text = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {via};branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:alice@example.org>{f';tag={from_tag}' if from_tag else ''}\r\n"
        f"To: <sip:bob@example.org>{f';tag={to_tag}' if to_tag else ''}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {cseq_method or method}\r\n"
        "Contact: <sip:alice@10.0.0.1:5060>\r\n"
        f"{extra}"
        "\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def state(tx: Tx) -> TransactionState:
    """The current state (a function, so that mypy does not narrow it across calls)."""
    return tx.state


def wire(msg: Request | Response) -> Request | Response:
    """What the peer sees: render and parse again."""
    return parse_message(bytes(msg))


def reply(req: Request, status: int, *, to_tag: str | None = "bob-tag") -> Response:
    resp = wire(make_response(req, status, to_tag=to_tag if status > 100 else None))
    assert isinstance(resp, Response)
    return resp


def sent(actions: list[Action]) -> list[Request | Response]:
    return [a.message for a in actions if isinstance(a, SendMessage)]


def run_timers(tx: Tx, until: float) -> list[tuple[float, list[Action]]]:
    """Fire every deadline up to ``until``, as an adapter would; return (time, actions) per firing."""
    out: list[tuple[float, list[Action]]] = []
    while (deadline := tx.next_deadline()) is not None and deadline <= until:
        tx.on_timer(deadline)
        out.append((deadline, tx.take_actions()))
    return out


def send_times(firings: list[tuple[float, list[Action]]]) -> list[float]:
    return [round(t - T0, 6) for t, acts in firings if sent(acts)]


# ---------------------------------------------------------------------------------------------------------
# Timers


def test_timers_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="t1=0"):
        Timers(t1=0)
    with pytest.raises(ValueError, match=r"t2=0\.1"):
        Timers(t1=0.5, t2=0.1)
    with pytest.raises(ValueError, match="trying_after=-1"):
        Timers(trying_after=-1)


# ---------------------------------------------------------------------------------------------------------
# INVITE client (§17.1.1)


def test_invite_client_unreliable_timer_a_doubles_until_timer_b() -> None:
    inv = request()
    tx = InviteClientTransaction(inv, T0, reliable=False)
    assert state(tx) is S.CALLING
    assert tx.take_actions() == [SendMessage(inv)]
    assert tx.next_deadline() == T0 + 0.5
    firings = run_timers(tx, T0 + 100)
    # Timer A: T1, then doubling without a cap (§17.1.1.2); Timer B at 64*T1 = 32 s
    assert send_times(firings) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(m is inv for _, acts in firings for m in sent(acts))
    assert firings[-1] == (T0 + 32, [TransactionTimeout("B"), Terminated()])
    assert state(tx) is S.TERMINATED
    assert tx.next_deadline() is None


def test_invite_client_reliable_has_no_timer_a() -> None:
    tx = InviteClientTransaction(request(transport="TCP"), T0, reliable=True)
    tx.take_actions()
    assert tx.next_deadline() == T0 + 32
    firings = run_timers(tx, T0 + 100)
    assert firings == [(T0 + 32, [TransactionTimeout("B"), Terminated()])]


def test_invite_client_injected_timers() -> None:
    tx = InviteClientTransaction(request(), T0, reliable=False, timers=Timers(t1=0.01))
    tx.take_actions()
    firings = run_timers(tx, T0 + 1)
    when, actions = firings[-1]
    assert when == pytest.approx(T0 + 0.64)
    assert actions == [TransactionTimeout("B"), Terminated()]


def test_invite_client_provisional_stops_a_and_b() -> None:
    inv = request()
    tx = InviteClientTransaction(inv, T0, reliable=False)
    tx.take_actions()
    ringing = reply(inv, 180)
    tx.receive(ringing, T0 + 0.2)
    assert state(tx) is S.PROCEEDING
    assert tx.take_actions() == [DeliverResponse(ringing)]
    assert tx.next_deadline() is None
    assert tx.may_cancel
    tx.receive(reply(inv, 183), T0 + 1)
    assert [type(a) for a in tx.take_actions()] == [DeliverResponse]


def test_invite_client_non_2xx_unreliable_acks_and_waits_timer_d() -> None:
    inv = request(extra="Route: <sip:proxy.example.org;lr>\r\n")
    tx = InviteClientTransaction(inv, T0, reliable=False)
    tx.take_actions()
    tx.receive(reply(inv, 100, to_tag=None), T0 + 0.1)
    tx.take_actions()
    busy = reply(inv, 486)
    tx.receive(busy, T0 + 2)
    assert state(tx) is S.COMPLETED
    actions = tx.take_actions()
    assert actions[1] == DeliverResponse(busy)
    ack = wire(sent(actions)[0])
    assert isinstance(ack, Request)
    assert ack.method == "ACK"
    assert ack.uri == inv.uri
    assert ack.top_via.branch == inv.top_via.branch  # same transaction (§17.1.1.3)
    assert len(ack.vias) == 1
    assert ack.to.tag == "bob-tag"
    assert ack.cseq == (1, "ACK")
    assert ack.headers.get_all("Route") == ["<sip:proxy.example.org;lr>"]
    assert ack.from_ == inv.from_
    assert ack.call_id == inv.call_id
    # a retransmitted 486 is absorbed: the ACK goes again, the TU hears nothing
    tx.receive(busy, T0 + 3)
    assert tx.ack is not None
    assert tx.take_actions() == [SendMessage(tx.ack)]
    assert tx.next_deadline() == T0 + 2 + 32  # Timer D
    assert run_timers(tx, T0 + 100) == [(T0 + 34, [Terminated()])]


def test_invite_client_non_2xx_reliable_terminates_at_once() -> None:
    inv = request(transport="TCP")
    tx = InviteClientTransaction(inv, T0, reliable=True)
    tx.take_actions()
    tx.receive(reply(inv, 603), T0 + 1)
    actions = tx.take_actions()
    assert [type(a) for a in actions] == [SendMessage, DeliverResponse, Terminated]
    assert state(tx) is S.TERMINATED
    assert tx.next_deadline() is None


def test_invite_client_2xx_accepted_until_timer_m() -> None:
    inv = request()
    tx = InviteClientTransaction(inv, T0, reliable=False)
    tx.take_actions()
    ok = reply(inv, 200)
    tx.receive(ok, T0 + 1)
    assert state(tx) is S.ACCEPTED
    assert tx.take_actions() == [DeliverResponse(ok)]  # no ACK from the transaction: the TU ACKs a 2xx
    assert tx.next_deadline() == T0 + 1 + 32  # Timer M
    # RFC 6026: a retransmitted 2xx goes up again (the TU re-sends its ACK); other responses are absorbed
    tx.receive(ok, T0 + 1.5)
    assert tx.take_actions() == [DeliverResponse(ok)]
    tx.receive(reply(inv, 180), T0 + 1.6)
    tx.receive(reply(inv, 500), T0 + 1.7)
    assert tx.take_actions() == []
    assert run_timers(tx, T0 + 100) == [(T0 + 33, [Terminated()])]


def test_invite_client_2xx_reliable_also_waits_timer_m() -> None:
    inv = request(transport="TLS")
    tx = InviteClientTransaction(inv, T0, reliable=True)
    tx.take_actions()
    tx.receive(reply(inv, 200), T0)
    tx.take_actions()
    assert tx.next_deadline() == T0 + 32


def test_invite_client_2xx_after_non_2xx_is_delivered() -> None:
    inv = request()
    tx = InviteClientTransaction(inv, T0, reliable=False)
    tx.take_actions()
    tx.receive(reply(inv, 486, to_tag="fork-1"), T0 + 1)
    tx.take_actions()
    late_ok = reply(inv, 200, to_tag="fork-2")
    tx.receive(late_ok, T0 + 2)
    assert tx.take_actions() == [DeliverResponse(late_ok)]
    assert state(tx) is S.COMPLETED


def test_invite_client_cancel_sent_rearms_timer_b() -> None:
    inv = request()
    tx = InviteClientTransaction(inv, T0, reliable=False)
    tx.receive(reply(inv, 180), T0 + 1)
    tx.take_actions()
    assert tx.next_deadline() is None
    tx.cancel_sent(T0 + 10)
    assert tx.next_deadline() == T0 + 10 + 32
    tx.receive(reply(inv, 183), T0 + 11)  # a further 1xx does not stop the wait
    tx.take_actions()
    assert run_timers(tx, T0 + 100)[-1] == (T0 + 42, [TransactionTimeout("B"), Terminated()])


def test_invite_client_cancel_sent_while_calling_survives_a_provisional() -> None:
    inv = request()
    tx = InviteClientTransaction(inv, T0, reliable=False)
    tx.cancel_sent(T0 + 5)
    tx.receive(reply(inv, 180), T0 + 6)
    assert tx.next_deadline() == T0 + 37
    tx.receive(reply(inv, 487), T0 + 7)
    assert state(tx) is S.COMPLETED
    tx.cancel_sent(T0 + 8)  # too late: nothing changes
    assert tx.next_deadline() == T0 + 7 + 32


@pytest.mark.parametrize("before", ["calling", "proceeding", "accepted"])
def test_invite_client_transport_error(before: str) -> None:
    inv = request()
    tx = InviteClientTransaction(inv, T0, reliable=False)
    if before == "proceeding":
        tx.receive(reply(inv, 180), T0)
    elif before == "accepted":
        tx.receive(reply(inv, 200), T0)
    tx.take_actions()
    tx.transport_error(T0 + 1, "ICMP port unreachable")
    assert tx.take_actions() == [TransportFailure("ICMP port unreachable"), Terminated()]
    assert tx.terminated
    assert tx.next_deadline() is None
    tx.transport_error(T0 + 2, "again")
    assert tx.take_actions() == []


def test_invite_client_refuses_other_methods() -> None:
    with pytest.raises(LocalProtocolError, match="needs an INVITE, got OPTIONS"):
        InviteClientTransaction(request("OPTIONS"), T0, reliable=False)


# ---------------------------------------------------------------------------------------------------------
# non-INVITE client (§17.1.2)


def test_non_invite_client_unreliable_timer_e_caps_at_t2_then_timer_f() -> None:
    opts = request("OPTIONS")
    tx = NonInviteClientTransaction(opts, T0, reliable=False)
    assert state(tx) is S.TRYING
    assert tx.take_actions() == [SendMessage(opts)]
    firings = run_timers(tx, T0 + 100)
    assert send_times(firings) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert firings[-1] == (T0 + 32, [TransactionTimeout("F"), Terminated()])


def test_non_invite_client_reliable_only_timer_f() -> None:
    tx = NonInviteClientTransaction(request("BYE", to_tag="x"), T0, reliable=True)
    tx.take_actions()
    assert run_timers(tx, T0 + 100) == [(T0 + 32, [TransactionTimeout("F"), Terminated()])]


def test_non_invite_client_proceeding_retransmits_at_t2_and_keeps_timer_f() -> None:
    opts = request("OPTIONS")
    tx = NonInviteClientTransaction(opts, T0, reliable=False)
    tx.take_actions()
    tx.receive(reply(opts, 100, to_tag=None), T0 + 0.2)
    assert state(tx) is S.PROCEEDING
    assert [type(a) for a in tx.take_actions()] == [DeliverResponse]
    firings = run_timers(tx, T0 + 100)
    # E keeps its deadline (0.5), then fires every T2 (§17.1.2.2); F still at 64*T1 from the start
    assert send_times(firings) == [0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5]
    assert firings[-1] == (T0 + 32, [TransactionTimeout("F"), Terminated()])


@pytest.mark.parametrize("status", [200, 404])
def test_non_invite_client_final_unreliable_waits_timer_k(status: int) -> None:
    opts = request("OPTIONS")
    tx = NonInviteClientTransaction(opts, T0, reliable=False)
    tx.take_actions()
    final = reply(opts, status)
    tx.receive(final, T0 + 1)
    assert state(tx) is S.COMPLETED
    assert tx.take_actions() == [DeliverResponse(final)]
    tx.receive(final, T0 + 2)  # retransmission absorbed
    tx.receive(reply(opts, 180), T0 + 2)
    assert tx.take_actions() == []
    assert run_timers(tx, T0 + 100) == [(T0 + 1 + 5, [Terminated()])]  # Timer K = T4


def test_non_invite_client_final_reliable_terminates_at_once() -> None:
    opts = request("OPTIONS", transport="TCP")
    tx = NonInviteClientTransaction(opts, T0, reliable=True)
    tx.take_actions()
    tx.receive(reply(opts, 200), T0 + 1)
    assert [type(a) for a in tx.take_actions()] == [DeliverResponse, Terminated]


def test_non_invite_client_transport_error() -> None:
    tx = NonInviteClientTransaction(request("OPTIONS"), T0, reliable=False)
    tx.take_actions()
    tx.transport_error(T0, "connection refused")
    assert tx.take_actions() == [TransportFailure("connection refused"), Terminated()]


@pytest.mark.parametrize("method", ["INVITE", "ACK"])
def test_non_invite_client_refuses_invite_and_ack(method: str) -> None:
    with pytest.raises(LocalProtocolError, match=f"cannot carry {method}"):
        NonInviteClientTransaction(request(method), T0, reliable=False)


# ---------------------------------------------------------------------------------------------------------
# INVITE server (§17.2.1, RFC 6026)


def test_invite_server_sends_100_trying_after_200_ms_of_silence() -> None:
    inv = request()
    tx = InviteServerTransaction(inv, T0, reliable=False)
    assert state(tx) is S.PROCEEDING
    assert tx.take_actions() == [DeliverRequest(inv)]
    assert tx.next_deadline() == pytest.approx(T0 + 0.2)
    (_when, actions), *_ = run_timers(tx, T0 + 1)
    (trying,) = sent(actions)
    assert isinstance(trying, Response)
    assert trying.status == 100
    assert trying.to.tag is None
    assert tx.next_deadline() is None


def test_invite_server_no_100_when_the_tu_rings_first() -> None:
    inv = request()
    tx = InviteServerTransaction(inv, T0, reliable=False)
    tx.take_actions()
    ringing = make_response(inv, 180, to_tag="b1")
    tx.respond(ringing, T0 + 0.05)
    assert tx.take_actions() == [SendMessage(ringing)]
    assert run_timers(tx, T0 + 10) == []
    # a retransmitted INVITE gets the last provisional again and does not reach the TU twice
    tx.receive(inv, T0 + 0.5)
    assert tx.take_actions() == [SendMessage(ringing)]


def test_invite_server_immediate_100_when_configured_or_on_retransmission() -> None:
    inv = request()
    tx = InviteServerTransaction(inv, T0, reliable=False, timers=Timers(trying_after=0))
    assert [type(a) for a in tx.take_actions()] == [DeliverRequest, SendMessage]
    tx2 = InviteServerTransaction(inv, T0, reliable=False)
    tx2.take_actions()
    tx2.receive(inv, T0 + 0.1)
    (trying,) = sent(tx2.take_actions())
    assert isinstance(trying, Response)
    assert trying.status == 100
    assert tx2.next_deadline() is None


def test_invite_server_non_2xx_unreliable_timer_g_and_h() -> None:
    inv = request()
    tx = InviteServerTransaction(inv, T0, reliable=False)
    tx.take_actions()
    busy = make_response(inv, 486, to_tag="b1")
    tx.respond(busy, T0 + 1)
    assert state(tx) is S.COMPLETED
    assert tx.take_actions() == [SendMessage(busy)]
    tx.receive(inv, T0 + 1.1)  # retransmitted INVITE: the final response again
    assert tx.take_actions() == [SendMessage(busy)]
    firings = run_timers(tx, T0 + 100)
    # Timer G: T1 doubling, capped at T2 (§17.2.1); Timer H at 64*T1
    g = [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert [round(t - T0 - 1, 6) for t, a in firings if sent(a)] == g
    assert firings[-1] == (T0 + 33, [TransactionTimeout("H"), Terminated()])


def test_invite_server_ack_confirms_then_timer_i() -> None:
    inv = request()
    tx = InviteServerTransaction(inv, T0, reliable=False)
    tx.take_actions()
    busy = make_response(inv, 486, to_tag="b1")
    tx.respond(busy, T0 + 1)
    tx.take_actions()
    ack = make_ack_for_non_2xx(inv, busy)
    assert server_key(ack) == tx.key
    tx.receive(ack, T0 + 1.2)
    assert state(tx) is S.CONFIRMED
    assert tx.take_actions() == []  # the ACK of a non-2xx is the transaction's: the TU never sees it
    assert tx.next_deadline() == T0 + 1.2 + 5  # Timer I = T4
    tx.receive(ack, T0 + 2)
    tx.receive(inv, T0 + 2)
    assert tx.take_actions() == []
    assert run_timers(tx, T0 + 100) == [(T0 + 6.2, [Terminated()])]


def test_invite_server_non_2xx_reliable() -> None:
    inv = request(transport="TCP")
    tx = InviteServerTransaction(inv, T0, reliable=True)
    tx.take_actions()
    tx.respond(make_response(inv, 480, to_tag="b1"), T0 + 1)
    tx.take_actions()
    assert tx.next_deadline() == T0 + 33  # H only, no G
    tx.receive(make_ack_for_non_2xx(inv, make_response(inv, 480, to_tag="b1")), T0 + 2)
    assert tx.take_actions() == [Terminated()]  # Timer I is zero on a reliable transport
    assert state(tx) is S.TERMINATED


def test_invite_server_non_2xx_reliable_timer_h() -> None:
    inv = request(transport="TCP")
    tx = InviteServerTransaction(inv, T0, reliable=True)
    tx.respond(make_response(inv, 480, to_tag="b1"), T0)
    tx.take_actions()
    assert run_timers(tx, T0 + 100) == [(T0 + 32, [TransactionTimeout("H"), Terminated()])]


def test_invite_server_2xx_accepted_until_timer_l() -> None:
    inv = request()
    tx = InviteServerTransaction(inv, T0, reliable=False)
    tx.take_actions()
    ok = make_response(inv, 200, to_tag="b1")
    tx.respond(ok, T0 + 1)
    assert state(tx) is S.ACCEPTED
    assert tx.take_actions() == [SendMessage(ok)]
    assert tx.next_deadline() == T0 + 33  # Timer L
    tx.receive(inv, T0 + 1.5)  # retransmitted INVITE absorbed (RFC 6026 §8.5)
    assert tx.take_actions() == []
    tx.respond(ok, T0 + 1.5)  # the TU's own 2xx retransmission goes out through the transaction
    assert tx.take_actions() == [SendMessage(ok)]
    with pytest.raises(LocalProtocolError, match=r"cannot send a 486 \(final\) in state accepted"):
        tx.respond(make_response(inv, 486, to_tag="b1"), T0 + 2)
    assert run_timers(tx, T0 + 100) == [(T0 + 33, [Terminated()])]


def test_invite_server_accepted_delivers_a_matching_ack() -> None:
    # only an RFC 2543 ACK (no magic cookie) can match the INVITE server transaction of a 2xx
    inv = request(branch="oldstyle-1")
    tx = InviteServerTransaction(inv, T0, reliable=False)
    tx.respond(make_response(inv, 200, to_tag="b1"), T0)
    tx.take_actions()
    ack = request("ACK", branch="oldstyle-1", to_tag="b1")
    assert server_key(ack) == tx.key
    tx.receive(ack, T0 + 0.1)
    assert tx.take_actions() == [DeliverRequest(ack)]


def test_invite_server_cancel_answers_487_while_proceeding() -> None:
    inv = request()
    tx = InviteServerTransaction(inv, T0, reliable=False)
    tx.respond(make_response(inv, 180, to_tag="b1"), T0)
    tx.take_actions()
    assert tx.may_cancel
    assert tx.cancel(T0 + 1) is True
    (terminated,) = sent(tx.take_actions())
    assert isinstance(terminated, Response)
    assert (terminated.status, terminated.to.tag) == (487, "b1")
    assert state(tx) is S.COMPLETED
    assert tx.cancel(T0 + 2) is False


def test_invite_server_responds_twice_final_is_our_bug() -> None:
    inv = request()
    tx = InviteServerTransaction(inv, T0, reliable=False)
    tx.respond(make_response(inv, 486, to_tag="b1"), T0)
    with pytest.raises(LocalProtocolError, match="state completed"):
        tx.respond(make_response(inv, 200, to_tag="b1"), T0)
    with pytest.raises(LocalProtocolError, match="a BYE was routed"):
        tx.receive(request("BYE"), T0)


@pytest.mark.parametrize("before", ["proceeding", "completed"])
def test_invite_server_transport_error(before: str) -> None:
    inv = request()
    tx = InviteServerTransaction(inv, T0, reliable=False)
    if before == "completed":
        tx.respond(make_response(inv, 500, to_tag="b1"), T0)
    tx.take_actions()
    tx.transport_error(T0 + 1, "TCP reset")
    assert tx.take_actions() == [TransportFailure("TCP reset"), Terminated()]
    assert tx.next_deadline() is None


# ---------------------------------------------------------------------------------------------------------
# non-INVITE server (§17.2.2)


def test_non_invite_server_unreliable() -> None:
    bye = request("BYE", to_tag="b1", cseq=2)
    tx = NonInviteServerTransaction(bye, T0, reliable=False)
    assert state(tx) is S.TRYING
    assert tx.take_actions() == [DeliverRequest(bye)]
    tx.receive(bye, T0 + 0.5)  # retransmission before any response: absorbed
    assert tx.take_actions() == []
    trying = make_response(bye, 100)
    tx.respond(trying, T0 + 0.6)
    assert state(tx) is S.PROCEEDING
    tx.receive(bye, T0 + 1)
    assert sent(tx.take_actions()) == [trying, trying]
    ok = make_response(bye, 200)
    tx.respond(ok, T0 + 2)
    assert state(tx) is S.COMPLETED
    tx.receive(bye, T0 + 3)
    assert sent(tx.take_actions()) == [ok, ok]
    with pytest.raises(LocalProtocolError, match="a final response was already sent"):
        tx.respond(make_response(bye, 500), T0 + 3)
    assert run_timers(tx, T0 + 100) == [(T0 + 34, [Terminated()])]  # Timer J = 64*T1


def test_non_invite_server_reliable_terminates_at_once() -> None:
    opts = request("OPTIONS", transport="TCP")
    tx = NonInviteServerTransaction(opts, T0, reliable=True)
    tx.take_actions()
    tx.respond(make_response(opts, 200), T0)
    assert [type(a) for a in tx.take_actions()] == [SendMessage, Terminated]
    tx.receive(opts, T0 + 1)
    assert tx.take_actions() == []


def test_non_invite_server_transport_error() -> None:
    tx = NonInviteServerTransaction(request("OPTIONS"), T0, reliable=False)
    tx.take_actions()
    tx.transport_error(T0, "unreachable")
    assert tx.take_actions() == [TransportFailure("unreachable"), Terminated()]


# ---------------------------------------------------------------------------------------------------------
# Matching (§17.1.3, §17.2.3)


def test_client_key_matches_responses_by_branch_and_cseq_method() -> None:
    inv = request()
    assert client_key(inv) == ("z9hG4bK-test-1", "INVITE")
    assert client_key(reply(inv, 180)) == client_key(inv)
    cancel = make_cancel(inv)
    assert client_key(reply(cancel, 200)) == ("z9hG4bK-test-1", "CANCEL") != client_key(inv)


def test_server_key_rfc3261() -> None:
    inv = request()
    ack = make_ack_for_non_2xx(inv, make_response(inv, 486, to_tag="b1"))
    cancel = make_cancel(inv)
    assert server_key(inv) == ("3261", "z9hG4bK-test-1", "10.0.0.1", "5060", "INVITE")
    assert server_key(ack) == server_key(inv)
    assert server_key(cancel) != server_key(inv)  # CANCEL has its own transaction
    assert cancel_target_key(cancel) == server_key(inv)
    assert server_key(request(via="10.0.0.1")) == server_key(inv)  # default port
    assert server_key(request(via="10.0.0.1:5070")) != server_key(inv)  # another sent-by
    assert server_key(request(branch="z9hG4bK-other")) != server_key(inv)
    # an ACK for a 2xx has a new branch: it does not match (it goes to the dialog)
    assert server_key(request("ACK", branch=new_branch(), to_tag="b1")) != server_key(inv)
    with pytest.raises(LocalProtocolError, match="needs a CANCEL"):
        cancel_target_key(inv)


def test_server_key_rfc2543_fallback() -> None:
    inv = request(branch="1")
    ack = request("ACK", branch="1", to_tag="b1")
    assert server_key(inv)[0] == "2543"
    assert server_key(ack) == server_key(inv)
    assert server_key(request("ACK", branch="1", to_tag="b1", cseq=2)) != server_key(inv)
    assert server_key(request(branch="1", call_id="other")) != server_key(inv)
    assert server_key(request(branch="1", from_tag="other")) != server_key(inv)
    assert server_key(request(branch="1", uri="sip:carol@10.0.0.2")) != server_key(inv)
    cancel = make_cancel(inv)
    assert server_key(cancel) != server_key(inv)
    assert cancel_target_key(cancel) == server_key(inv)
    # outside INVITE/ACK the To tag takes part
    bye1 = request("BYE", branch="1", to_tag="b1", cseq=2)
    bye2 = request("BYE", branch="1", to_tag="b2", cseq=2)
    assert server_key(bye1) != server_key(bye2)
    # no branch at all is RFC 2543 too
    nobranch = parse_message(bytes(inv).replace(b";branch=1", b""))
    assert isinstance(nobranch, Request)
    assert server_key(nobranch)[0] == "2543"


# ---------------------------------------------------------------------------------------------------------
# Builders


def test_make_response_copies_the_right_headers() -> None:
    inv = request(
        extra=(
            "Via: SIP/2.0/UDP proxy.example.org;branch=z9hG4bK-p1\r\n"
            "Record-Route: <sip:p1.example.org;lr>, <sip:p2.example.org;lr>\r\n"
            "Timestamp: 54\r\n"
        )
    )
    ok = wire(make_response(inv, 200, to_tag="b1", body=b"v=0\r\n", content_type="application/sdp"))
    assert isinstance(ok, Response)
    assert (ok.status, ok.reason) == (200, "OK")
    assert ok.headers.get_all("Via") == inv.headers.get_all("Via")
    assert ok.from_ == inv.from_
    assert ok.call_id == inv.call_id
    assert ok.cseq == inv.cseq
    assert ok.to == inv.to.with_tag("b1")
    assert ok.headers.get_all("Record-Route") == ["<sip:p1.example.org;lr>", "<sip:p2.example.org;lr>"]
    assert ok.body == b"v=0\r\n"
    assert ok.content_type == "application/sdp"
    assert "Timestamp" not in ok.headers
    trying = make_response(inv, 100)
    assert trying.headers.get("Timestamp") == "54"
    assert trying.to.tag is None
    assert "Record-Route" not in trying.headers
    busy = make_response(inv, 486, to_tag="b1", headers=[("Retry-After", "30")])
    assert "Record-Route" not in busy.headers
    assert (busy.reason, busy.headers.get("Retry-After")) == ("Busy Here", "30")
    assert make_response(inv, 299).reason == ""
    assert make_response(inv, 486, "Gone Fishing").reason == "Gone Fishing"
    # an in-dialog request keeps its To tag
    bye = request("BYE", to_tag="b1", cseq=2)
    assert make_response(bye, 200, to_tag="ignored").to.tag == "b1"
    with pytest.raises(LocalProtocolError, match="status 99"):
        make_response(inv, 99)


def test_make_cancel() -> None:
    inv = request(extra="Route: <sip:proxy.example.org;lr>\r\n", cseq=7)
    cancel = wire(make_cancel(inv))
    assert isinstance(cancel, Request)
    assert (cancel.method, cancel.uri, cancel.cseq) == ("CANCEL", inv.uri, (7, "CANCEL"))
    assert cancel.headers.get_all("Via") == inv.headers.get_all("Via")[:1]
    assert cancel.to == inv.to
    assert cancel.from_ == inv.from_
    assert cancel.call_id == inv.call_id
    assert cancel.headers.get_all("Route") == ["<sip:proxy.example.org;lr>"]
    with pytest.raises(LocalProtocolError, match="needs an INVITE"):
        make_cancel(request("BYE"))


def test_make_ack_for_non_2xx_refuses_a_2xx() -> None:
    inv = request()
    with pytest.raises(LocalProtocolError, match="3xx-6xx"):
        make_ack_for_non_2xx(inv, make_response(inv, 200, to_tag="x"))


def test_random_identifiers() -> None:
    branches = {new_branch() for _ in range(100)}
    assert len(branches) == 100
    assert all(b.startswith(MAGIC_COOKIE) and len(b) == len(MAGIC_COOKIE) + 16 for b in branches)
    assert len({new_tag() for _ in range(100)}) == 100
    assert new_call_id("10.0.0.1").endswith("@10.0.0.1")
    assert "@" not in new_call_id()


# ---------------------------------------------------------------------------------------------------------
# Properties: whatever the network and the clock do, the machines keep their promises


_STATUSES = st.sampled_from([100, 180, 183, 200, 202, 302, 404, 486, 487, 500, 603])
_CLIENT_EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("response"), _STATUSES),
        st.tuples(st.just("wait"), st.floats(min_value=0, max_value=40)),
        st.tuples(st.just("error"), st.just(0)),
        st.tuples(st.just("cancel"), st.just(0)),
    ),
    max_size=25,
)
_SERVER_EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("respond"), _STATUSES),
        st.tuples(st.just("retransmission"), st.just(0)),
        st.tuples(st.just("ack"), st.just(0)),
        st.tuples(st.just("wait"), st.floats(min_value=0, max_value=40)),
        st.tuples(st.just("error"), st.just(0)),
    ),
    max_size=25,
)


def _check_stream(tx: Tx, stream: list[Action], now: float) -> None:
    terminations = [i for i, a in enumerate(stream) if isinstance(a, Terminated)]
    assert len(terminations) <= 1
    if terminations:
        assert terminations[0] == len(stream) - 1  # nothing after Terminated
        assert state(tx) is S.TERMINATED
        assert tx.next_deadline() is None
    deadline = tx.next_deadline()
    assert deadline is None or deadline > now


@settings(max_examples=300, deadline=None)
@given(invite=st.booleans(), reliable=st.booleans(), events=_CLIENT_EVENTS)
def test_client_transactions_keep_their_promises(
    invite: bool, reliable: bool, events: list[tuple[str, float]]
) -> None:
    req = request() if invite else request("OPTIONS")
    now = T0
    tx: InviteClientTransaction | NonInviteClientTransaction
    if invite:
        tx = InviteClientTransaction(req, now, reliable=reliable)
    else:
        tx = NonInviteClientTransaction(req, now, reliable=reliable)
    stream = tx.take_actions()
    for kind, value in events:
        if kind == "response":
            tx.receive(reply(req, int(value)), now)
        elif kind == "wait":
            now += value
            tx.on_timer(now)
        elif kind == "error":
            tx.transport_error(now, "boom")
        elif isinstance(tx, InviteClientTransaction):
            tx.cancel_sent(now)
        stream += tx.take_actions()
        _check_stream(tx, stream, now)
    finals = [a for a in stream if isinstance(a, DeliverResponse) and a.response.status >= 300]
    assert len(finals) <= 1  # a non-2xx final reaches the TU once
    if state(tx) is not S.TERMINATED:
        # a live transaction always has a timer, except an INVITE waiting in proceeding for its final answer
        assert tx.next_deadline() is not None or state(tx) is S.PROCEEDING


@settings(max_examples=300, deadline=None)
@given(invite=st.booleans(), reliable=st.booleans(), events=_SERVER_EVENTS)
def test_server_transactions_keep_their_promises(
    invite: bool, reliable: bool, events: list[tuple[str, float]]
) -> None:
    req = request() if invite else request("OPTIONS")
    now = T0
    tx: InviteServerTransaction | NonInviteServerTransaction
    if invite:
        tx = InviteServerTransaction(req, now, reliable=reliable)
    else:
        tx = NonInviteServerTransaction(req, now, reliable=reliable)
    stream = tx.take_actions()
    final: Response | None = None
    for kind, value in events:
        if kind == "respond":
            try:
                response = make_response(req, int(value), to_tag="b1")
                tx.respond(response, now)
                if value >= 200 and final is None:
                    final = response
            except LocalProtocolError:
                assert final is not None or state(tx) is S.TERMINATED  # only after a final response
        elif kind == "retransmission":
            tx.receive(req, now)
        elif kind == "ack":
            if isinstance(tx, InviteServerTransaction) and final is not None:
                tx.receive(make_ack_for_non_2xx(req, final) if final.status >= 300 else req, now)
        elif kind == "wait":
            now += value
            tx.on_timer(now)
        else:
            tx.transport_error(now, "boom")
        stream += tx.take_actions()
        _check_stream(tx, stream, now)
    assert [a for a in stream if isinstance(a, DeliverRequest)] == [DeliverRequest(req)]
    # after a final response, every response sent is that final (or, after a 2xx, another 2xx)
    if final is not None:
        index = next(i for i, a in enumerate(stream) if isinstance(a, SendMessage) and a.message is final)
        later = [a.message for a in stream[index:] if isinstance(a, SendMessage)]
        assert all(isinstance(m, Response) and m.status // 100 == final.status // 100 for m in later)
