"""The user agent: the asyncio facade the product calls to place and take SIP calls.

Theory of operation
-------------------
:class:`UserAgent` glues four things together: the transports (:mod:`sip.transport`), the pure transaction machines
(:mod:`sip.transaction`), the dialog cores (:mod:`sip.dialog`) and, per call, an :class:`~media.session.RtpSession`.

* Every transaction core is wrapped by a small driver (:class:`_Txn`) that feeds it inputs with ``now`` from the
  clock, performs its actions and keeps exactly one timer armed at ``next_deadline()``. Client transactions are
  found by :func:`~sip.transaction.client_key`, server transactions by :func:`~sip.transaction.server_key`;
  a CANCEL finds its INVITE by :func:`~sip.transaction.cancel_target_key`.
* A :class:`Call` is one INVITE dialog seen from the application. Outbound: ``calling → proceeding → confirmed``
  (or ``cancelling``) ``→ ended``. Inbound: ``incoming → ringing → answering`` (200 sent, waiting for the ACK)
  ``→ confirmed → ended``. Every change goes through ``Call._set_state``; everything the application may care
  about becomes an event (:class:`CallTrying` … :class:`CallEnded`) with UTC and monotonic time. The event history
  is kept, so every :meth:`Call.events` iterator sees the whole call, from the beginning, and ends after
  :class:`CallEnded`.
* Paging needs answers in seconds, not Timer B's 32 s: ``ring_timeout`` sends a CANCEL (or, before any
  provisional response, ends the call at once and cancels as soon as one arrives); ICMP port unreachable and
  refused connections end a call with ``by="transport"`` at once; a 2xx that arrives after we gave up is ACKed
  and hung up with BYE; a 2xx from a second fork likewise.
* :class:`ForkGroup` dials several targets in parallel; the first 2xx wins, the others are CANCELled with
  ``Reason: SIP;cause=200;text="Call completed elsewhere"`` or BYE'd when they answer anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import logging
import re
import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from comms.clock import Clock, TimerHandle
from comms.errors import ValidationError
from comms.ids import new_id
from media import sdp
from media import session as media_session
from media.session import RtpSession
from sip.auth import AuthResult, Credentials, DigestServer, answer_challenge
from sip.dialog import AckTimeout, AnswerRetransmitter, Dialog, RequestRefused
from sip.errors import LocalProtocolError, SipError, SipParseError, TransportError
from sip.message import URI, Headers, NameAddr, Request, Response
from sip.transaction import (
    DeliverRequest,
    DeliverResponse,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    SendMessage,
    Terminated,
    Timers,
    TransactionTimeout,
    TransportFailure,
    cancel_target_key,
    client_key,
    make_cancel,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    server_key,
)
from sip.transport import Peer, Source, TransportLayer

log = logging.getLogger(__name__)

__all__ = [
    "FORK_REASON",
    "Call",
    "CallAnswered",
    "CallEnded",
    "CallEvent",
    "CallRinging",
    "CallState",
    "CallTrying",
    "DtmfReceived",
    "ForkGroup",
    "MediaStarted",
    "SentInvite",
    "Timers",
    "UaConfig",
    "UserAgent",
    "destination",
    "parse_dtmf_info",
]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO"
ACCEPT = "application/sdp, application/dtmf-relay, application/dtmf"
# Methods we know but do not serve (405); anything else unknown gets 501.
KNOWN_NOT_ALLOWED = frozenset(
    {"REGISTER", "SUBSCRIBE", "NOTIFY", "MESSAGE", "PUBLISH", "REFER", "PRACK", "UPDATE"}
)
DTMF_DIGITS = frozenset("0123456789*#ABCD")
FORK_REASON = 'SIP;cause=200;text="Call completed elsewhere"'

# ---------------------------------------------------------------------------------------------------------------
# Configuration and events


@dataclass(frozen=True)
class UaConfig:
    """Where the user agent listens and how it behaves.

    ``None`` disables a transport, ``0`` asks the OS for a port. ``tls_port`` needs ``tls_certfile`` and
    ``tls_keyfile``; ``tls_cafile`` is the CA bundle that peers' certificates are verified against (the system
    store when ``None``). ``rtp=False`` runs signalling only: no RTP session is opened and SDP answers carry the
    discard port 9 (for load tests and probes).
    """

    host: str = "127.0.0.1"
    udp_port: int | None = 0
    tcp_port: int | None = 0
    tls_port: int | None = None
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    tls_cafile: str | None = None
    tls_verify: bool = True
    user_agent: str = "ContrastComms/0.1"
    timers: Timers = field(default_factory=Timers)
    media_host: str | None = None
    rtp: bool = True


@dataclass(frozen=True, kw_only=True)
class CallEvent:
    """Base of every call event: aware UTC wall time and monotonic seconds."""

    utc: dt.datetime
    mono: float


@dataclass(frozen=True, kw_only=True)
class CallTrying(CallEvent):
    """The far end (or a proxy) sent 100 Trying."""


@dataclass(frozen=True, kw_only=True)
class CallRinging(CallEvent):
    """A 18x arrived; ``early_media`` when it carried SDP and media flows before the answer."""

    status: int
    early_media: bool


@dataclass(frozen=True, kw_only=True)
class CallAnswered(CallEvent):
    """The call is up: 2xx received and ACKed (outbound) or our 2xx ACKed (inbound)."""


@dataclass(frozen=True, kw_only=True)
class DtmfReceived(CallEvent):
    """A digit from the far end, by RFC 4733 telephone-event or SIP INFO."""

    digit: str
    method: Literal["rfc4733", "info"]


@dataclass(frozen=True, kw_only=True)
class MediaStarted(CallEvent):
    """The first RTP packet arrived."""


@dataclass(frozen=True, kw_only=True)
class CallEnded(CallEvent):
    """The call is over. ``status`` is the final SIP status when one ended it; ``sip_reason`` the Reason header."""

    status: int | None
    reason: str
    by: Literal["local", "remote", "timeout", "transport"]
    sip_reason: str | None = None


EndedBy = Literal["local", "remote", "timeout", "transport"]


class CallState(enum.Enum):
    CALLING = "calling"
    PROCEEDING = "proceeding"
    CANCELLING = "cancelling"
    INCOMING = "incoming"
    RINGING = "ringing"
    ANSWERING = "answering"
    CONFIRMED = "confirmed"
    ENDED = "ended"


@dataclass(frozen=True)
class SentInvite:
    """What a CANCEL of an INVITE we sent needs (§9.1), small enough to store with the leg's events.

    A CANCEL must repeat the INVITE's Request-URI, top Via (branch *and* sent-by: the UAS finds the INVITE
    server transaction by them, §9.2/§17.2.3, not by the packet's source address), From (with tag), To,
    Call-ID, CSeq number and Route, and go where the INVITE went. With these another process can cancel a
    call whose INVITE client transaction died with the process that sent it
    (:meth:`UserAgent.cancel_orphan`). No credentials are recorded (an Authorization header never is).
    """

    uri: str
    via: str
    from_: str
    to: str
    call_id: str
    cseq: int
    transport: str
    host: str
    port: int
    route: tuple[str, ...] = ()

    def to_data(self) -> dict[str, Any]:
        """A JSON-ready dict (``route`` only when there is one)."""
        data: dict[str, Any] = {
            "uri": self.uri,
            "via": self.via,
            "from": self.from_,
            "to": self.to,
            "call_id": self.call_id,
            "cseq": self.cseq,
            "transport": self.transport,
            "host": self.host,
            "port": self.port,
        }
        if self.route:
            data["route"] = list(self.route)
        return data

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> SentInvite:
        """The inverse of :meth:`to_data`; :class:`ValidationError` names the first missing or bad field."""
        texts = ("uri", "via", "from", "to", "call_id", "transport", "host")
        for key in texts:
            if not isinstance(data.get(key), str) or not data[key]:
                raise ValidationError(
                    f"INVITE record field {key!r} is {data.get(key)!r}: expected a non-empty string"
                )
        for key in ("cseq", "port"):
            value = data.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValidationError(f"INVITE record field {key!r} is {value!r}: expected an integer >= 0")
        route = data.get("route", [])
        if not isinstance(route, list) or not all(isinstance(r, str) for r in route):
            raise ValidationError(f"INVITE record field 'route' is {route!r}: expected a list of strings")
        if data["transport"] not in ("UDP", "TCP", "TLS"):
            raise ValidationError(
                f"INVITE record field 'transport' is {data['transport']!r}: expected UDP, TCP or TLS"
            )
        return cls(
            uri=data["uri"],
            via=data["via"],
            from_=data["from"],
            to=data["to"],
            call_id=data["call_id"],
            cseq=data["cseq"],
            transport=data["transport"],
            host=data["host"],
            port=data["port"],
            route=tuple(route),
        )

    @property
    def destination(self) -> Peer:
        return Peer(self.transport, self.host, self.port)

    def cancel_request(self, *, sip_reason: str | None = None) -> Request:
        """The CANCEL (§9.1), built by :func:`~sip.transaction.make_cancel` from the recorded INVITE fields."""
        try:
            uri = URI.parse(self.uri)
        except SipParseError as exc:
            raise ValidationError(f"INVITE record has Request-URI {self.uri!r}: {exc}") from exc
        h = Headers()
        h.add("Via", self.via)
        for route in self.route:
            h.add("Route", route)
        h.add("From", self.from_)
        h.add("To", self.to)
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{self.cseq} INVITE")
        cancel = make_cancel(Request("INVITE", uri, h))
        if sip_reason is not None:
            cancel.headers.add("Reason", sip_reason)
        return cancel


def _timer_e_window(timers: Timers, sends: int) -> float:
    """Seconds from the first send of a non-INVITE request over UDP until half-way between its ``sends``-th
    transmission (Timer E: T1, 2·T1 … capped at T2, §17.1.2.2) and the one after it."""
    at, interval = 0.0, timers.t1
    for _ in range(max(sends, 1) - 1):
        at += interval
        interval = min(2 * interval, timers.t2)
    return at + interval / 2


# ---------------------------------------------------------------------------------------------------------------
# Transaction driver

ClientCore = InviteClientTransaction | NonInviteClientTransaction
ServerCore = InviteServerTransaction | NonInviteServerTransaction


class _Txn:
    """Runs one transaction core: performs its actions and keeps one timer armed at its next deadline."""

    def __init__(
        self,
        ua: UserAgent,
        core: ClientCore | ServerCore,
        *,
        dest: Peer | None = None,
        source: Source | None = None,
        on_response: Callable[[Response], None] | None = None,
        on_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        self.ua = ua
        self.core = core
        self.key: tuple[str, ...] = core.key
        self.dest = dest
        self.source = source
        self.on_response = on_response
        self.on_failure = on_failure  # (kind: "timeout" | "transport", reason)
        self.on_ack: Callable[[Request], None] | None = None
        self._timer: TimerHandle | None = None
        self._deadline: float | None = None
        self.done = False

    # inputs ------------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Perform pending actions and re-arm the timer (call after every input to the core)."""
        core = self.core
        for action in core.take_actions():
            if isinstance(action, SendMessage):
                self._send(action.message)
            elif isinstance(action, DeliverResponse):
                if self.on_response is not None:
                    self.on_response(action.response)
            elif isinstance(action, DeliverRequest):
                if action.request.method == "ACK" and self.on_ack is not None:
                    self.on_ack(action.request)
            elif isinstance(action, TransactionTimeout):
                if self.on_failure is not None:
                    self.on_failure("timeout", f"no response (Timer {action.timer})")
            elif isinstance(action, TransportFailure):
                if self.on_failure is not None:
                    self.on_failure("transport", action.reason)
            elif isinstance(action, Terminated):
                self._finish()
        if not self.done:
            self._rearm()

    def transport_error(self, reason: str) -> None:
        if self.done:
            return
        self.core.transport_error(self.ua.clock.monotonic(), reason)
        self.run()

    def _send_error(self, reason: str) -> None:
        # may be called from inside the transport's send: defer so the core is not re-entered
        asyncio.get_running_loop().call_soon(self.transport_error, reason)

    def _send(self, message: Request | Response) -> None:
        transport = self.ua.transport
        if isinstance(message, Request):
            assert self.dest is not None
            transport.send_request(message, self.dest, self._send_error)
        else:
            assert self.source is not None
            transport.send_response(message, self.source, self._send_error)

    def _rearm(self) -> None:
        deadline = self.core.next_deadline()
        if deadline == self._deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = deadline
        if deadline is not None:
            self._timer = self.ua.clock.call_later(deadline - self.ua.clock.monotonic(), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._deadline = None
        if self.done:
            return
        self.core.on_timer(self.ua.clock.monotonic())
        self.run()

    def _finish(self) -> None:
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # drop the callbacks (bound to calls): no reference cycle outlives the transaction, so a finished call is
        # freed by reference counting instead of waiting for a full GC pass (which stalls the loop under load)
        self.on_response = self.on_failure = self.on_ack = None
        self.ua._forget_txn(self)


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _parse_target(target: str | URI) -> URI:
    if isinstance(target, URI):
        return target
    try:
        return URI.parse(target)
    except SipParseError as exc:
        raise ValidationError(f"cannot dial {target!r}: {exc}") from exc


def destination(uri: URI) -> Peer:
    """Where a request for ``uri`` goes (RFC 3263 without DNS): maddr or host, explicit or default port."""
    transport = uri.transport
    host, port = uri.hostport
    maddr = uri.param("maddr")
    return Peer(transport, maddr or host, port)


MediaErrors = (SipError, sdp.SdpError, UnicodeDecodeError)


def parse_dtmf_info(content_type: str | None, body: bytes) -> str | None:
    """The digit carried by an INFO body (application/dtmf-relay or application/dtmf), or ``None``."""
    text = body.decode("utf-8", errors="replace").strip()
    if content_type == "application/dtmf-relay":
        m = re.search(r"(?im)^\s*signal\s*=\s*(\S+)", text)
        if not m:
            return None
        digit = m.group(1).upper()
    elif content_type == "application/dtmf":
        digit = text.upper()
        if digit.isdigit() and int(digit) in (10, 11):  # some phones send event codes
            digit = "*" if digit == "10" else "#"
    else:
        return None
    if digit == "10":
        digit = "*"
    elif digit == "11":
        digit = "#"
    return digit if digit in DTMF_DIGITS else None


def _is_sdp(message: Request | Response) -> bool:
    return bool(message.body) and message.content_type == "application/sdp"


def _reliable(transport: str) -> bool:
    return transport in ("TCP", "TLS")


# ---------------------------------------------------------------------------------------------------------------
# Calls


class _CallLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every line with ``[call=<id>]`` (the escalation layer logs the leg id next to it)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[call={self.extra['call'] if self.extra else '?'}] {msg}", kwargs


class Call:
    """One call (one INVITE dialog) as the application sees it."""

    def __init__(
        self,
        ua: UserAgent,
        direction: Literal["outbound", "inbound"],
        invite: Request,
        *,
        remote_uri: URI,
        local_tag: str,
    ) -> None:
        self.ua = ua
        self.id = new_id()
        self.direction: Literal["outbound", "inbound"] = direction
        self.call_id = invite.call_id
        self.remote_uri = remote_uri
        self.request_uri = invite.uri
        self.invite = invite
        self.media: RtpSession | None = None
        self.state = CallState.CALLING if direction == "outbound" else CallState.INCOMING
        self.local_tag = local_tag
        self.dialog: Dialog | None = None
        self.ended: CallEnded | None = None
        self._history: list[CallEvent] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._log = _CallLog(log, {"call": self.id})
        # offer/answer
        self._session_id = secrets.randbelow(2**31)
        self._sdp_version = 1
        self._offer_sdp: str | None = None  # outbound: ours; inbound: the peer's
        self._local_sdp: str | None = None
        self._media_host = ua.config.media_host or ua.config.host
        self._negotiated: sdp.NegotiatedMedia | None = None
        self._media_task: asyncio.Task[None] | None = None
        # outbound
        self._invite_txn: _Txn | None = None
        self._dest: Peer | None = None
        self._credentials: Credentials | None = None
        self._auth_tried = False
        self._provisional = False
        self._cancel: tuple[EndedBy, str, str | None] | None = None
        self._cancel_sent = False
        self._ring_timer: TimerHandle | None = None
        self._guard_timer: TimerHandle | None = None
        self._acks: dict[tuple[str, int], tuple[Request, Peer]] = {}
        self._last_ringing: tuple[int, bool] | None = None
        self._trying_seen = False
        # inbound
        self._source: Source | None = None
        self._server_txn: _Txn | None = None
        self._retx: dict[int, _AnswerRetx] = {}
        self._reinvite_pending: asyncio.Future[Response] | None = None

    def __repr__(self) -> str:
        return f"<Call {self.id} {self.direction} {self.state.value} {self.remote_uri}>"

    # --- public ------------------------------------------------------------------------------------------------
    async def events(self) -> AsyncIterator[CallEvent]:
        """Every event of this call from its start; ends after :class:`CallEnded`."""
        i = 0
        loop = asyncio.get_running_loop()
        while True:
            while i < len(self._history):
                event = self._history[i]
                i += 1
                yield event
                if isinstance(event, CallEnded):
                    return
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            await fut

    async def wait_ended(self) -> CallEnded:
        """Wait for the end of the call."""
        async for event in self.events():
            if isinstance(event, CallEnded):
                return event
        raise AssertionError("unreachable: events() ends with CallEnded")

    @property
    def history(self) -> list[CallEvent]:
        """Every event so far, oldest first."""
        return list(self._history)

    @property
    def negotiated(self) -> sdp.NegotiatedMedia | None:
        """The media last agreed by offer/answer (direction from our side), or ``None`` before any."""
        return self._negotiated

    def sent_invite(self) -> SentInvite | None:
        """What another process needs to CANCEL this outbound call's INVITE (``None`` for an inbound call).

        Reflects the INVITE last sent: a digest retry (new branch, CSeq + 1) makes an earlier record stale.
        """
        if self.direction != "outbound" or self._dest is None:
            return None
        inv = self.invite
        return SentInvite(
            uri=str(inv.uri),
            via=inv.headers.get_all("Via")[0],
            from_=str(inv.headers.get("From")),
            to=str(inv.headers.get("To")),
            call_id=inv.call_id,
            cseq=inv.cseq[0],
            transport=self._dest.transport,
            host=self._dest.host,
            port=self._dest.port,
            route=tuple(inv.headers.get_all("Route")),
        )

    async def ring(self, *, early_media: bool = False) -> None:
        """Send 180 Ringing, or with ``early_media`` 183 Session Progress with the SDP answer (media flows now)."""
        self._need_state("ring", CallState.INCOMING, CallState.RINGING)
        if early_media:
            await self._prepare_answer("ring")
            assert self._local_sdp is not None
            self._respond_invite(
                self._response(183, body=self._local_sdp.encode(), content_type="application/sdp")
            )
            if self.media is not None and self._negotiated is not None and self._media_task is None:
                self._start_media(self._negotiated)
        else:
            self._respond_invite(self._response(180))
        self._set_state(CallState.RINGING)

    async def answer(self) -> None:
        """Answer an inbound call: open media, send 200 OK with the SDP answer; retransmit it until the ACK."""
        self._need_state("answer", CallState.INCOMING, CallState.RINGING)
        await self._prepare_answer("answer")
        assert self._local_sdp is not None
        response = self._response(200, body=self._local_sdp.encode(), content_type="application/sdp")
        assert self.dialog is not None
        self.dialog.confirm()
        self.ua._register_dialog(self)
        self._set_state(CallState.ANSWERING)
        self._respond_invite(response)
        self._start_answer_retx(response, self.invite.cseq[0], self._server_txn)
        if self.media is not None and self._negotiated is not None and self._media_task is None:
            self._start_media(self._negotiated)

    def _need_state(self, what: str, *states: CallState) -> None:
        self._need_inbound(what)
        if self.state not in states:
            reason = f" ({self.ended.reason})" if self.ended is not None else ""
            raise LocalProtocolError(
                f"cannot {what} call {self.id} in state {self.state.value}{reason}: "
                f"expected {' or '.join(s.value for s in states)}"
            )

    async def _prepare_answer(self, what: str) -> None:
        """Open the RTP session and build our SDP answer (or offer, for an offerless INVITE), once."""
        if self._local_sdp is not None:
            return
        port = 9
        if self.ua.config.rtp:
            media = await RtpSession.open(self.ua.clock, self._media_host, 0)
            if self._local_sdp is not None or self.state not in (CallState.INCOMING, CallState.RINGING):
                await media.close()  # cancelled (or answered by a concurrent call) while the socket opened
                self._need_state(what, CallState.INCOMING, CallState.RINGING)
                return
            self.media = media
            port = media.local_port
        if self._offer_sdp is not None:
            self._local_sdp, self._negotiated = sdp.answer_offer(
                self._offer_sdp,
                self._media_host,
                port,
                session_id=self._session_id,
                version=self._sdp_version,
            )
        else:
            self._local_sdp = sdp.make_offer(self._media_host, port, session_id=self._session_id)

    async def reject(self, status: int = 486, reason: str | None = None) -> None:
        """Refuse an inbound call with a final status (486 Busy Here by default)."""
        if not 300 <= status <= 699:
            raise LocalProtocolError(f"cannot reject call {self.id} with {status}: expected a status 300-699")
        self._need_state("reject", CallState.INCOMING, CallState.RINGING)
        response = self._response(status, reason)
        self._respond_invite(response)
        self._end(status, response.reason, "local")

    async def hangup(self) -> None:
        """End the call: BYE once answered, CANCEL while an outbound call rings, 480 for an unanswered inbound."""
        match (self.direction, self.state):
            case (_, CallState.ENDED):
                return
            case ("outbound", CallState.CALLING | CallState.PROCEEDING | CallState.CANCELLING):
                self._start_cancel("local", "hung up before answer", None)
            case ("inbound", CallState.INCOMING | CallState.RINGING):
                await self.reject(480, "Temporarily Unavailable")
            case (_, CallState.CONFIRMED | CallState.ANSWERING):
                self._send_bye()
                self._end(None, "hung up", "local")
            case (direction, state):
                raise LocalProtocolError(f"cannot hang up {direction} call {self.id} in state {state.value}")

    async def cancel(self, *, sip_reason: str | None = None) -> None:
        """Cancel an outbound call that has not been answered (an answered one is hung up with BYE)."""
        if self.direction != "outbound":
            raise LocalProtocolError(f"cannot cancel inbound call {self.id}: use reject() or hangup()")
        if self.state in (CallState.CALLING, CallState.PROCEEDING, CallState.CANCELLING):
            self._start_cancel("local", "cancelled", sip_reason)
        elif self.state is CallState.CONFIRMED:
            self._send_bye(sip_reason)
            self._end(None, "cancelled after answer: hung up", "local", sip_reason)

    async def send_dtmf(
        self, digit: str, method: str = "rfc4733", *, info_type: str = "application/dtmf-relay"
    ) -> None:
        """Send one DTMF digit by RFC 4733 telephone-event (default) or SIP INFO.

        With ``method="info"`` the body is ``application/dtmf-relay`` (``Signal=1`` / ``Duration=160``) or, with
        ``info_type="application/dtmf"``, the bare digit.
        """
        digit = digit.upper()
        if digit not in DTMF_DIGITS:
            raise LocalProtocolError(f"cannot send DTMF {digit!r}: expected one of 0-9 * # A-D")
        if self.state is not CallState.CONFIRMED and not (
            self.state is CallState.ANSWERING and method == "rfc4733"
        ):
            raise LocalProtocolError(f"cannot send DTMF on call {self.id} in state {self.state.value}")
        if method == "rfc4733":
            if self.media is None:
                raise LocalProtocolError(
                    f"cannot send RFC 4733 DTMF on call {self.id}: it has no media session"
                )
            await self.media.send_dtmf(digit)
        elif method == "info":
            if info_type == "application/dtmf-relay":
                body = f"Signal={digit}\r\nDuration=160\r\n".encode()
            elif info_type == "application/dtmf":
                body = digit.encode()
            else:
                raise LocalProtocolError(
                    f"unknown INFO DTMF type {info_type!r}: expected application/dtmf-relay or application/dtmf"
                )
            response = await self._request_in_dialog("INFO", body=body, content_type=info_type)
            if response.status >= 300:
                raise SipError(f"INFO for DTMF {digit!r} on call {self.id} answered {response.status}")
        else:
            raise LocalProtocolError(f"unknown DTMF method {method!r}: expected 'rfc4733' or 'info'")

    async def play(self, wav_path: Path) -> None:
        """Play an 8 kHz mono WAV to the far end; returns when it has been played."""
        if self.media is None:
            raise LocalProtocolError(f"cannot play {wav_path} on call {self.id}: it has no media session")
        await self.media.play(wav_path)

    async def hold(self) -> None:
        """Put the far end on hold (re-INVITE with a=sendonly)."""
        await self._reinvite("sendonly")

    async def unhold(self) -> None:
        """Take the far end off hold (re-INVITE with a=sendrecv)."""
        await self._reinvite("sendrecv")

    # --- events and state --------------------------------------------------------------------------------------
    def _stamp(self) -> dict[str, Any]:
        return {"utc": self.ua.clock.now(), "mono": self.ua.clock.monotonic()}

    def _emit(self, event: CallEvent) -> None:
        if self.ended is not None:
            return
        self._history.append(event)
        if isinstance(event, CallEnded):
            self.ended = event
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _set_state(self, new: CallState) -> None:
        if new is self.state:
            return
        self._log.debug("%s -> %s", self.state.value, new.value)
        self.state = new

    def _end(self, status: int | None, reason: str, by: EndedBy, sip_reason: str | None = None) -> None:
        if self.state is CallState.ENDED:
            return
        self._set_state(CallState.ENDED)
        for timer in (self._ring_timer, self._guard_timer):
            if timer is not None:
                timer.cancel()
        self._ring_timer = self._guard_timer = None
        for retx in self._retx.values():
            retx.stop()
        self._retx.clear()
        if self._server_txn is not None:
            self._server_txn.on_ack = None  # the INVITE transaction may live on (Timer L); the call need not
        self._log.info("ended: %s %s by %s", status, reason, by)
        self._emit(CallEnded(status=status, reason=reason, by=by, sip_reason=sip_reason, **self._stamp()))
        self.ua._call_ended(self)
        if self.media is not None:
            self.ua._closers.add(self.ua._spawn(self._close_media()))

    async def _close_media(self) -> None:
        if self._media_task is not None:
            self._media_task.cancel()
        if self.media is not None:
            await self.media.close()

    def _need_inbound(self, what: str) -> None:
        if self.direction != "inbound":
            raise LocalProtocolError(f"cannot {what} outbound call {self.id}: only an inbound call can")

    # --- media -------------------------------------------------------------------------------------------------
    def _start_media(self, negotiated: sdp.NegotiatedMedia) -> None:
        if self.media is None:
            return
        if self._media_task is None:
            self.media.start(negotiated)
            self._media_task = self.ua._spawn(self._pump_media(self.media))
        else:
            self.media.update(negotiated)
        self._negotiated = negotiated

    async def _pump_media(self, media: RtpSession) -> None:
        while True:
            event = await media.events.get()
            if isinstance(event, media_session.DtmfReceived):
                self._emit(DtmfReceived(digit=event.digit, method="rfc4733", utc=event.utc, mono=event.mono))
            elif isinstance(event, media_session.MediaStarted):
                self._emit(MediaStarted(utc=event.utc, mono=event.mono))

    # --- outbound ------------------------------------------------------------------------------------------------
    def _send_invite(self, invite: Request) -> None:
        self.invite = invite
        assert self._dest is not None
        core = InviteClientTransaction(
            invite,
            self.ua.clock.monotonic(),
            reliable=_reliable(self._dest.transport),
            timers=self.ua.config.timers,
        )
        txn = _Txn(
            self.ua,
            core,
            dest=self._dest,
            on_response=self._on_invite_response,
            on_failure=self._on_invite_failure,
        )
        self._invite_txn = txn
        self.ua._add_client(txn)
        txn.run()

    def _on_ring_timeout(self) -> None:
        self._ring_timer = None
        if self.state in (CallState.CALLING, CallState.PROCEEDING):
            self._start_cancel("timeout", "no answer within the ring timeout", None)

    def _start_cancel(self, by: EndedBy, reason: str, sip_reason: str | None) -> None:
        if self._cancel is not None or self.state in (CallState.ENDED, CallState.CONFIRMED):
            return
        self._cancel = (by, reason, sip_reason)
        self._set_state(CallState.CANCELLING)
        if self._provisional:
            self._send_cancel()
            # §9.1: the INVITE should now end with 487; do not let the application wait long for it
            self._guard_timer = self.ua.clock.call_later(8 * self.ua.config.timers.t1, self._on_cancel_guard)
        else:
            # no provisional yet: a CANCEL must wait for one (§9.1); the application need not
            self._end(None, f"{reason} (no provisional response yet)", by, sip_reason)

    def _send_cancel(self) -> None:
        if self._cancel_sent or self._cancel is None:
            return
        self._cancel_sent = True
        cancel = make_cancel(self.invite)
        if self._cancel[2] is not None:
            cancel.headers.add("Reason", self._cancel[2])
        assert self._dest is not None
        self.ua._start_client(cancel, self._dest)
        if self._invite_txn is not None and isinstance(self._invite_txn.core, InviteClientTransaction):
            self._invite_txn.core.cancel_sent(self.ua.clock.monotonic())
            self._invite_txn.run()

    def _on_cancel_guard(self) -> None:
        self._guard_timer = None
        if self._cancel is not None:
            by, reason, sip_reason = self._cancel
            self._end(None, f"{reason} (no 487 after CANCEL)", by, sip_reason)

    def _on_invite_failure(self, kind: str, reason: str) -> None:
        if self.state not in (CallState.CALLING, CallState.PROCEEDING, CallState.CANCELLING):
            return  # answered already (Timer M / a closed connection after the 2xx): the dialog lives on
        if kind == "transport":
            self._end(None, reason, "transport")
        else:
            self._end(408, f"no final response to INVITE: {reason}", "timeout")

    def _on_invite_response(self, response: Response) -> None:
        status = response.status
        if status < 200:
            self._provisional = True
            if self._cancel is not None:
                self._send_cancel()
            if self.state not in (CallState.CALLING, CallState.PROCEEDING):
                return
            self._set_state(CallState.PROCEEDING)
            if status == 100:
                if not self._trying_seen:
                    self._trying_seen = True
                    self._emit(CallTrying(**self._stamp()))
                return
            early = False
            if _is_sdp(response) and self._offer_sdp is not None:
                try:
                    negotiated = sdp.negotiated_from_answer(self._offer_sdp, response.body.decode())
                except MediaErrors as exc:
                    self._log.info("ignoring unusable SDP in %d: %s", status, exc)
                else:
                    self._start_media(negotiated)
                    early = True
            if self._last_ringing != (status, early):
                self._last_ringing = (status, early)
                self._emit(CallRinging(status=status, early_media=early, **self._stamp()))
            return
        if status < 300:
            self._on_invite_2xx(response)
            return
        if (
            status in (401, 407)
            and self._credentials is not None
            and not self._auth_tried
            and self.state in (CallState.CALLING, CallState.PROCEEDING)
        ):
            self._auth_tried = True
            assert self._dest is not None
            self._send_invite(self.ua._authorize(self.invite, response, self._credentials, self._dest))
            return
        if self._cancel is not None:
            by, reason, sip_reason = self._cancel
            self._end(status, f"{reason} ({status} {response.reason})", by, sip_reason)
        else:
            self._end(status, response.reason or f"status {status}", "remote", response.headers.get("Reason"))

    def _on_invite_2xx(self, response: Response) -> None:
        to_tag = response.to.tag or ""
        ack_key = (to_tag, response.cseq[0])
        sent = self._acks.get(ack_key)
        if sent is not None:  # a retransmitted 2xx: our ACK was lost
            self.ua.transport.send_request(*sent)
            return
        try:
            dialog = Dialog.uac(self.invite, response)
        except SipError as exc:
            self._log.info("cannot build a dialog from %d: %s", response.status, exc)
            return
        self._acks[ack_key] = self.ua._send_ack(dialog, response)
        if self.dialog is None and self.state in (CallState.CALLING, CallState.PROCEEDING):
            self.dialog = dialog
            self.ua._register_dialog(self)
            if self._ring_timer is not None:
                self._ring_timer.cancel()
                self._ring_timer = None
            if _is_sdp(response) and self._offer_sdp is not None:
                try:
                    self._start_media(sdp.negotiated_from_answer(self._offer_sdp, response.body.decode()))
                except MediaErrors as exc:
                    self._log.info("answer SDP unusable, hanging up: %s", exc)
                    self._send_bye_on(dialog, None)
                    self._end(488, f"unusable SDP answer: {exc}", "local")
                    return
            self._set_state(CallState.CONFIRMED)
            self._emit(CallAnswered(**self._stamp()))
            return
        # answered after we gave up, or a second fork answered: hang that dialog up
        reason = self._cancel[2] if self._cancel is not None else None
        self._send_bye_on(dialog, reason)
        if self.state is not CallState.ENDED:
            by, text, sip_reason = self._cancel or ("local", "answered elsewhere", None)
            self._end(response.status, f"{text}; answered anyway, hung up with BYE", by, sip_reason)

    # --- in-dialog requests we send ----------------------------------------------------------------------------
    def _send_bye(self, sip_reason: str | None = None) -> None:
        if self.dialog is not None:
            self._send_bye_on(self.dialog, sip_reason)

    def _send_bye_on(self, dialog: Dialog, sip_reason: str | None) -> None:
        headers = [("Reason", sip_reason)] if sip_reason else []
        dest = destination(dialog.next_hop())
        request = self.ua._prepare(dialog.new_request("BYE", headers=headers, via=self.ua._via(dest)), dest)
        dialog.terminate()
        self.ua._start_client(request, dest, credentials=self._credentials, dialog=dialog)

    async def _request_in_dialog(
        self, method: str, *, body: bytes = b"", content_type: str | None = None, limit: float | None = None
    ) -> Response:
        if self.dialog is None:
            raise LocalProtocolError(
                f"cannot send {method} on call {self.id}: no dialog (state {self.state.value})"
            )
        dest = destination(self.dialog.next_hop())
        request = self.dialog.new_request(
            method, body=body, content_type=content_type, via=self.ua._via(dest)
        )
        return await self.ua._request(
            self.ua._prepare(request, dest), dest, self._credentials, self.dialog, limit
        )

    async def _reinvite(self, direction: str) -> None:
        if self.state is not CallState.CONFIRMED or self.dialog is None:
            raise LocalProtocolError(
                f"cannot re-INVITE call {self.id} in state {self.state.value}: expected confirmed"
            )
        if self._reinvite_pending is not None:
            raise LocalProtocolError(f"cannot re-INVITE call {self.id}: a re-INVITE is already pending")
        port = self.media.local_port if self.media is not None else 9
        self._sdp_version += 1
        offer = sdp.make_offer(
            self._media_host,
            port,
            session_id=self._session_id,
            version=self._sdp_version,
            direction=direction,
        )
        dest = destination(self.dialog.next_hop())
        request = self.dialog.new_request(
            "INVITE", body=offer.encode(), content_type="application/sdp", via=self.ua._via(dest)
        )
        request = self.ua._prepare(request, dest)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Response] = loop.create_future()
        self._reinvite_pending = fut
        dialog = self.dialog

        def on_response(response: Response) -> None:
            if response.status < 200:
                return
            if 200 <= response.status < 300:
                key = (response.to.tag or "", response.cseq[0])
                if key in self._acks:
                    self.ua.transport.send_request(*self._acks[key])
                else:
                    dialog.receive_response(response)
                    self._acks[key] = self.ua._send_ack(dialog, response)
            if not fut.done():
                fut.set_result(response)

        def on_failure(kind: str, reason: str) -> None:
            if not fut.done():
                fut.set_exception(TransportError(f"re-INVITE on call {self.id} failed: {reason}"))

        core = InviteClientTransaction(
            request,
            self.ua.clock.monotonic(),
            reliable=_reliable(dest.transport),
            timers=self.ua.config.timers,
        )
        txn = _Txn(self.ua, core, dest=dest, on_response=on_response, on_failure=on_failure)
        self.ua._add_client(txn)
        txn.run()
        try:
            response = await fut
        finally:
            self._reinvite_pending = None
        if response.status >= 300:
            raise SipError(f"re-INVITE ({direction}) on call {self.id} refused with {response.status}")
        if _is_sdp(response) and self.media is not None:
            self._start_media(sdp.negotiated_from_answer(offer, response.body.decode()))
        self._local_sdp = offer

    # --- inbound ------------------------------------------------------------------------------------------------
    def _response(
        self, status: int, reason: str | None = None, *, body: bytes = b"", content_type: str | None = None
    ) -> Response:
        headers: list[tuple[str, str]] = []
        if 100 < status < 300:
            assert self._source is not None
            headers.append(("Contact", f"<{self.ua.contact_uri(self._source.peer.transport)}>"))
        if status >= 200:
            headers.append(("Allow", ALLOW))
        headers.append(("Server", self.ua.config.user_agent))
        return make_response(
            self.invite,
            status,
            reason,
            to_tag=self.local_tag if status > 100 else None,
            headers=headers,
            body=body,
            content_type=content_type,
        )

    def _respond_invite(self, response: Response) -> None:
        txn = self._server_txn
        if txn is None or txn.done:
            raise LocalProtocolError(
                f"cannot send {response.status} on call {self.id}: the INVITE transaction ended"
            )
        assert isinstance(txn.core, InviteServerTransaction)
        txn.core.respond(response, self.ua.clock.monotonic())
        txn.run()

    def _start_answer_retx(self, response: Response, cseq: int, txn: _Txn | None) -> None:
        retx = _AnswerRetx(self, response, cseq, txn)
        self._retx[cseq] = retx
        retx.start()

    def _on_cancelled(self, cancel: Request) -> None:
        """A CANCEL matched our INVITE while no final response was sent."""
        txn = self._server_txn
        if txn is not None and not txn.done and isinstance(txn.core, InviteServerTransaction):
            txn.core.cancel(self.ua.clock.monotonic(), to_tag=self.local_tag)
            txn.run()
        self._end(487, "caller cancelled", "remote", cancel.headers.get("Reason"))

    def _on_ack(self, ack: Request) -> None:
        cseq = ack.cseq[0]
        retx = self._retx.pop(cseq, None)
        if retx is None:
            return
        retx.stop()
        if self.state is CallState.ANSWERING and cseq == self.invite.cseq[0]:
            if self._offer_sdp is None and _is_sdp(ack) and self._local_sdp is not None:
                try:
                    self._start_media(sdp.negotiated_from_answer(self._local_sdp, ack.body.decode()))
                except MediaErrors as exc:
                    self._log.info("unusable SDP answer in ACK: %s", exc)
            self._set_state(CallState.CONFIRMED)
            self._emit(CallAnswered(**self._stamp()))

    def _on_no_ack(self, cseq: int) -> None:
        self._retx.pop(cseq, None)
        if self.state in (CallState.ANSWERING, CallState.CONFIRMED):
            self._send_bye()
            self._end(None, "no ACK for our 200 OK within 64*T1", "timeout")

    def _on_dialog_request(self, txn: _Txn, request: Request) -> None:
        """A request inside this call's dialog (the dialog core has checked its CSeq)."""
        now = self.ua.clock.monotonic()
        method = request.method

        def respond(status: int, reason: str | None = None, headers: Sequence[tuple[str, str]] = (),
                    body: bytes = b"", content_type: str | None = None) -> Response:  # fmt: skip
            response = make_response(
                request, status, reason, headers=headers, body=body, content_type=content_type
            )
            assert isinstance(txn.core, (InviteServerTransaction, NonInviteServerTransaction))
            txn.core.respond(response, now)
            txn.run()
            return response

        match method:
            case "BYE":
                respond(200)
                self._end(None, "remote hung up", "remote", request.headers.get("Reason"))
            case "INFO":
                digit = parse_dtmf_info(request.content_type, request.body)
                if digit is None and request.body:
                    respond(415, headers=[("Accept", "application/dtmf-relay, application/dtmf")])
                    return
                respond(200)
                if digit is not None:
                    self._emit(DtmfReceived(digit=digit, method="info", **self._stamp()))
            case "OPTIONS":
                respond(200, headers=[("Allow", ALLOW), ("Accept", ACCEPT)])
            case "INVITE":
                self._on_reinvite(txn, request, respond)
            case _ if method in KNOWN_NOT_ALLOWED:
                respond(405, headers=[("Allow", ALLOW)])
            case _:
                respond(501, headers=[("Allow", ALLOW)])

    def _on_reinvite(self, txn: _Txn, request: Request, respond: Callable[..., Response]) -> None:
        if self.state is not CallState.CONFIRMED or self._reinvite_pending is not None:
            # §14.2: an offer crossing ours (glare) or before the ACK gets 491
            glare = self.state is CallState.ANSWERING or self._reinvite_pending is not None
            respond(491 if glare else 500, headers=[("Retry-After", "1")])
            return
        port = self.media.local_port if self.media is not None else 9
        self._sdp_version += 1
        contact = [
            ("Contact", f"<{self.ua.contact_uri(txn.source.peer.transport if txn.source else 'UDP')}>")
        ]
        if _is_sdp(request):
            try:
                answer, negotiated = sdp.answer_offer(
                    request.body.decode(), self._media_host, port, session_id=self._session_id,
                    version=self._sdp_version,
                )  # fmt: skip
            except MediaErrors as exc:
                status = getattr(exc, "status", 488)
                respond(status, headers=[("Warning", f'399 {self.ua.config.host} "{exc}"')])
                return
            response = respond(200, headers=contact, body=answer.encode(), content_type="application/sdp")
            self._local_sdp = answer
            if self.media is not None:
                self._start_media(negotiated)
        else:
            body = (self._local_sdp or "").encode()
            response = respond(
                200, headers=contact, body=body, content_type="application/sdp" if body else None
            )
        self._start_answer_retx(response, request.cseq[0], txn)


class _AnswerRetx:
    """Drives an :class:`~sip.dialog.AnswerRetransmitter` (§13.3.1.4): our 2xx again until the ACK arrives."""

    def __init__(self, call: Call, response: Response, cseq: int, txn: _Txn | None) -> None:
        self.call = call
        self.cseq = cseq
        self.txn = txn
        clock = call.ua.clock
        self.core = AnswerRetransmitter(response, clock.monotonic(), call.ua.config.timers)
        self.timer: TimerHandle | None = None

    def start(self) -> None:
        deadline = self.core.next_deadline()
        if deadline is not None:
            clock = self.call.ua.clock
            self.timer = clock.call_later(deadline - clock.monotonic(), self._fire)

    def stop(self) -> None:
        self.core.ack_received()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fire(self) -> None:
        self.timer = None
        now = self.call.ua.clock.monotonic()
        self.core.on_timer(now)
        for action in self.core.take_actions():
            if isinstance(action, AckTimeout):
                self.call._on_no_ack(self.cseq)
                return
            txn = self.txn
            if txn is not None and not txn.done and isinstance(txn.core, InviteServerTransaction):
                txn.core.respond(action.message, now)  # type: ignore[arg-type]
                txn.run()
            elif txn is not None and txn.source is not None and isinstance(action.message, Response):
                self.call.ua.transport.send_response(action.message, txn.source)
        self.start()


# ---------------------------------------------------------------------------------------------------------------
# The user agent


def _client_ssl_context(config: UaConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.tls_cafile is not None:
        try:
            ctx.load_verify_locations(cafile=config.tls_cafile)
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(f"cannot load tls_cafile={config.tls_cafile!r}: {exc}") from exc
    if not config.tls_verify:
        log.warning("TLS certificate verification is OFF (tls_verify=False): peers are not authenticated")
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _server_ssl_context(config: UaConfig) -> ssl.SSLContext | None:
    if config.tls_port is None:
        return None
    if not config.tls_certfile or not config.tls_keyfile:
        raise TransportError(
            f"tls_port={config.tls_port} needs tls_certfile and tls_keyfile, "
            f"got certfile={config.tls_certfile!r} keyfile={config.tls_keyfile!r}"
        )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(config.tls_certfile, config.tls_keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(
            f"cannot load TLS certificate {config.tls_certfile!r} / key {config.tls_keyfile!r}: {exc}"
        ) from exc
    return ctx


class UserAgent:
    """A SIP user agent (UAC and UAS) on UDP, TCP and optionally TLS."""

    def __init__(self, clock: Clock, config: UaConfig) -> None:
        self.clock = clock
        self.config = config
        self.transport: TransportLayer = None  # type: ignore[assignment]  # set by start()
        self._handler: Callable[[Call], Awaitable[None]] | None = None
        self._auth: DigestServer | None = None
        self._clients: dict[tuple[str, ...], _Txn] = {}
        self._servers: dict[tuple[str, ...], _Txn] = {}
        self._dialogs: dict[tuple[str, str, str], Call] = {}
        self._outbound: dict[tuple[str, str], Call] = {}
        self._inbound: dict[tuple[str, ...], Call] = {}  # INVITE server key -> call (CANCEL, ACK matching)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closers: set[asyncio.Task[Any]] = set()  # media closes: awaited, never cancelled, by close()
        self._closed = False

    @classmethod
    async def start(cls, clock: Clock, config: UaConfig) -> UserAgent:
        """Bind the transports of ``config`` and start serving."""
        ua = cls(clock, config)
        ua.transport = await TransportLayer.start(
            config.host,
            ua._on_message,
            ua._on_unreachable,
            udp_port=config.udp_port,
            tcp_port=config.tcp_port,
            tls_port=config.tls_port,
            server_ssl=_server_ssl_context(config),
            client_ssl=_client_ssl_context(config),
        )
        return ua

    def address(self, transport: str = "UDP") -> tuple[str, int]:
        """The (host, port) this user agent listens on for ``transport``."""
        return self.transport.address(transport)

    def contact_uri(self, transport: str = "UDP") -> URI:
        host, port = self.address(transport if self.transport.has(transport) else "UDP")
        if transport == "UDP":
            return URI("sip", host, port=port)
        return URI("sip", host, port=port, params=(("transport", transport.lower()),))

    def on_incoming(self, handler: Callable[[Call], Awaitable[None]]) -> None:
        """Set the coroutine that takes inbound calls (it must ring/answer/reject them)."""
        self._handler = handler

    def require_auth(self, server: DigestServer | None) -> None:
        """Challenge inbound INVITEs with digest authentication (``None`` turns it off)."""
        self._auth = server

    # --- placing calls -----------------------------------------------------------------------------------------
    async def dial(
        self,
        target: str | URI,
        *,
        from_uri: str,
        display: str | None = None,
        ring_timeout: float | None = None,
        credentials: Credentials | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> Call:
        """Send an INVITE with an SDP offer; returns the ringing :class:`Call` at once (watch its events)."""
        uri = _parse_target(target)
        if uri.scheme == "tel":
            raise ValidationError(
                f"cannot dial {uri}: tel: URIs need a gateway; expected a sip: or sips: URI"
            )
        try:
            from_addr = NameAddr(URI.parse(from_uri), display)
        except SipParseError as exc:
            raise ValidationError(f"cannot use from_uri={from_uri!r}: {exc}") from exc
        dest = destination(uri)
        if dest.transport not in ("UDP", "TCP", "TLS"):
            raise ValidationError(f"cannot dial {uri}: transport {dest.transport} is not UDP, TCP or TLS")
        if not self.transport.has(dest.transport):
            port_key = {"UDP": "udp_port", "TCP": "tcp_port", "TLS": "tls_port"}[dest.transport]
            raise ValidationError(
                f"cannot dial {uri} over {dest.transport}: this user agent does not listen on {dest.transport} "
                f"({port_key}=None), so the peer could not reach our Contact; expected {port_key} set"
            )
        local_tag = new_tag()
        h = Headers()
        h.add("Via", "SIP/2.0/UDP placeholder")  # replaced by _prepare
        h.add("Max-Forwards", "70")
        h.add("From", str(from_addr.with_tag(local_tag)))
        h.add("To", str(NameAddr(uri)))
        h.add("Call-ID", new_call_id(self.config.host))
        h.add("CSeq", "1 INVITE")
        h.add("Contact", f"<{self.contact_uri(dest.transport)}>")
        h.add("Allow", ALLOW)
        for name, value in headers:
            h.add(name, value)
        invite = Request("INVITE", uri, h)
        call = Call(self, "outbound", invite, remote_uri=uri, local_tag=local_tag)
        call._dest = dest
        call._credentials = credentials
        port = 9
        if self.config.rtp:
            call.media = await RtpSession.open(self.clock, call._media_host, 0)
            port = call.media.local_port
        offer = sdp.make_offer(call._media_host, port, session_id=call._session_id)
        call._offer_sdp = call._local_sdp = offer
        invite.body = offer.encode()
        invite.headers.set("Content-Type", "application/sdp")
        invite = self._prepare(invite, dest)
        self._outbound[(invite.call_id, local_tag)] = call
        if ring_timeout is not None:
            call._ring_timer = self.clock.call_later(ring_timeout, call._on_ring_timeout)
        call._send_invite(invite)
        return call

    async def options(
        self,
        target: str | URI,
        *,
        timeout: float = 2.0,  # noqa: ASYNC109 - the agreed API (helpers' API.md) names it so
        credentials: Credentials | None = None,
    ) -> int:
        """Send OPTIONS out of dialog; the final status (408 after ``timeout``); TransportError if unreachable."""
        uri = _parse_target(target)
        dest = destination(uri)
        h = Headers()
        h.add("Via", "SIP/2.0/UDP placeholder")
        h.add("Max-Forwards", "70")
        h.add("From", str(NameAddr(self.contact_uri(dest.transport)).with_tag(new_tag())))
        h.add("To", str(NameAddr(uri)))
        h.add("Call-ID", new_call_id(self.config.host))
        h.add("CSeq", "1 OPTIONS")
        h.add("Accept", ACCEPT)
        request = self._prepare(Request("OPTIONS", uri, h), dest)
        try:
            response = await self._request(request, dest, credentials, None, timeout)
        except TimeoutError:
            return 408
        return response.status

    def cancel_orphan(
        self, sent: SentInvite, *, sends: int = 5, sip_reason: str | None = None
    ) -> asyncio.Future[int | None]:
        """CANCEL an INVITE that another process (now dead) sent: the phone it left ringing stops (§9.1).

        The CANCEL carries the INVITE's own top Via (branch and sent-by), so the phone matches it to its INVITE
        server transaction even though it comes from our address. It is sent where the INVITE went by a
        non-INVITE client transaction of ours (over UDP: retransmitted by Timer E; TCP/TLS: a new connection,
        sent once). Its responses are addressed to the INVITE's Via: a phone that honours ``rport`` (RFC 3581)
        sends them to us and the transaction ends at the first final response; otherwise they go to the dead
        process and we stop after ``sends`` transmissions. Fire-and-forget: the returned future (never
        awaited by the escalation layer) holds the final status seen, or ``None`` if none came (transport
        failures are logged). The 487 of the INVITE goes to the dead process; nobody ACKs it (the phone's
        Timer H ends that).
        """
        fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        cancel = sent.cancel_request(sip_reason=sip_reason)
        cancel.headers.add("User-Agent", self.config.user_agent)
        dest = sent.destination
        if self._closed:
            log.info("not cancelling orphan INVITE %s: the user agent is closed", sent.call_id)
            fut.set_result(None)
            return fut
        timer: TimerHandle | None = None

        def settle(status: int | None) -> None:
            if timer is not None:
                timer.cancel()
            if not fut.done():
                fut.set_result(status)

        def on_response(response: Response) -> None:
            if response.status >= 200:
                log.info("orphan CANCEL of %s to %s answered %d", sent.call_id, dest, response.status)
                settle(response.status)

        def on_failure(kind: str, reason: str) -> None:
            log.info("orphan CANCEL of %s to %s: %s (%s)", sent.call_id, dest, reason, kind)
            settle(None)

        txn = self._start_client(cancel, dest, on_response=on_response, on_failure=on_failure)

        def give_up() -> None:
            if not txn.done:
                txn._finish()
            settle(None)

        if not txn.done and not fut.done():
            timer = self.clock.call_later(_timer_e_window(self.config.timers, sends), give_up)
        return fut

    async def close(self) -> None:
        """Hang up every call, then close the transports."""
        self._closed = True
        for call in (
            list(self._dialogs.values()) + list(self._outbound.values()) + list(self._inbound.values())
        ):
            with contextlib.suppress(SipError):
                if call.state is not CallState.ENDED:
                    await call.hangup()
                    call._end(None, "user agent closed", "local")
        await self.transport.close()
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for txn in list(self._clients.values()) + list(self._servers.values()):
            txn._finish()

    # --- plumbing used by calls ---------------------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._closers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def _prepare(self, request: Request, dest: Peer, *, new_via: bool = False) -> Request:
        """Give a request we originate our Via (fresh branch, rport) unless it has one, Max-Forwards, User-Agent."""
        vias = request.headers.get_all("Via")
        if new_via or not vias or "placeholder" in vias[0]:
            request.headers.remove("Via")
            request.headers.prepend("Via", self._via(dest))
        if "Max-Forwards" not in request.headers:
            request.headers.add("Max-Forwards", "70")
        if "User-Agent" not in request.headers:
            request.headers.add("User-Agent", self.config.user_agent)
        if request.method == "INVITE" and "Contact" not in request.headers:
            request.headers.add("Contact", f"<{self.contact_uri(dest.transport)}>")
        return request

    def _via(self, dest: Peer) -> str:
        host, port = self.address(dest.transport if self.transport.has(dest.transport) else "UDP")
        return f"SIP/2.0/{dest.transport} {host}:{port};branch={new_branch()};rport"

    def _send_ack(self, dialog: Dialog, response: Response) -> tuple[Request, Peer]:
        """Send the ACK for a 2xx (no transaction, §13.2.2.4); returns it with its destination for re-sending."""
        dest = destination(dialog.next_hop())
        ack = dialog.ack(response, via=self._via(dest))
        if "User-Agent" not in ack.headers:
            ack.headers.add("User-Agent", self.config.user_agent)
        self.transport.send_request(ack, dest)
        return ack, dest

    def _authorize(
        self, request: Request, challenge: Response, credentials: Credentials, dest: Peer
    ) -> Request:
        """A copy of ``request`` with CSeq + 1, a new branch and the digest answer to ``challenge``."""
        cseq, method = request.cseq
        h = request.headers.copy()
        h.set("CSeq", f"{cseq + 1} {method}")
        retry = self._prepare(Request(request.method, request.uri, h, request.body), dest, new_via=True)
        return answer_challenge(retry, challenge, credentials, nc=1, cnonce=secrets.token_hex(8))

    def _add_client(self, txn: _Txn) -> None:
        self._clients[txn.key] = txn

    def _start_client(
        self,
        request: Request,
        dest: Peer,
        *,
        on_response: Callable[[Response], None] | None = None,
        on_failure: Callable[[str, str], None] | None = None,
        credentials: Credentials | None = None,
        dialog: Dialog | None = None,
    ) -> _Txn:
        """Start a non-INVITE client transaction (one digest retry on 401/407 when ``credentials`` are given)."""
        tried = False

        def handle(response: Response) -> None:
            nonlocal tried
            if response.status in (401, 407) and credentials is not None and not tried:
                tried = True
                retry = self._authorize(request, response, credentials, dest)
                if dialog is not None:
                    _bump_local_cseq(dialog, retry.cseq[0])
                self._start_client(retry, dest, on_response=on_response, on_failure=on_failure)
                return
            if on_response is not None:
                on_response(response)

        core = NonInviteClientTransaction(
            request, self.clock.monotonic(), reliable=_reliable(dest.transport), timers=self.config.timers
        )
        txn = _Txn(self, core, dest=dest, on_response=handle, on_failure=on_failure)
        self._add_client(txn)
        txn.run()
        return txn

    async def _request(
        self,
        request: Request,
        dest: Peer,
        credentials: Credentials | None,
        dialog: Dialog | None,
        limit: float | None,
    ) -> Response:
        """Send a non-INVITE request and wait for its final response."""
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

        def on_response(response: Response) -> None:
            if response.status >= 200 and not fut.done():
                fut.set_result(response)

        def on_failure(kind: str, reason: str) -> None:
            if fut.done():
                return
            if kind == "transport":
                fut.set_exception(TransportError(f"{request.method} to {dest} failed: {reason}"))
            else:
                fut.set_exception(TimeoutError(f"{request.method} to {dest}: {reason}"))

        txn = self._start_client(
            request,
            dest,
            on_response=on_response,
            on_failure=on_failure,
            credentials=credentials,
            dialog=dialog,
        )
        timer: TimerHandle | None = None
        if limit is not None:

            def expire() -> None:
                if not fut.done():
                    fut.set_exception(
                        TimeoutError(f"{request.method} to {dest}: no final response in {limit} s")
                    )

            timer = self.clock.call_later(limit, expire)
        try:
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            if fut.done() and not fut.cancelled() and fut.exception() is not None and not txn.done:
                txn._finish()

    def _register_dialog(self, call: Call) -> None:
        assert call.dialog is not None
        d = call.dialog
        self._dialogs[(d.call_id, d.local_tag, d.remote_tag)] = call

    def _call_ended(self, call: Call) -> None:
        # Retransmissions after the end are the transactions' business (Timers J, L, M keep them alive), so
        # the call leaves the tables at once; this also keeps the heap (and full GC pauses) small under load.
        if call.dialog is not None and self._dialogs.get(call.dialog.id) is call:
            del self._dialogs[call.dialog.id]
        key = (call.call_id, call.local_tag)
        if self._outbound.get(key) is call:
            del self._outbound[key]
        if call._server_txn is not None and self._inbound.get(call._server_txn.key) is call:
            del self._inbound[call._server_txn.key]

    def _forget_txn(self, txn: _Txn) -> None:
        table = (
            self._servers
            if isinstance(txn.core, (InviteServerTransaction, NonInviteServerTransaction))
            else self._clients
        )
        if table.get(txn.key) is txn:
            del table[txn.key]

    # --- receiving -----------------------------------------------------------------------------------------------
    def _on_unreachable(self, peer: Peer, reason: str) -> None:
        for txn in [t for t in self._clients.values() if t.dest == peer]:
            txn.transport_error(reason)

    def _on_message(self, message: Request | Response, source: Source) -> None:
        if self._closed:
            return
        if isinstance(message, Response):
            self._on_response(message)
        else:
            self._on_request(message, source)

    def _on_response(self, response: Response) -> None:
        txn = self._clients.get(client_key(response))
        if txn is not None:
            assert isinstance(txn.core, (InviteClientTransaction, NonInviteClientTransaction))
            txn.core.receive(response, self.clock.monotonic())
            txn.run()
            return
        # no transaction: a 2xx to an INVITE retransmitted after the transaction ended, or from another fork
        if response.cseq[1] == "INVITE" and 200 <= response.status < 300:
            call = self._outbound.get((response.call_id, response.from_.tag or ""))
            if call is not None:
                call._on_invite_2xx(response)
                return
        log.info("dropped a stray response %d %s (no transaction)", response.status, response.cseq[1])

    def _on_request(self, request: Request, source: Source) -> None:
        method = request.method
        key = server_key(request)
        now = self.clock.monotonic()
        txn = self._servers.get(key)
        if txn is not None:  # a retransmission, or an ACK for a non-2xx
            assert isinstance(txn.core, (InviteServerTransaction, NonInviteServerTransaction))
            txn.core.receive(request, now)
            txn.run()
            return
        if method == "ACK":
            call = self._dialog_call(request)
            if call is not None:
                call._on_ack(request)
            else:
                log.info("dropped an ACK outside any dialog (Call-ID %s)", request.call_id)
            return
        reliable = _reliable(source.peer.transport)
        timers = self.config.timers
        if method == "INVITE":
            core: ServerCore = InviteServerTransaction(request, now, reliable=reliable, timers=timers)
        else:
            core = NonInviteServerTransaction(request, now, reliable=reliable, timers=timers)
        txn = _Txn(self, core, source=source)
        self._servers[key] = txn
        txn.run()  # DeliverRequest is handled right here, below
        try:
            self._dispatch(txn, request, source)
        except SipError as exc:  # the peer's fault (a header we could not use): answer and go on
            log.info("answering %s with an error: %s", method, exc)
            status = exc.status if isinstance(exc, SipParseError) else 500
            self._respond(txn, request, status, " ".join(str(exc).split())[:120])
        except Exception:  # ours: never leave the peer retransmitting into a dead transaction
            log.exception("failed to handle %s %s (Call-ID %s)", method, request.uri, request.call_id)
            self._respond(txn, request, 500, "Server Internal Error")

    def _respond(self, txn: _Txn, request: Request, status: int, reason: str | None = None,
                 headers: Sequence[tuple[str, str]] = ()) -> None:  # fmt: skip
        if txn.done:
            return
        to_tag = None if request.to.tag else new_tag()
        response = make_response(request, status, reason, to_tag=to_tag, headers=headers)
        core = txn.core
        assert isinstance(core, (InviteServerTransaction, NonInviteServerTransaction))
        with contextlib.suppress(LocalProtocolError):
            core.respond(response, self.clock.monotonic())
        txn.run()

    def _dialog_call(self, request: Request) -> Call | None:
        return self._dialogs.get((request.call_id, request.to.tag or "", request.from_.tag or ""))

    def _dispatch(self, txn: _Txn, request: Request, source: Source) -> None:
        method = request.method
        if method == "CANCEL":
            call = self._inbound.get(cancel_target_key(request))
            if call is None:
                self._respond(txn, request, 481)
                return
            self._respond(txn, request, 200)
            if call.state in (CallState.INCOMING, CallState.RINGING):
                call._on_cancelled(request)
            return
        if request.to.tag:
            call = self._dialog_call(request)
            if call is None or call.dialog is None:
                self._respond(txn, request, 481)
                return
            try:
                call.dialog.receive_request(request)
            except RequestRefused as exc:
                log.info("in-dialog %s refused: %s", method, exc)
                self._respond(
                    txn, request, exc.status, None, [("Retry-After", "1")] if exc.status == 500 else []
                )
                return
            call._on_dialog_request(txn, request)
            return
        match method:
            case "INVITE":
                self._on_new_invite(txn, request, source)
            case "OPTIONS":
                self._respond(txn, request, 200, headers=[("Allow", ALLOW), ("Accept", ACCEPT)])
            case "BYE" | "INFO":
                self._respond(txn, request, 481)
            case _ if method in KNOWN_NOT_ALLOWED:
                self._respond(txn, request, 405, headers=[("Allow", ALLOW)])
            case _:
                self._respond(txn, request, 501, headers=[("Allow", ALLOW)])

    def _on_new_invite(self, txn: _Txn, request: Request, source: Source) -> None:
        if self._auth is not None:
            result = self._auth.check(request, self.clock.monotonic(), source.peer.host)
            challenge = _auth_refusal(result)
            if challenge is not None:
                assert isinstance(txn.core, InviteServerTransaction)
                txn.core.respond(challenge, self.clock.monotonic())
                txn.run()
                return
        offer: str | None = None
        if request.body:
            if request.content_type != "application/sdp":
                self._respond(txn, request, 415, headers=[("Accept", "application/sdp")])
                return
            offer = request.body.decode("utf-8", errors="replace")
            try:
                sdp.answer_offer(offer, self.config.media_host or self.config.host, 9, session_id=1)
            except sdp.SdpError as exc:
                self._respond(txn, request, exc.status, "Not Acceptable Here",
                              [("Warning", f'305 {self.config.host} "{exc}"')])  # fmt: skip
                return
        if self._handler is None:
            self._respond(txn, request, 480, "No handler for incoming calls")
            return
        call = Call(self, "inbound", request, remote_uri=request.from_.uri, local_tag=new_tag())
        try:
            call.dialog = Dialog.uas(request, call.local_tag, self.contact_uri(source.peer.transport))
        except RequestRefused as exc:
            self._respond(txn, request, exc.status, str(exc)[:120])
            return
        call._source = source
        call._server_txn = txn
        call._offer_sdp = offer
        self._inbound[txn.key] = call
        txn.on_ack = call._on_ack
        call._respond_invite(call._response(100))
        self._spawn(self._run_handler(call))

    async def _run_handler(self, call: Call) -> None:
        assert self._handler is not None
        try:
            await self._handler(call)
        except Exception:
            log.exception("incoming-call handler failed on call %s", call.id)
            if call.state in (CallState.INCOMING, CallState.RINGING):
                with contextlib.suppress(SipError):
                    await call.reject(500, "Server Internal Error")


def _bump_local_cseq(dialog: Dialog, cseq: int) -> None:
    """After a digest retry inside a dialog, the dialog's next CSeq must follow the retried request."""
    dialog.local_seq = max(dialog.local_seq, cseq)


def _auth_refusal(result: AuthResult) -> Response | None:
    """The response to send for a failed digest check, or ``None`` when the request is authorised."""
    if result.ok:
        return None
    if result.event is not None:
        log.info("digest check failed: %s", result.event)
    if result.response is None:
        raise SipError(f"digest check {result.status.value} gave no response to send")
    return result.response


# ---------------------------------------------------------------------------------------------------------------
# Forking


class ForkGroup:
    """One alert to several targets in parallel: the first 2xx wins; the others are CANCELled or BYE'd."""

    def __init__(self, legs: list[Call]) -> None:
        self.legs = legs
        self._winner: Call | None = None
        self._decided: asyncio.Future[Call | None] = asyncio.get_running_loop().create_future()
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def dial(cls, ua: UserAgent, targets: Sequence[str], **dial_kwargs: Any) -> ForkGroup:
        """Dial every target at once (each leg takes ``dial_kwargs``, e.g. ``from_uri``, ``ring_timeout``)."""
        if not targets:
            raise ValidationError("cannot fork to no targets: expected at least one")
        legs = list(await asyncio.gather(*(ua.dial(t, **dial_kwargs) for t in targets)))
        group = cls(legs)
        for leg in legs:
            task = asyncio.ensure_future(group._watch(leg))
            group._tasks.append(task)
            ua._tasks.add(task)
            task.add_done_callback(ua._task_done)
        return group

    async def winner(self) -> Call | None:
        """The leg that answered first, or ``None`` once every leg ended unanswered."""
        return await asyncio.shield(self._decided)

    def outcomes(self) -> dict[str, CallEnded | None]:
        """Each leg's :class:`CallEnded` by call id (``None`` while it is still up or ringing)."""
        return {leg.id: leg.ended for leg in self.legs}

    async def wait_all_ended(self) -> list[CallEnded]:
        """Wait until every losing leg (and the winner, if it is hung up) has ended."""
        return [await leg.wait_ended() for leg in self.legs]

    async def cancel(self) -> None:
        """Give up on every leg (e.g. the incident was accepted by another channel)."""
        for leg in self.legs:
            await leg.hangup()

    async def _watch(self, leg: Call) -> None:
        async for event in leg.events():
            if isinstance(event, CallAnswered):
                if self._winner is None:
                    self._winner = leg
                    if not self._decided.done():
                        self._decided.set_result(leg)
                    for other in self.legs:
                        if other is not leg:
                            await other.cancel(sip_reason=FORK_REASON)
                elif leg is not self._winner:
                    await leg.cancel(sip_reason=FORK_REASON)
        if (
            self._winner is None
            and all(leg.ended is not None for leg in self.legs)
            and not self._decided.done()
        ):
            self._decided.set_result(None)
