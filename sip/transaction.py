"""SIP transactions (RFC 3261 §17, with the RFC 6026 "Accepted" state), as pure state machines.

Theory of operation
-------------------
A transaction is a request and every response to it, with the retransmissions that an unreliable transport
needs. Four machines live here, named as in §17:

==============================  =====================================================  ===============
machine                         states                                                 timers
==============================  =====================================================  ===============
InviteClientTransaction         calling → proceeding → accepted | completed → term.    A, B, D, M
NonInviteClientTransaction      trying → proceeding → completed → terminated           E, F, K
InviteServerTransaction         proceeding → accepted | completed → confirmed → term.  100, G, H, I, L
NonInviteServerTransaction      trying → proceeding → completed → terminated           J
==============================  =====================================================  ===============

Each machine is sans-I/O: inputs carry ``now`` (monotonic seconds, from the adapter's clock), outputs are
frozen dataclass *actions* collected with :meth:`take_actions`, and :meth:`next_deadline` says when the
adapter must call :meth:`on_timer`. The adapter performs every action, in order:

* :class:`SendMessage` -- hand the message to the transport (the transaction already chose *what*; the
  transport knows *where*);
* :class:`DeliverResponse` / :class:`DeliverRequest` -- pass it to the transaction user (dialog/UA core);
* :class:`TransactionTimeout` -- Timer B, F or H fired: the TU treats it as a 408 (B, F) or a lost ACK (H);
* :class:`TransportFailure` -- the transport reported a fatal error (§17.1.4, §17.2.4);
* :class:`Terminated` -- the machine is finished; forget it (it is emitted exactly once, always last).

Choices, where the RFC leaves room:

* RFC 6026 is followed: a 2xx moves an INVITE client to *accepted* for Timer M (64·T1); retransmitted 2xx
  (and 2xx from other forks) are delivered to the TU, which re-sends its ACK or hangs up the extra dialog. An
  INVITE server moves to *accepted* for Timer L (64·T1) on a 2xx from the TU; it absorbs retransmitted
  INVITEs, passes further 2xx from the TU (retransmissions, see :class:`sip.dialog.AnswerRetransmitter`) to
  the transport, and delivers an ACK that matches it (only an RFC 2543 peer's ACK can: an RFC 3261 ACK for a
  2xx has a new branch and goes straight to the dialog).
* An INVITE server sends ``100 Trying`` itself when the TU has sent no provisional response
  ``Timers.trying_after`` seconds (default 0.2 s, §17.2.1) after the INVITE arrived, or at once when the
  INVITE is retransmitted before that. ``trying_after=0`` sends it immediately.
* On a reliable transport the timers §17 sets to zero (D, I, J, K, and no A/E/G retransmissions) do not
  exist: the machine passes through *completed*/*confirmed* to *terminated* at once.
* A 2xx that arrives after a 3xx-6xx (another fork answered late) is delivered to the TU, which must ACK and
  BYE it (:func:`sip.dialog.tear_down_late_answer`) rather than leave the callee's phone off-hook.
* Timer B stops counting once a provisional arrives (§17.1.1.2). After the TU sends a CANCEL it calls
  :meth:`InviteClientTransaction.cancel_sent`, which re-arms Timer B for 64·T1 (§9.1: no final response after
  CANCEL ⇒ consider the INVITE cancelled), reported as ``TransactionTimeout("B")``.
* A transport error in any live state ends the machine with ``TransportFailure`` then ``Terminated``.
* Unexpected input from the network (a response in the wrong state) is absorbed and logged; a wrong call
  from the TU (responding twice with a final status) raises :class:`LocalProtocolError`.

Matching (§17.1.3, §17.2.3) is in :func:`client_key` and :func:`server_key`; the builders of ACK for non-2xx,
CANCEL and responses (§17.1.1.3, §9.1, §8.2.6) and random branch/tag/Call-ID makers sit at the bottom.
"""

from __future__ import annotations

import enum
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sip.errors import LocalProtocolError
from sip.message import Headers, Request, Response

log = logging.getLogger(__name__)

MAGIC_COOKIE = "z9hG4bK"

__all__ = [
    "DEFAULT_TIMERS",
    "MAGIC_COOKIE",
    "REASON_PHRASES",
    "Action",
    "DeliverRequest",
    "DeliverResponse",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "SendMessage",
    "Terminated",
    "Timers",
    "TransactionState",
    "TransactionTimeout",
    "TransportFailure",
    "cancel_target_key",
    "client_key",
    "make_ack_for_non_2xx",
    "make_cancel",
    "make_response",
    "new_branch",
    "new_call_id",
    "new_tag",
    "server_key",
]


@dataclass(frozen=True)
class Timers:
    """Timer base values (RFC 3261 §17.1.1.1, table 4). Injectable so that tests and slow links can change
    them.

    ``timer_d`` is Timer D on an unreliable transport (">32 s"); ``trying_after`` is how long an INVITE
    server waits for a provisional response from the TU before it sends ``100 Trying`` itself (§17.2.1: 200
    ms).
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_d: float = 32.0
    trying_after: float = 0.2

    def __post_init__(self) -> None:
        if not (self.t1 > 0 and self.t2 >= self.t1 and self.t4 > 0):
            raise ValueError(
                f"invalid SIP timers t1={self.t1} t2={self.t2} t4={self.t4}: expected 0 < t1 <= t2, t4 > 0"
            )
        if self.timer_d < 0 or self.trying_after < 0:
            raise ValueError(
                f"invalid SIP timers timer_d={self.timer_d} trying_after={self.trying_after}: expected >= 0"
            )


DEFAULT_TIMERS = Timers()


# ------------------------------------------------------------------------------------------------------
# Actions


@dataclass(frozen=True)
class SendMessage:
    """Hand ``message`` to the transport."""

    message: Request | Response


@dataclass(frozen=True)
class DeliverResponse:
    """Pass a response up to the TU (client transactions)."""

    response: Response


@dataclass(frozen=True)
class DeliverRequest:
    """Pass a request up to the TU (server transactions)."""

    request: Request


@dataclass(frozen=True)
class TransactionTimeout:
    """Timer ``timer`` ("B", "F" or "H") fired: no answer (B, F: treat as 408) or no ACK (H)."""

    timer: str


@dataclass(frozen=True)
class TransportFailure:
    """The transport could not deliver a message of this transaction."""

    reason: str


@dataclass(frozen=True)
class Terminated:
    """The transaction is over: drop it from the transaction table."""


Action = SendMessage | DeliverResponse | DeliverRequest | TransactionTimeout | TransportFailure | Terminated


class TransactionState(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


S = TransactionState


def _klass(status: int) -> str:
    """'1xx', '2xx' or 'final' (3xx-6xx): the only distinction the machines make."""
    if 100 <= status < 200:
        return "1xx"
    if 200 <= status < 300:
        return "2xx"
    if 300 <= status < 700:
        return "final"
    raise LocalProtocolError(f"cannot handle status {status}: expected 100-699")


# ------------------------------------------------------------------------------------------------------
# Common machinery


class _Transaction:
    """Timer table, action queue and the one ``_set_state``; subclasses hold the transitions."""

    state: TransactionState

    def __init__(
        self, request: Request, *, reliable: bool, timers: Timers, initial: TransactionState
    ) -> None:
        self.request = request
        self.reliable = reliable
        self.timers = timers
        self.state = initial
        self._deadlines: dict[str, float] = {}
        self._actions: list[Action] = []
        self._label = f"{type(self).__name__}[{request.method} {request.top_via.branch}]"
        log.debug("%s: created in state %s", self._label, initial.value)

    # --- adapter interface ----------------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """The monotonic time at which :meth:`on_timer` must next be called, or None."""
        return min(self._deadlines.values(), default=None)

    def take_actions(self) -> list[Action]:
        """Return (and forget) the actions produced since the last call, in the order to perform them."""
        out, self._actions = self._actions, []
        return out

    def on_timer(self, now: float) -> None:
        """Fire every timer due at ``now``, earliest first."""
        while self._deadlines:
            name, when = min(self._deadlines.items(), key=lambda item: item[1])
            if when > now:
                return
            del self._deadlines[name]
            log.debug("%s: timer %s fired in state %s", self._label, name, self.state.value)
            self._fire(name, now)

    def transport_error(self, now: float, reason: str) -> None:
        """The transport failed to send one of our messages (or the connection died): end the transaction."""
        match self.state:
            case S.TERMINATED:
                return
            case _:
                log.info("%s: transport error in state %s: %s", self._label, self.state.value, reason)
                self._actions.append(TransportFailure(reason))
                self._set_state(S.TERMINATED)

    @property
    def terminated(self) -> bool:
        return self.state is S.TERMINATED

    # --- internals ------------------------------------------------------------------------------------------
    def _fire(self, name: str, now: float) -> None:
        raise NotImplementedError

    def _set_state(self, new: TransactionState, *, keep: tuple[str, ...] = ()) -> None:
        """The only place the state changes; a real change drops the old state's timers except ``keep``."""
        old = self.state
        if new is old:
            return
        log.debug("%s: %s -> %s", self._label, old.value, new.value)
        self.state = new
        kept = {
            name: when for name, when in self._deadlines.items() if name in keep and new is not S.TERMINATED
        }
        self._deadlines = kept
        if new is S.TERMINATED:
            self._actions.append(Terminated())

    def _arm(self, name: str, when: float) -> None:
        self._deadlines[name] = when

    def _send(self, message: Request | Response) -> None:
        self._actions.append(SendMessage(message))

    def _unexpected_timer(self, name: str) -> None:
        raise LocalProtocolError(
            f"{self._label}: timer {name} fired in state {self.state.value}, which never arms it"
        )


# ------------------------------------------------------------------------------------------------------
# Client transactions


class InviteClientTransaction(_Transaction):
    """INVITE client transaction (§17.1.1, RFC 6026 §8.4). Sends the INVITE on creation."""

    def __init__(
        self, request: Request, now: float, *, reliable: bool, timers: Timers = DEFAULT_TIMERS
    ) -> None:
        if request.method != "INVITE":
            raise LocalProtocolError(f"InviteClientTransaction needs an INVITE, got {request.method}")
        super().__init__(request, reliable=reliable, timers=timers, initial=S.CALLING)
        self.key = client_key(request)
        self.ack: Request | None = None  # the ACK we built for a non-2xx final response
        self._cancel_sent = False
        self._interval = timers.t1
        self._send(request)
        if not reliable:
            self._arm("A", now + timers.t1)
        self._arm("B", now + 64 * timers.t1)

    @property
    def may_cancel(self) -> bool:
        """True after a provisional and before a final response: only then may a CANCEL go (§9.1)."""
        return self.state is S.PROCEEDING

    def cancel_sent(self, now: float) -> None:
        """The TU sent a CANCEL: give up 64·T1 from now unless a final response arrives (§9.1)."""
        match self.state:
            case S.CALLING | S.PROCEEDING:
                self._cancel_sent = True
                self._arm("B", now + 64 * self.timers.t1)
            case _:
                log.debug("%s: CANCEL sent in state %s, nothing to wait for", self._label, self.state.value)

    def receive(self, response: Response, now: float) -> None:
        """A response matching this transaction arrived from the transport."""
        match (self.state, _klass(response.status)):
            case (S.CALLING | S.PROCEEDING, "1xx"):
                # Timers A and B stop (§17.1.1.2), except a B re-armed by cancel_sent()
                self._set_state(S.PROCEEDING, keep=("B",) if self._cancel_sent else ())
                self._actions.append(DeliverResponse(response))
            case (S.CALLING | S.PROCEEDING, "2xx"):
                self._set_state(S.ACCEPTED)
                self._arm("M", now + 64 * self.timers.t1)
                self._actions.append(DeliverResponse(response))
            case (S.CALLING | S.PROCEEDING, "final"):
                self._set_state(S.COMPLETED)
                self.ack = make_ack_for_non_2xx(self.request, response)
                self._send(self.ack)
                self._actions.append(DeliverResponse(response))
                if self.reliable or self.timers.timer_d == 0:
                    self._set_state(S.TERMINATED)
                else:
                    self._arm("D", now + self.timers.timer_d)
            case (S.ACCEPTED, "2xx"):
                # a retransmitted 2xx or one from another fork: the TU (re-)ACKs it (RFC 6026 §8.4)
                self._actions.append(DeliverResponse(response))
            case (S.COMPLETED, "final"):
                if self.ack is not None:
                    self._send(self.ack)
            case (S.COMPLETED, "2xx"):
                # another fork answered after this one failed: the TU must ACK and BYE it, never drop it
                self._actions.append(DeliverResponse(response))
            case (state, klass):
                log.info("%s: %s %s absorbed in state %s", self._label, klass, response.status, state.value)

    def _fire(self, name: str, now: float) -> None:
        match (self.state, name):
            case (S.CALLING, "A"):
                self._send(self.request)
                self._interval *= 2
                self._arm("A", now + self._interval)
            case (S.CALLING | S.PROCEEDING, "B"):
                self._actions.append(TransactionTimeout("B"))
                self._set_state(S.TERMINATED)
            case (S.COMPLETED, "D"):
                self._set_state(S.TERMINATED)
            case (S.ACCEPTED, "M"):
                self._set_state(S.TERMINATED)
            case _:
                self._unexpected_timer(name)


class NonInviteClientTransaction(_Transaction):
    """Non-INVITE client transaction (§17.1.2). Sends the request on creation."""

    def __init__(
        self, request: Request, now: float, *, reliable: bool, timers: Timers = DEFAULT_TIMERS
    ) -> None:
        if request.method in ("INVITE", "ACK"):
            raise LocalProtocolError(f"NonInviteClientTransaction cannot carry {request.method}")
        super().__init__(request, reliable=reliable, timers=timers, initial=S.TRYING)
        self.key = client_key(request)
        self._interval = timers.t1
        self._send(request)
        if not reliable:
            self._arm("E", now + timers.t1)
        self._arm("F", now + 64 * timers.t1)

    def receive(self, response: Response, now: float) -> None:
        """A response matching this transaction arrived from the transport."""
        match (self.state, _klass(response.status)):
            case (S.TRYING | S.PROCEEDING, "1xx"):
                self._set_state(S.PROCEEDING, keep=("E", "F"))  # E keeps running, at T2 from its next firing
                self._actions.append(DeliverResponse(response))
            case (S.TRYING | S.PROCEEDING, "2xx" | "final"):
                self._set_state(S.COMPLETED)
                self._actions.append(DeliverResponse(response))
                if self.reliable:
                    self._set_state(S.TERMINATED)
                else:
                    self._arm("K", now + self.timers.t4)
            case (state, klass):
                log.info("%s: %s %s absorbed in state %s", self._label, klass, response.status, state.value)

    def _fire(self, name: str, now: float) -> None:
        match (self.state, name):
            case (S.TRYING, "E"):
                self._send(self.request)
                self._interval = min(2 * self._interval, self.timers.t2)
                self._arm("E", now + self._interval)
            case (S.PROCEEDING, "E"):
                self._send(self.request)
                self._arm("E", now + self.timers.t2)
            case (S.TRYING | S.PROCEEDING, "F"):
                self._actions.append(TransactionTimeout("F"))
                self._set_state(S.TERMINATED)
            case (S.COMPLETED, "K"):
                self._set_state(S.TERMINATED)
            case _:
                self._unexpected_timer(name)


# ------------------------------------------------------------------------------------------------------
# Server transactions


class InviteServerTransaction(_Transaction):
    """INVITE server transaction (§17.2.1, RFC 6026 §8.5-8.7). Delivers the INVITE to the TU on creation."""

    def __init__(
        self, request: Request, now: float, *, reliable: bool, timers: Timers = DEFAULT_TIMERS
    ) -> None:
        if request.method != "INVITE":
            raise LocalProtocolError(f"InviteServerTransaction needs an INVITE, got {request.method}")
        super().__init__(request, reliable=reliable, timers=timers, initial=S.PROCEEDING)
        self.key = server_key(request)
        self.last_response: Response | None = None
        self._interval = timers.t1
        self._actions.append(DeliverRequest(request))
        if timers.trying_after == 0:
            self._send_trying()
        else:
            self._arm("100", now + timers.trying_after)

    @property
    def may_cancel(self) -> bool:
        """True while no final response was sent: a CANCEL still has an effect (§9.2)."""
        return self.state is S.PROCEEDING

    def cancel(self, now: float, *, to_tag: str | None = None) -> bool:
        """A CANCEL matched this INVITE (§9.2): answer ``487`` and return True, or return False if too late.

        The To tag is ``to_tag``, else the one of the last provisional response, else a fresh one.
        """
        match self.state:
            case S.PROCEEDING:
                tag = to_tag or (self.last_response.to.tag if self.last_response else None) or new_tag()
                self.respond(make_response(self.request, 487, to_tag=tag), now)
                return True
            case _:
                return False

    def respond(self, response: Response, now: float) -> None:
        """The TU sends ``response`` to the INVITE."""
        match (self.state, _klass(response.status)):
            case (S.PROCEEDING, "1xx"):
                self._deadlines.pop("100", None)
                self.last_response = response
                self._send(response)
            case (S.PROCEEDING, "2xx"):
                self.last_response = response
                self._send(response)
                self._set_state(S.ACCEPTED)
                self._arm("L", now + 64 * self.timers.t1)
            case (S.PROCEEDING, "final"):
                self.last_response = response
                self._send(response)
                self._set_state(S.COMPLETED)
                if not self.reliable:
                    self._arm("G", now + self.timers.t1)
                self._arm("H", now + 64 * self.timers.t1)
            case (S.ACCEPTED, "2xx"):
                # the TU retransmits its 2xx (§13.3.1.4) through the transaction (RFC 6026 §8.6)
                self._send(response)
            case (state, klass):
                raise LocalProtocolError(
                    f"{self._label}: cannot send a {response.status} ({klass}) in state {state.value}: "
                    "expected a response before the final one, or another 2xx after a 2xx"
                )

    def receive(self, request: Request, now: float) -> None:
        """A retransmitted INVITE, or an ACK, matching this transaction arrived from the transport."""
        match (self.state, request.method):
            case (S.PROCEEDING, "INVITE"):
                if self.last_response is None:
                    self._send_trying()
                else:
                    self._send(self.last_response)
            case (S.COMPLETED, "INVITE"):
                if self.last_response is not None:
                    self._send(self.last_response)
            case (S.COMPLETED, "ACK"):
                self._set_state(S.CONFIRMED)
                if self.reliable:
                    self._set_state(S.TERMINATED)
                else:
                    self._arm("I", now + self.timers.t4)
            case (S.ACCEPTED, "ACK"):
                self._actions.append(DeliverRequest(request))  # RFC 6026 §8.7
            case (S.ACCEPTED | S.CONFIRMED | S.TERMINATED, "INVITE" | "ACK"):
                log.debug("%s: %s absorbed in state %s", self._label, request.method, self.state.value)
            case (S.PROCEEDING, "ACK"):
                log.info("%s: ACK before any final response absorbed", self._label)
            case (state, method):
                raise LocalProtocolError(
                    f"{self._label}: a {method} was routed to an INVITE server transaction "
                    f"in state {state.value}: expected INVITE or ACK"
                )

    def _send_trying(self) -> None:
        self._deadlines.pop("100", None)
        trying = make_response(self.request, 100)
        self.last_response = trying
        self._send(trying)

    def _fire(self, name: str, now: float) -> None:
        match (self.state, name):
            case (S.PROCEEDING, "100"):
                self._send_trying()
            case (S.COMPLETED, "G"):
                if self.last_response is not None:
                    self._send(self.last_response)
                self._interval = min(2 * self._interval, self.timers.t2)
                self._arm("G", now + self._interval)
            case (S.COMPLETED, "H"):
                self._actions.append(TransactionTimeout("H"))
                self._set_state(S.TERMINATED)
            case (S.CONFIRMED, "I"):
                self._set_state(S.TERMINATED)
            case (S.ACCEPTED, "L"):
                self._set_state(S.TERMINATED)
            case _:
                self._unexpected_timer(name)


class NonInviteServerTransaction(_Transaction):
    """Non-INVITE server transaction (§17.2.2). Delivers the request to the TU on creation."""

    def __init__(
        self, request: Request, now: float, *, reliable: bool, timers: Timers = DEFAULT_TIMERS
    ) -> None:
        if request.method in ("INVITE", "ACK"):
            raise LocalProtocolError(f"NonInviteServerTransaction cannot carry {request.method}")
        super().__init__(request, reliable=reliable, timers=timers, initial=S.TRYING)
        self.key = server_key(request)
        self.last_response: Response | None = None
        self._actions.append(DeliverRequest(request))

    def respond(self, response: Response, now: float) -> None:
        """The TU sends ``response``."""
        match (self.state, _klass(response.status)):
            case (S.TRYING | S.PROCEEDING, "1xx"):
                self._set_state(S.PROCEEDING)
                self.last_response = response
                self._send(response)
            case (S.TRYING | S.PROCEEDING, "2xx" | "final"):
                self._set_state(S.COMPLETED)
                self.last_response = response
                self._send(response)
                if self.reliable:
                    self._set_state(S.TERMINATED)
                else:
                    self._arm("J", now + 64 * self.timers.t1)
            case (state, klass):
                raise LocalProtocolError(
                    f"{self._label}: cannot send a {response.status} ({klass}) in state {state.value}: "
                    "a final response was already sent"
                )

    def receive(self, request: Request, now: float) -> None:
        """A retransmission of the request arrived: repeat the last response, if any."""
        match self.state:
            case S.TRYING | S.TERMINATED:
                log.debug("%s: retransmission absorbed in state %s", self._label, self.state.value)
            case S.PROCEEDING | S.COMPLETED:
                if self.last_response is not None:
                    self._send(self.last_response)
            case state:
                raise LocalProtocolError(f"{self._label}: impossible state {state.value}")

    def _fire(self, name: str, now: float) -> None:
        match (self.state, name):
            case (S.COMPLETED, "J"):
                self._set_state(S.TERMINATED)
            case _:
                self._unexpected_timer(name)


# ------------------------------------------------------------------------------------------------------
# Matching (§17.1.3, §17.2.3)


def client_key(message: Request | Response) -> tuple[str, str]:
    """The client-transaction key of a request we send or a response we get: (top branch, CSeq method)."""
    return (message.top_via.branch or "", message.cseq[1])


def _default_port(transport: str) -> int:
    return 5061 if transport.upper() == "TLS" else 5060


def server_key(request: Request) -> tuple[str, ...]:
    """The server-transaction key of a received request (§17.2.3).

    With an RFC 3261 branch: (branch, sent-by host, sent-by port, method), where an ACK counts as INVITE so
    that it finds the INVITE server transaction and a CANCEL keeps its own method so that it does not.
    Without the magic cookie (an RFC 2543 peer): Request-URI, To tag (not for INVITE/ACK: the INVITE had
    none, the ACK carries the tag of our response), From tag, Call-ID, CSeq number, method (ACK as INVITE)
    and the whole top Via.
    """
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch
    if branch and branch.startswith(MAGIC_COOKIE):
        return ("3261", branch, via.host, str(via.port or _default_port(via.transport)), method)
    to_tag = "" if method == "INVITE" else (request.to.tag or "")
    return (
        "2543",
        str(request.uri),
        to_tag,
        request.from_.tag or "",
        request.call_id,
        str(request.cseq[0]),
        method,
        str(via),
    )


def cancel_target_key(cancel: Request) -> tuple[str, ...]:
    """The server key of the INVITE that ``cancel`` cancels (§9.2): same matching, method INVITE."""
    if cancel.method != "CANCEL":
        raise LocalProtocolError(f"cancel_target_key needs a CANCEL, got {cancel.method}")
    as_invite = Request("INVITE", cancel.uri, cancel.headers.copy(), b"")
    as_invite.headers.set("CSeq", f"{cancel.cseq[0]} INVITE")
    return server_key(as_invite)


# ------------------------------------------------------------------------------------------------------
# Builders


REASON_PHRASES: dict[int, str] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued", 183: "Session Progress",
    200: "OK", 202: "Accepted", 300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    407: "Proxy Authentication Required", 408: "Request Timeout", 413: "Request Entity Too Large",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    483: "Too Many Hops", 484: "Address Incomplete",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here", 491: "Request Pending",
    500: "Server Internal Error", 501: "Not Implemented", 503: "Service Unavailable", 504: "Server Time-out",
    505: "Version Not Supported", 600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}  # fmt: skip


def _first(headers: Headers, name: str, what: str) -> str:
    value = headers.get(name)
    if value is None:
        raise LocalProtocolError(f"cannot build {what}: the request has no {name} header")
    return value


def make_ack_for_non_2xx(invite: Request, response: Response) -> Request:
    """The ACK for a 3xx-6xx response to ``invite`` (§17.1.1.3): same branch, To from the response."""
    if invite.method != "INVITE" or not 300 <= response.status <= 699:
        raise LocalProtocolError(
            "make_ack_for_non_2xx needs an INVITE and a 3xx-6xx response, "
            f"got {invite.method} and {response.status}"
        )
    h = Headers()
    h.add("Via", invite.headers.get_all("Via")[0])
    for route in invite.headers.get_all("Route"):
        h.add("Route", route)
    h.add("Max-Forwards", "70")
    h.add("From", _first(invite.headers, "From", "ACK"))
    h.add("To", _first(response.headers, "To", "ACK"))
    h.add("Call-ID", invite.call_id)
    h.add("CSeq", f"{invite.cseq[0]} ACK")
    return Request("ACK", invite.uri, h)


def make_cancel(invite: Request) -> Request:
    """The CANCEL for ``invite`` (§9.1): its Request-URI, top Via, From, To, Call-ID, CSeq number, Route."""
    if invite.method != "INVITE":
        raise LocalProtocolError(f"make_cancel needs an INVITE, got {invite.method}")
    h = Headers()
    h.add("Via", invite.headers.get_all("Via")[0])
    for route in invite.headers.get_all("Route"):
        h.add("Route", route)
    h.add("Max-Forwards", "70")
    h.add("From", _first(invite.headers, "From", "CANCEL"))
    h.add("To", _first(invite.headers, "To", "CANCEL"))
    h.add("Call-ID", invite.call_id)
    h.add("CSeq", f"{invite.cseq[0]} CANCEL")
    return Request("CANCEL", invite.uri, h)


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """A response to ``request`` (§8.2.6): Via (all, in order), From, To, Call-ID and CSeq copied.

    ``to_tag`` is added to To unless the request's To already has a tag (an in-dialog request). Record-Route
    is copied into 101-299 responses to a dialog-creating request (§12.1.1); Timestamp into 100 (§8.2.6.1).
    """
    if not 100 <= status <= 699:
        raise LocalProtocolError(f"cannot build a response with status {status}: expected 100-699")
    h = Headers()
    for via in request.headers.get_all("Via"):
        h.add("Via", via)
    if 100 < status < 300 and request.method in ("INVITE", "SUBSCRIBE", "REFER"):
        for rr in request.headers.get_all("Record-Route"):
            h.add("Record-Route", rr)
    h.add("From", _first(request.headers, "From", f"a {status} response"))
    to = request.to
    if to_tag is not None and to.tag is None:
        to = to.with_tag(to_tag)
    h.add("To", str(to))
    h.add("Call-ID", request.call_id)
    h.add("CSeq", _first(request.headers, "CSeq", f"a {status} response"))
    timestamp = request.headers.get("Timestamp")
    if status == 100 and timestamp is not None:
        h.add("Timestamp", timestamp)
    for name, value in headers:
        h.add(name, value)
    if body and content_type is not None:
        h.set("Content-Type", content_type)
    return Response(status, reason if reason is not None else REASON_PHRASES.get(status, ""), h, body)


def new_branch() -> str:
    """A fresh RFC 3261 branch: the magic cookie and 64 random bits (hex)."""
    return MAGIC_COOKIE + secrets.token_hex(8)


def new_tag() -> str:
    """A fresh From/To tag: 64 random bits (hex) (§19.3)."""
    return secrets.token_hex(8)


def new_call_id(host: str | None = None) -> str:
    """A fresh Call-ID: 128 random bits (hex), ``@host`` appended when given (§8.1.1.4)."""
    token = secrets.token_hex(16)
    return f"{token}@{host}" if host else token
