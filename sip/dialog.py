"""SIP dialogs (RFC 3261 §12, §13.2.2.4, §13.3.1.4), as plain objects.

Theory of operation
-------------------
A dialog is the peer-to-peer relationship an INVITE creates: Call-ID, local tag and remote tag identify it;
it keeps the local and remote URIs, a local CSeq counter, the last remote CSeq, the route set and the remote
target.

* **UAC**: :meth:`Dialog.uac` builds one from the INVITE and a response carrying a To tag -- a 1xx makes an
  *early* dialog, a 2xx a *confirmed* one. The route set is the response's Record-Route, reversed; the remote
  target is its Contact. Each To tag is its own dialog: two 2xx from a forked INVITE make two dialogs.
  :meth:`Dialog.receive_response` moves an early dialog to confirmed on the 2xx (recomputing the route set,
  §13.2.2.4), refreshes the target on a 2xx to a re-INVITE, and ends the dialog on 481/408 (§12.2.1.2).
* **UAS**: :meth:`Dialog.uas` builds one from a received INVITE: route set = Record-Route in order, remote
  target = Contact, remote CSeq = the INVITE's. It is *early* until :meth:`Dialog.confirm` (call it when the
  2xx is sent).
* :meth:`Dialog.receive_request` checks an in-dialog request: a CSeq lower than the last one is refused with
  :class:`RequestRefused` (status 500, §12.2.2); a re-INVITE/UPDATE with a Contact refreshes the remote target
  (on receipt, not on our 2xx: we never refuse a target refresh); a BYE ends the dialog.
* :meth:`Dialog.new_request` builds BYE, INFO, re-INVITE, ... (§12.2.1.1): the local CSeq goes up by one;
  with a loose first route (``;lr``) the Request-URI is the remote target and Route is the route set; with a
  strict one the Request-URI is the first route and the remote target becomes the last Route.
  :meth:`Dialog.ack` builds the ACK for a 2xx with the INVITE's CSeq number (and gives back the same ACK when
  the 2xx is retransmitted, §13.2.2.4). :meth:`Dialog.next_hop` says where to send it.
* The caller adds the top Via (new branch) -- pass ``via=`` or prepend one before handing the request to a
  client transaction, since only the transport knows its sent-by address.

A late 2xx (after CANCEL, or from a second fork) is handled by the same pieces: ``Dialog.uac(invite, ok)``,
send ``dialog.ack(ok)``, then ``dialog.new_request("BYE")`` -- :func:`tear_down_late_answer` does the three
at once.

:class:`AnswerRetransmitter` is the UAS core's 2xx retransmission (§13.3.1.4): the 2xx again at T1, 2·T1,
... capped at T2, until the ACK arrives; after 64·T1 without ACK it reports :class:`AckTimeout` so the UA
sends BYE. It retransmits on every transport: a proxy on the path may use UDP.
"""

from __future__ import annotations

import enum
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, replace

from sip.errors import LocalProtocolError, RemoteProtocolError
from sip.message import URI, Headers, NameAddr, Request, Response, Via
from sip.transaction import DEFAULT_TIMERS, SendMessage, Timers

log = logging.getLogger(__name__)

__all__ = [
    "AckTimeout",
    "AnswerRetransmitter",
    "Dialog",
    "DialogState",
    "RequestRefused",
    "next_hop",
    "request_dialog_id",
    "response_dialog_id",
    "tear_down_late_answer",
]

# Requests whose Contact replaces the remote target (§12.2, RFC 3311).
TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE"})
# Requests that carry our Contact.
_CONTACT_METHODS = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})
# Parameters that may not appear in a Request-URI (§19.1.1, table 1).
_NOT_IN_REQUEST_URI = frozenset({"method", "lr"})


class RequestRefused(RemoteProtocolError):
    """A request the dialog refuses: answer it with ``status`` (500 out of order, 481 wrong dialog)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


DialogId = tuple[str, str, str]


def request_dialog_id(request: Request) -> DialogId:
    """The dialog id of a *received* request, on our side: (Call-ID, To tag, From tag)."""
    return (request.call_id, request.to.tag or "", request.from_.tag or "")


def response_dialog_id(response: Response) -> DialogId:
    """The dialog id of a *received* response, on our side: (Call-ID, From tag, To tag)."""
    return (response.call_id, response.from_.tag or "", response.to.tag or "")


def next_hop(request: Request) -> URI:
    """Where an out-of-dialog request goes (§8.1.2): the first (pre-loaded, loose) Route or the Request-URI.

    For in-dialog requests use :meth:`Dialog.next_hop`, which also covers a strict first route.
    """
    routes = request.headers.get_all("Route")
    return NameAddr.parse(routes[0]).uri if routes else request.uri


def _without_tag(addr: NameAddr) -> NameAddr:
    return replace(addr, params=tuple((k, v) for k, v in addr.params if k != "tag"))


def _as_name_addr(contact: URI | NameAddr | str) -> NameAddr:
    if isinstance(contact, NameAddr):
        return contact
    if isinstance(contact, URI):
        return NameAddr(contact)
    return NameAddr.parse(contact)


class Dialog:
    """One dialog (§12). Build with :meth:`uac` or :meth:`uas`."""

    def __init__(
        self,
        *,
        role: str,
        call_id: str,
        local_tag: str,
        remote_tag: str,
        local_uri: NameAddr,
        remote_uri: NameAddr,
        local_contact: NameAddr,
        remote_target: URI,
        route_set: list[NameAddr],
        local_seq: int,
        remote_seq: int | None,
        state: DialogState,
        secure: bool,
    ) -> None:
        self.role = role
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.local_uri = _without_tag(local_uri)
        self.remote_uri = _without_tag(remote_uri)
        self.local_contact = local_contact
        self.remote_target = remote_target
        self.route_set = route_set
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.state = state
        self.secure = secure
        self.invite_seq: int | None = local_seq if role == "uac" else None  # CSeq of our last INVITE
        self._initial_invite_seq = self.invite_seq
        self._acks: dict[int, Request] = {}
        log.debug("dialog %s created (%s) in state %s", self._label, role, state.value)

    # --- construction ---------------------------------------------------------------------------------------
    @classmethod
    def uac(cls, invite: Request, response: Response) -> Dialog:
        """The dialog a 1xx (early) or 2xx (confirmed) response with a To tag creates at the UAC (§12.1.2)."""
        if invite.method != "INVITE" or not 101 <= response.status <= 299:
            raise LocalProtocolError(
                f"Dialog.uac needs an INVITE and a 101-299 response, "
                f"got {invite.method} and {response.status}"
            )
        remote_tag = response.to.tag
        if not remote_tag:
            raise RemoteProtocolError(
                f"a {response.status} to INVITE without a To tag cannot create a dialog"
            )
        local_tag = invite.from_.tag
        if not local_tag:
            raise LocalProtocolError("our INVITE has no From tag: cannot create a dialog")
        contact = response.contact
        if contact is None:
            log.info("a %d to INVITE has no Contact: using the Request-URI as remote target", response.status)
        local_contact = invite.contact
        return cls(
            role="uac",
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=invite.from_,
            remote_uri=response.to,
            local_contact=local_contact if local_contact is not None else invite.from_,
            remote_target=contact.uri if contact is not None else invite.uri,
            route_set=list(reversed(response.record_route)),
            local_seq=invite.cseq[0],
            remote_seq=None,
            state=DialogState.CONFIRMED if response.status >= 200 else DialogState.EARLY,
            secure=invite.uri.scheme == "sips",
        )

    @classmethod
    def uas(cls, invite: Request, local_tag: str, local_contact: URI | NameAddr | str) -> Dialog:
        """The dialog a received INVITE creates at the UAS (§12.1.1); early until :meth:`confirm`."""
        if invite.method != "INVITE":
            raise LocalProtocolError(f"Dialog.uas needs an INVITE, got {invite.method}")
        contact = invite.contact
        if contact is None:
            raise RequestRefused("an INVITE without Contact cannot create a dialog", 400)
        remote_tag = invite.from_.tag
        if not remote_tag:
            raise RequestRefused("an INVITE without a From tag cannot create a dialog", 400)
        return cls(
            role="uas",
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=invite.to,
            remote_uri=invite.from_,
            local_contact=_as_name_addr(local_contact),
            remote_target=contact.uri,
            route_set=list(invite.record_route),
            local_seq=secrets.randbelow(2**16) + 1,  # §8.1.1.5: any start below 2**31
            remote_seq=invite.cseq[0],
            state=DialogState.EARLY,
            secure=invite.uri.scheme == "sips",
        )

    # --- identity -------------------------------------------------------------------------------------------
    @property
    def id(self) -> DialogId:
        """(Call-ID, local tag, remote tag), as :func:`request_dialog_id` and :func:`response_dialog_id`."""
        return (self.call_id, self.local_tag, self.remote_tag)

    @property
    def _label(self) -> str:
        return f"{self.call_id[:12]}/{self.local_tag}/{self.remote_tag}"

    def _set_state(self, new: DialogState) -> None:
        if new is self.state:
            return
        log.debug("dialog %s: %s -> %s", self._label, self.state.value, new.value)
        self.state = new

    def confirm(self) -> None:
        """UAS: our 2xx to the INVITE was sent; the dialog is confirmed."""
        match self.state:
            case DialogState.EARLY:
                self._set_state(DialogState.CONFIRMED)
            case DialogState.CONFIRMED:
                pass
            case DialogState.TERMINATED:
                raise LocalProtocolError(f"dialog {self._label}: cannot confirm a terminated dialog")

    def terminate(self) -> None:
        """The dialog is over (BYE sent or answered, or the call failed)."""
        self._set_state(DialogState.TERMINATED)

    # --- input ----------------------------------------------------------------------------------------------
    def receive_response(self, response: Response) -> None:
        """A response to a request of ours within this dialog (or to the INVITE that made it)."""
        seq, method = response.cseq
        status = response.status
        contact = response.contact
        match (self.state, method, status // 100):
            case (DialogState.EARLY, "INVITE", 1):
                if contact is not None:
                    self.remote_target = contact.uri
            case (DialogState.EARLY, "INVITE", 2) if seq == self._initial_invite_seq:
                self.route_set = list(reversed(response.record_route))  # §13.2.2.4: recomputed from the 2xx
                if contact is not None:
                    self.remote_target = contact.uri
                self._set_state(DialogState.CONFIRMED)
            case (DialogState.EARLY, "INVITE", 3 | 4 | 5 | 6) if seq == self._initial_invite_seq:
                self._set_state(DialogState.TERMINATED)  # §12.3: a non-2xx final ends the early dialog
            case (DialogState.CONFIRMED, m, 2) if m in TARGET_REFRESH_METHODS and contact is not None:
                self.remote_target = contact.uri  # §12.2.1.2: target refresh; the route set stays
            case (DialogState.EARLY | DialogState.CONFIRMED, _, _) if status in (408, 481):
                self._set_state(DialogState.TERMINATED)  # §12.2.1.2
            case _:
                pass

    def receive_request(self, request: Request) -> None:
        """Check and absorb an in-dialog request from the peer (§12.2.2).

        Raises :class:`RequestRefused` (status 481) if it is not for this dialog, or (status 500) if its
        CSeq is lower than the last one. ACK and CANCEL carry the CSeq number of their INVITE and are not
        counted.
        """
        if request_dialog_id(request) != self.id:
            raise RequestRefused(
                f"dialog {self._label}: {request.method} carries dialog id {request_dialog_id(request)}",
                481,
            )
        seq = request.cseq[0]
        match (request.method, self.remote_seq):
            case ("ACK" | "CANCEL", _):
                return
            case (_, int(last)) if seq < last:
                raise RequestRefused(
                    f"dialog {self._label}: {request.method} with CSeq {seq} is out of order: "
                    f"expected at least {last}",
                    500,
                )
            case _:
                self.remote_seq = seq
        contact = request.contact
        if request.method in TARGET_REFRESH_METHODS and contact is not None:
            self.remote_target = contact.uri
        if request.method == "BYE":
            self._set_state(DialogState.TERMINATED)

    # --- output ---------------------------------------------------------------------------------------------
    def next_hop(self) -> URI:
        """Where an in-dialog request goes: the first route (loose or strict), else the remote target."""
        return self.route_set[0].uri if self.route_set else self.remote_target

    def new_request(
        self,
        method: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        via: Via | str | None = None,
    ) -> Request:
        """A request within the dialog (§12.2.1.1); the local CSeq goes up by one (ACK: see :meth:`ack`).

        Without ``via`` the caller must prepend a Via with a fresh branch before sending.
        """
        match (method, self.state):
            case ("CANCEL", _):
                raise LocalProtocolError(
                    "a CANCEL is not an in-dialog request: build it with make_cancel(invite)"
                )
            case ("ACK", _):
                if self.invite_seq is None:
                    raise LocalProtocolError(f"dialog {self._label}: no INVITE of ours to acknowledge")
                return self._build("ACK", self.invite_seq, body, content_type, headers, via)
            case ("BYE", _):
                pass
            case (_, DialogState.TERMINATED):
                raise LocalProtocolError(
                    f"dialog {self._label}: cannot send {method} in state terminated: expected only BYE"
                )
            case _:
                pass
        self.local_seq += 1
        if method == "INVITE":
            self.invite_seq = self.local_seq
        return self._build(method, self.local_seq, body, content_type, headers, via)

    def ack(
        self,
        for_2xx: Response,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        via: Via | str | None = None,
    ) -> Request:
        """The ACK for a 2xx to our INVITE (§13.2.2.4), with the INVITE's CSeq number.

        Called again for a retransmitted 2xx with the same CSeq, it returns the very same ACK to re-send.
        """
        seq, method = for_2xx.cseq
        if method != "INVITE" or not 200 <= for_2xx.status <= 299:
            raise LocalProtocolError(f"Dialog.ack needs a 2xx to INVITE, got {for_2xx.status} to {method}")
        if seq in self._acks:
            return self._acks[seq]
        ack = self._build("ACK", seq, body, content_type, (), via)
        self._acks[seq] = ack
        return ack

    def _build(
        self,
        method: str,
        seq: int,
        body: bytes,
        content_type: str | None,
        extra: Iterable[tuple[str, str]],
        via: Via | str | None,
    ) -> Request:
        h = Headers()
        if via is not None:
            h.add("Via", str(via))
        if self.route_set and self.route_set[0].uri.param("lr") is None:
            # strict first route (§12.2.1.1): it becomes the Request-URI, the remote target the last Route
            first = self.route_set[0].uri
            uri = replace(
                first,
                params=tuple((k, v) for k, v in first.params if k not in _NOT_IN_REQUEST_URI),
                headers=(),
            )
            routes = [*self.route_set[1:], NameAddr(self.remote_target)]
        else:
            uri = self.remote_target
            routes = list(self.route_set)
        for route in routes:
            h.add("Route", str(route))
        h.add("Max-Forwards", "70")
        h.add("From", str(self.local_uri.with_tag(self.local_tag)))
        h.add("To", str(self.remote_uri.with_tag(self.remote_tag)))
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{seq} {method}")
        if method in _CONTACT_METHODS:
            h.add("Contact", str(self.local_contact))
        for name, value in extra:
            h.add(name, value)
        if body and content_type is not None:
            h.set("Content-Type", content_type)
        return Request(method, uri, h, body)


def tear_down_late_answer(
    invite: Request, response: Response, *, via_ack: Via | str | None = None, via_bye: Via | str | None = None
) -> tuple[Dialog, Request, Request]:
    """A 2xx we do not want (it crossed our CANCEL, or a second fork answered): the dialog, its ACK and a BYE.

    §15: the UAC must acknowledge every 2xx and then end the dialog; send the ACK, then the BYE (in a client
    transaction), and re-send the same ACK if the 2xx is retransmitted (``dialog.ack(response)`` returns it).
    """
    dialog = Dialog.uac(invite, response)
    ack = dialog.ack(response, via=via_ack)
    bye = dialog.new_request("BYE", via=via_bye)
    dialog.terminate()
    return dialog, ack, bye


# ------------------------------------------------------------------------------------------------------
# 2xx retransmission at the UAS


@dataclass(frozen=True)
class AckTimeout:
    """No ACK came for our 2xx within 64·T1 (§13.3.1.4): the UA must send BYE."""


RetransmitAction = SendMessage | AckTimeout


class AnswerRetransmitter:
    """Retransmits a UAS's 2xx until the ACK arrives (§13.3.1.4); the 2xx itself was sent by the transaction.

    Feed :meth:`on_timer` at :meth:`next_deadline`; perform :meth:`take_actions` (``SendMessage`` of the
    2xx, or one final ``AckTimeout``). :meth:`ack_received` stops it.
    """

    def __init__(self, response: Response, now: float, timers: Timers = DEFAULT_TIMERS) -> None:
        if not 200 <= response.status <= 299:
            raise LocalProtocolError(f"AnswerRetransmitter needs a 2xx, got {response.status}")
        self.response = response
        self.timers = timers
        self.waiting = True
        self.timed_out = False
        self._interval = timers.t1
        self._next: float | None = now + timers.t1
        self._give_up = now + 64 * timers.t1
        self._actions: list[RetransmitAction] = []

    def next_deadline(self) -> float | None:
        if not self.waiting:
            return None
        return min(self._next, self._give_up) if self._next is not None else self._give_up

    def on_timer(self, now: float) -> None:
        if not self.waiting:
            return
        if now >= self._give_up:
            log.info("no ACK for the %d to %s within 64*T1", self.response.status, self.response.call_id)
            self.waiting = False
            self.timed_out = True
            self._actions.append(AckTimeout())
            return
        if self._next is not None and now >= self._next:
            self._actions.append(SendMessage(self.response))
            self._interval = min(2 * self._interval, self.timers.t2)
            self._next = now + self._interval

    def ack_received(self) -> None:
        """The ACK for this 2xx arrived: stop."""
        self.waiting = False

    def take_actions(self) -> list[RetransmitAction]:
        out, self._actions = self._actions, []
        return out
