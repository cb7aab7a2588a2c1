"""The races of INVITE, played at core level between a UAC and a UAS built from the transaction and dialog
cores: every message crosses a byte boundary (render + parse), time is a FakeClock, and the "UA" glue in this
file is the minimum an asyncio user agent does (transaction table by key, ACK for 2xx to the dialog).

Covered: a 200 crossing a CANCEL; two 200s from a forked INVITE (two dialogs); an ACK lost and the 2xx
retransmitted; a retransmitted INVITE absorbed by the server transaction; a late 2xx after CANCEL (the UAC
must ACK, then BYE); no ACK at all (the UAS gives up and sends BYE); a normal CANCEL (487 and its ACK)."""

from __future__ import annotations

from dataclasses import dataclass, field

from comms.clock import FakeClock
from sip.dialog import AckTimeout, AnswerRetransmitter, Dialog, DialogState, tear_down_late_answer
from sip.message import Request, Response, Via, parse_message
from sip.transaction import (
    Action,
    DeliverRequest,
    DeliverResponse,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    SendMessage,
    Terminated,
    TransactionState,
    cancel_target_key,
    make_cancel,
    make_response,
    new_branch,
    server_key,
)

UAC_VIA = "10.0.0.1:5060"
UAS_CONTACT = "<sip:bob@10.0.0.2:5070>"
ServerTx = InviteServerTransaction | NonInviteServerTransaction
ClientTx = InviteClientTransaction | NonInviteClientTransaction


def via() -> Via:
    return Via("UDP", "10.0.0.1", 5060, (("branch", new_branch()),))


def wire(msg: Request | Response) -> Request | Response:
    return parse_message(bytes(msg))


def make_invite() -> Request:
    text = (
        "INVITE sip:bob@example.org SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {UAC_VIA};branch={new_branch()}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.org>;tag=alice-tag\r\n"
        "To: <sip:bob@example.org>\r\n"
        "Call-ID: race-1\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:alice@10.0.0.1:5060>\r\n"
        "\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


@dataclass
class Uas:
    """The UAS half: server transactions by key, one dialog, a 2xx retransmitter, and what reached the TU."""

    clock: FakeClock
    tag: str = "bob-tag"
    transactions: dict[tuple[str, ...], ServerTx] = field(default_factory=dict)
    delivered: list[Request] = field(default_factory=list)
    out: list[Request | Response] = field(default_factory=list)
    dialog: Dialog | None = None
    retransmitter: AnswerRetransmitter | None = None
    ack_timeouts: int = 0

    def receive(self, msg: Request) -> None:
        now = self.clock.monotonic()
        key = server_key(msg)
        tx = self.transactions.get(key)
        if tx is not None:
            tx.receive(msg, now)
        elif msg.method == "ACK":  # an ACK for our 2xx: a new branch, straight to the dialog (§17.2.3)
            assert self.dialog is not None
            self.dialog.receive_request(msg)
            self.delivered.append(msg)
            if self.retransmitter is not None:
                self.retransmitter.ack_received()
        elif msg.method == "INVITE":
            tx = self.transactions[key] = InviteServerTransaction(msg, now, reliable=False)
        else:
            tx = self.transactions[key] = NonInviteServerTransaction(msg, now, reliable=False)
        if tx is not None:
            self._perform(tx)

    def _perform(self, tx: ServerTx) -> None:
        for action in tx.take_actions():
            match action:
                case SendMessage(message):
                    self.out.append(message)
                case DeliverRequest(request):
                    self.delivered.append(request)
                    if request.to.tag and self.dialog is not None:  # an in-dialog request
                        self.dialog.receive_request(request)
                case Terminated():
                    self.transactions.pop(tx.key, None)
                case _:
                    pass

    def invite_tx(self) -> InviteServerTransaction:
        (tx,) = [t for t in self.transactions.values() if isinstance(t, InviteServerTransaction)]
        return tx

    def respond(self, tx: ServerTx, status: int) -> Response:
        now = self.clock.monotonic()
        headers = [("Contact", UAS_CONTACT)] if status < 300 and tx.request.method == "INVITE" else []
        response = make_response(tx.request, status, to_tag=self.tag, headers=headers)
        if status // 100 == 2 and tx.request.method == "INVITE":
            self.dialog = Dialog.uas(tx.request, self.tag, UAS_CONTACT)
            self.dialog.confirm()
            self.retransmitter = AnswerRetransmitter(response, now)
        tx.respond(response, now)
        self._perform(tx)
        return response

    def handle_cancel(self, cancel: Request) -> None:
        """§9.2: answer the CANCEL 200; a 487 for the INVITE only if it was still unanswered."""
        self.receive(cancel)
        cancel_tx = self.transactions[server_key(cancel)]
        target = self.transactions.get(cancel_target_key(cancel))
        assert isinstance(target, InviteServerTransaction)
        self.respond(cancel_tx, 200)
        if target.cancel(self.clock.monotonic(), to_tag=self.tag):
            self._perform(target)

    def tick(self) -> None:
        now = self.clock.monotonic()
        for tx in list(self.transactions.values()):
            tx.on_timer(now)
            self._perform(tx)
        if self.retransmitter is not None:
            self.retransmitter.on_timer(now)
            for action in self.retransmitter.take_actions():
                match action:
                    case SendMessage(message):
                        assert isinstance(message, Response)
                        self.invite_tx().respond(message, now)  # through the transaction (RFC 6026)
                        self._perform(self.invite_tx())
                    case AckTimeout():
                        self.ack_timeouts += 1
                        assert self.dialog is not None
                        self.out.append(self.dialog.new_request("BYE", via=via()))

    def take(self) -> list[Request | Response]:
        out, self.out = self.out, []
        return [wire(m) for m in out]


@dataclass
class Uac:
    clock: FakeClock
    invite: Request = field(default_factory=make_invite)
    tx: InviteClientTransaction | None = None
    responses: list[Response] = field(default_factory=list)
    out: list[Request | Response] = field(default_factory=list)

    def start(self) -> None:
        self.tx = InviteClientTransaction(self.invite, self.clock.monotonic(), reliable=False)
        self._perform(self.tx)

    def _perform(self, tx: ClientTx) -> list[Response]:
        got: list[Response] = []
        for action in tx.take_actions():
            match action:
                case SendMessage(message):
                    self.out.append(message)
                case DeliverResponse(response):
                    got.append(response)
                case _:
                    pass
        self.responses += got
        return got

    def perform(self, tx: ClientTx) -> list[Response]:
        """Carry out what a client transaction (ours or another one of this UA) asks for."""
        return self._perform(tx)

    def receive(self, response: Response, tx: ClientTx | None = None) -> list[Response]:
        tx = tx or self.tx
        assert tx is not None
        tx.receive(response, self.clock.monotonic())
        return self._perform(tx)

    def tick(self) -> list[Action]:
        assert self.tx is not None
        self.tx.on_timer(self.clock.monotonic())
        actions = self.tx.take_actions()
        self.out += [a.message for a in actions if isinstance(a, SendMessage)]
        return actions

    def take(self) -> list[Request | Response]:
        out, self.out = self.out, []
        return [wire(m) for m in out]


def only(msgs: list[Request | Response]) -> Request | Response:
    assert len(msgs) == 1, msgs
    return msgs[0]


def as_request(msg: Request | Response) -> Request:
    assert isinstance(msg, Request)
    return msg


def as_response(msg: Request | Response) -> Response:
    assert isinstance(msg, Response)
    return msg


def ring(uac: Uac, uas: Uas) -> InviteServerTransaction:
    """INVITE → UAS, 180 → UAC."""
    uac.start()
    uas.receive(as_request(only(uac.take())))
    ist = uas.invite_tx()
    uas.respond(ist, 180)
    uac.receive(as_response(only(uas.take())))
    assert uac.tx is not None
    assert uac.tx.may_cancel
    return ist


# ---------------------------------------------------------------------------------------------------------


def test_200_crossing_cancel() -> None:
    clock = FakeClock()
    uac, uas = Uac(clock), Uas(clock)
    ist = ring(uac, uas)
    # both sides act at the same instant: the UAS answers, the UAC cancels
    ok = as_response(wire(uas.respond(ist, 200)))
    assert uac.tx is not None
    cancel = make_cancel(uac.invite)
    cancel_tx = NonInviteClientTransaction(cancel, clock.monotonic(), reliable=False)
    uac.tx.cancel_sent(clock.monotonic())
    uac.perform(cancel_tx)
    # the UAS gets the CANCEL after its 200: the CANCEL is answered 200, the INVITE is not touched
    uas.take()
    uas.handle_cancel(as_request(only(uac.take())))
    assert ist.state is TransactionState.ACCEPTED
    cancel_ok = as_response(only(uas.take()))
    assert (cancel_ok.status, cancel_ok.cseq[1]) == (200, "CANCEL")
    # the UAC gets the 200 for the INVITE, then the 200 for the CANCEL
    assert uac.receive(ok) == [ok]
    assert uac.receive(cancel_ok, cancel_tx) == [cancel_ok]
    assert uac.tx.state is TransactionState.ACCEPTED
    # it wanted no call: ACK the 2xx, then BYE (§15)
    dialog, ack, bye = tear_down_late_answer(uac.invite, ok, via_ack=via(), via_bye=via())
    assert ack.cseq == (1, "ACK")
    assert bye.cseq == (2, "BYE")
    uas.receive(as_request(wire(ack)))
    assert uas.retransmitter is not None
    assert uas.retransmitter.next_deadline() is None  # ACKed: no more 2xx
    bye_tx = NonInviteClientTransaction(as_request(wire(bye)), clock.monotonic(), reliable=False)
    uac.perform(bye_tx)
    uas.receive(as_request(only(uac.take())))
    assert uas.dialog is not None
    assert uas.dialog.state is DialogState.TERMINATED
    (bye_server_tx,) = [t for t in uas.transactions.values() if t.request.method == "BYE"]
    uas.respond(bye_server_tx, 200)
    assert uac.receive(as_response(only(uas.take())), bye_tx)[0].status == 200
    assert dialog.state is DialogState.TERMINATED
    # Timer M then ends the INVITE client transaction; nothing times out
    clock.advance(32)
    assert [type(a) for a in uac.tick()] == [Terminated]


def test_cancel_before_answer_gets_487_and_the_transaction_acks_it() -> None:
    clock = FakeClock()
    uac, uas = Uac(clock), Uas(clock)
    ist = ring(uac, uas)
    assert uac.tx is not None
    uac.tx.cancel_sent(clock.monotonic())
    uas.handle_cancel(make_cancel(uac.invite))
    cancel_ok, terminated = (as_response(m) for m in uas.take())
    assert (cancel_ok.status, terminated.status) == (200, 487)
    assert terminated.to.tag == "bob-tag"
    assert uac.receive(terminated) == [terminated]
    ack = as_request(only(uac.take()))
    assert ack.method == "ACK"
    assert ack.top_via.branch == uac.invite.top_via.branch
    uas.receive(ack)
    assert ist.state is TransactionState.CONFIRMED
    assert [m.method for m in uas.delivered] == ["INVITE", "CANCEL"]  # the ACK stayed in the transaction


def test_two_200s_from_a_fork_make_two_dialogs() -> None:
    clock = FakeClock()
    uac = Uac(clock)
    uac.start()
    inv = as_request(only(uac.take()))
    # a forking proxy delivered the INVITE to two phones; both answer, with different To tags and Contacts
    ok1 = as_response(
        wire(make_response(inv, 200, to_tag="phone-1", headers=[("Contact", "<sip:b@10.0.0.11>")]))
    )
    ok2 = as_response(
        wire(make_response(inv, 200, to_tag="phone-2", headers=[("Contact", "<sip:b@10.0.0.12>")]))
    )
    assert uac.receive(ok1) == [ok1]
    assert uac.receive(ok2) == [ok2]  # the transaction (accepted) passes the second 2xx up too
    d1 = Dialog.uac(uac.invite, ok1)
    d2, ack2, bye2 = tear_down_late_answer(uac.invite, ok2, via_ack=via(), via_bye=via())
    assert d1.id != d2.id
    ack1 = d1.ack(ok1, via=via())
    assert (ack1.to.tag, str(ack1.uri)) == ("phone-1", "sip:b@10.0.0.11")
    assert (ack2.to.tag, str(ack2.uri)) == ("phone-2", "sip:b@10.0.0.12")
    assert (bye2.to.tag, str(bye2.uri), bye2.cseq) == ("phone-2", "sip:b@10.0.0.12", (2, "BYE"))
    assert d1.state is DialogState.CONFIRMED
    assert d1.new_request("INFO").cseq == (2, "INFO")  # each dialog counts its own CSeq


def test_ack_lost_and_2xx_retransmitted() -> None:
    clock = FakeClock()
    uac, uas = Uac(clock), Uas(clock)
    ist = ring(uac, uas)
    ok = as_response(wire(uas.respond(ist, 200)))
    uas.take()
    assert uac.receive(ok) == [ok]
    dialog = Dialog.uac(uac.invite, ok)
    first_ack = dialog.ack(ok, via=via())  # ... and the network loses it
    clock.advance(0.5)
    uas.tick()
    again = as_response(only(uas.take()))  # the UAS's 2xx retransmission, through the transaction
    assert again == ok
    assert uac.receive(again) == [again]  # accepted state: delivered so the TU re-ACKs
    assert dialog.ack(again) is first_ack
    uas.receive(as_request(wire(first_ack)))
    assert uas.delivered[-1].method == "ACK"
    clock.advance(60)
    uas.tick()
    assert uas.take() == []  # no more 2xx after the ACK
    assert uas.ack_timeouts == 0
    assert ist.state is TransactionState.TERMINATED  # Timer L


def test_no_ack_at_all_the_uas_gives_up_and_sends_bye() -> None:
    clock = FakeClock()
    uac, uas = Uac(clock), Uas(clock)
    ist = ring(uac, uas)
    uas.respond(ist, 200)
    uas.take()
    retransmissions = 0
    for _ in range(400):
        clock.advance(0.25)
        uas.tick()
        for msg in uas.take():
            if isinstance(msg, Response):
                retransmissions += 1
            else:
                bye = msg
    assert retransmissions == 10  # 0.5, 1.5, 3.5, 7.5, then every T2 up to 31.5
    assert uas.ack_timeouts == 1
    assert bye.method == "BYE"
    assert bye.to.tag == "alice-tag"
    assert str(bye.uri) == "sip:alice@10.0.0.1:5060"


def test_retransmitted_invite_is_absorbed_by_the_server_transaction() -> None:
    clock = FakeClock()
    uac, uas = Uac(clock), Uas(clock)
    uac.start()
    uas.receive(as_request(only(uac.take())))
    assert [m.method for m in uas.delivered] == ["INVITE"]
    # the UAC's Timer A fires before the 100 Trying: the retransmission gets a 100 at once
    clock.advance(0.15)
    uas.tick()
    assert uas.take() == []
    clock.advance(0.35)
    uac.tick()
    uas.receive(as_request(only(uac.take())))
    trying = as_response(only(uas.take()))
    assert trying.status == 100
    uac.receive(trying)
    ist = uas.invite_tx()
    uas.respond(ist, 180)
    uas.take()
    # a late copy of the INVITE: the 180 again, nothing new for the TU
    uas.receive(uac.invite)
    assert as_response(only(uas.take())).status == 180
    uas.respond(ist, 200)
    uas.take()
    uas.receive(uac.invite)  # accepted: absorbed silently (RFC 6026)
    assert uas.take() == []
    assert [m.method for m in uas.delivered] == ["INVITE"]
    assert len(uas.transactions) == 1


def test_retransmitted_invite_after_a_failure_gets_the_failure_again() -> None:
    clock = FakeClock()
    uac, uas = Uac(clock), Uas(clock)
    uac.start()
    uas.receive(as_request(only(uac.take())))
    ist = uas.invite_tx()
    busy = uas.respond(ist, 486)
    uas.take()
    uas.receive(uac.invite)
    assert as_response(only(uas.take())) == as_response(wire(busy))
    assert [m.method for m in uas.delivered] == ["INVITE"]


def test_late_2xx_after_cancel_is_acked_then_byed() -> None:
    clock = FakeClock()
    uac, uas = Uac(clock), Uas(clock)
    ring(uac, uas)
    assert uac.tx is not None
    # the UAC cancels; the CANCEL's 200 comes back, but the UAS's 487 never does: a 200 arrives instead
    cancel_tx = NonInviteClientTransaction(make_cancel(uac.invite), clock.monotonic(), reliable=False)
    uac.tx.cancel_sent(clock.monotonic())
    uac.take()
    uac.perform(cancel_tx)
    uac.take()
    assert uac.receive(as_response(wire(make_response(cancel_tx.request, 200))), cancel_tx)[0].status == 200
    clock.advance(2)
    late = as_response(
        wire(make_response(uac.invite, 200, to_tag="bob-tag", headers=[("Contact", UAS_CONTACT)]))
    )
    assert uac.receive(late) == [late]
    dialog, ack, bye = tear_down_late_answer(uac.invite, late, via_ack=via(), via_bye=via())
    assert (ack.method, ack.cseq, ack.to.tag) == ("ACK", (1, "ACK"), "bob-tag")
    assert (bye.method, bye.cseq, bye.to.tag) == ("BYE", (2, "BYE"), "bob-tag")
    assert str(bye.uri) == "sip:bob@10.0.0.2:5070"
    # a retransmission of the late 2xx gets the same ACK again
    assert uac.receive(late) == [late]
    assert dialog.ack(late) is ack
    # the INVITE does not time out with B: it ended with a 2xx
    clock.advance(100)
    assert [type(a) for a in uac.tick()] == [Terminated]


def test_late_2xx_from_another_fork_after_a_failure_is_delivered() -> None:
    clock = FakeClock()
    uac = Uac(clock)
    uac.start()
    inv = as_request(only(uac.take()))
    busy = as_response(wire(make_response(inv, 486, to_tag="phone-1")))
    uac.receive(busy)
    assert as_request(only(uac.take())).method == "ACK"
    late = as_response(wire(make_response(inv, 200, to_tag="phone-2", headers=[("Contact", UAS_CONTACT)])))
    assert uac.receive(late) == [late]
    _, ack, bye = tear_down_late_answer(uac.invite, late, via_ack=via(), via_bye=via())
    assert ack.to.tag == bye.to.tag == "phone-2"
