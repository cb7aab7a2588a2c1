"""Twilio Media Streams, the call side: who may open a stream, and what it is bridged to.

A call is sent into a bidirectional stream with TwiML (:func:`connect_stream_twiml`)::

    <Connect><Stream url="wss://PUBLIC/twilio/media-stream"><Parameter name="token" value="T"/></Stream></Connect>

Twilio signs the WebSocket upgrade with ``X-Twilio-Signature`` over the ``wss://`` URL and no parameters: that
signature is the same for every stream, forever, so it proves the socket comes from Twilio but not which call it
is for (a replayed header would do). Each ``<Stream>`` therefore carries a one-time **grant token** (192 random
bits, ``secrets.token_urlsafe``), handed out by :class:`StreamGrants` for one incident, one leg and one CallSid.
Twilio echoes it in the ``start`` message's ``customParameters``; :meth:`StreamGrants.claim` accepts it once, only
for the CallSid it was issued for and only before it expires. A stream with no valid grant is refused (the socket
is closed and a security event written by :mod:`comms.twilio_media`).

A grant says what the stream joins: :meth:`Grant.attach` builds the :class:`StreamEndpoint` that takes the
caller's 20 ms µ-law frames and sends ours (the media gateway's room mix for an accepted radiologist, or a SIP
leg's RTP session for a technologist who dialled in on the Twilio number: :class:`RtpStreamBridge`).
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from comms.clock import Clock
from escalation.channel import LegOrder
from ivr.menu import speakable_room
from ivr.twiml import Voice, connect_stream
from media import audio
from media.errors import MediaError
from media.session import RtpSession

__all__ = [
    "STREAM_PATH",
    "Grant",
    "Handover",
    "RtpStreamBridge",
    "StreamContext",
    "StreamEndpoint",
    "StreamGrants",
    "TwilioAcceptedHandler",
    "TwilioCallRef",
    "chain_twilio_accepted",
    "gateway_attach",
    "room_stream_handler",
    "stream_url",
]

log = logging.getLogger(__name__)

STREAM_PATH = "/twilio/media-stream"
FRAME = 160  # 20 ms of 8 kHz µ-law


@dataclass(frozen=True)
class StreamContext:
    """What the WebSocket adapter gives an endpoint: the stream's ids, a way to send, a way to end it."""

    stream_sid: str
    call_sid: str
    send: Callable[[bytes], None]
    """Queue 160 bytes of µ-law (20 ms) for Twilio."""
    end: Callable[[str], None]
    """Close the stream from our side (Twilio then runs the TwiML after ``<Connect>``)."""


class StreamEndpoint(Protocol):
    def receive(self, ulaw: bytes) -> None:
        """One inbound ``media`` payload (µ-law, usually 160 bytes)."""
        ...

    def close(self, reason: str) -> None:
        """The stream is over (``stop``, socket closed, or ended by us). Idempotent."""
        ...


@dataclass(frozen=True)
class Grant:
    token: str
    incident_id: str
    leg_id: str | None
    call_sid: str
    purpose: str
    """``room`` (an accepted radiologist hears the room) or ``dialin`` (a caller bridged to a SIP radiologist)."""
    attach: Callable[[StreamContext], StreamEndpoint]
    expires_mono: float


@dataclass
class StreamGrants:
    """One-time stream tokens, in memory (a stream is opened seconds after its TwiML is served)."""

    clock: Clock
    ttl_s: float = 120.0
    _grants: dict[str, Grant] = field(default_factory=dict)

    def issue(
        self,
        *,
        incident_id: str,
        leg_id: str | None,
        call_sid: str,
        purpose: str,
        attach: Callable[[StreamContext], StreamEndpoint],
    ) -> str:
        """A new token for one stream of ``call_sid``."""
        self._expire()
        token = secrets.token_urlsafe(24)
        self._grants[token] = Grant(
            token, incident_id, leg_id, call_sid, purpose, attach, self.clock.monotonic() + self.ttl_s
        )
        return token

    def claim(self, token: str, call_sid: str) -> Grant:
        """Take the grant of ``token`` for ``call_sid`` (once); raises :class:`MediaError` saying why not."""
        self._expire()
        grant = self._grants.get(token) if token else None
        if grant is None:
            raise MediaError("stream token is unknown, used or expired: expected a token we issued")
        if not secrets.compare_digest(grant.call_sid, call_sid):
            raise MediaError(
                f"stream token was issued for call {grant.call_sid}, not {call_sid}: expected the same CallSid"
            )
        del self._grants[token]
        return grant

    def revoke(self, call_sid: str) -> None:
        for token in [t for t, g in self._grants.items() if g.call_sid == call_sid]:
            del self._grants[token]

    def _expire(self) -> None:
        now = self.clock.monotonic()
        for token in [t for t, g in self._grants.items() if g.expires_mono <= now]:
            del self._grants[token]


def stream_url(public_base_url: str) -> str:
    """The ``wss://`` URL of our stream route under the public base URL (Twilio only speaks ``wss``)."""
    base = public_base_url.rstrip("/")
    host = base.split("://", 1)[1] if "://" in base else base
    return "wss://" + host + STREAM_PATH


# ------------------------------------------------------------------------------------------- accept hook


@dataclass(frozen=True)
class TwilioCallRef:
    """The Twilio call of an accepted leg."""

    leg_id: str
    call_sid: str


@dataclass(frozen=True)
class Handover:
    """What an accepted Twilio call continues with: ``twiml`` answers its Gather; ``to`` names it in the evidence."""

    twiml: str
    to: str


TwilioAcceptedHandler = Callable[[LegOrder, TwilioCallRef], Awaitable[Handover | None]]
"""Offered every Twilio call whose person won the accept: a :class:`Handover` keeps the call (a conference with
the technologist on the line, a media stream to the room); None leaves it to the channel, which thanks the
radiologist and hangs up."""

CONNECTING_TEXT = "Thank you. You have accepted incident {code}. Connecting you to room {room} now."
ROOM_LEFT_TEXT = "The room has left the call. Goodbye."


def chain_twilio_accepted(*handlers: TwilioAcceptedHandler) -> TwilioAcceptedHandler:
    """One handler that offers an accepted call to each of ``handlers`` in turn until one keeps it."""

    async def offer(order: LegOrder, call: TwilioCallRef) -> Handover | None:
        for handler in handlers:
            handover = await handler(order, call)
            if handover is not None:
                return handover
        return None

    return offer


def room_stream_handler(
    gateway: Any, grants: StreamGrants, public_base_url: str, voice: Voice | None = None
) -> TwilioAcceptedHandler:
    """Connect an accepted radiologist's Twilio call to the incident's room through the media gateway
    (``gateway`` is a :class:`media.gateway.MediaGateway`): ``<Connect><Stream>`` with a one-time grant.
    Declines (None) when nobody is there to talk to: no live room session and no other party."""
    url = stream_url(public_base_url)
    speech = voice or Voice()

    async def offer(order: LegOrder, call: TwilioCallRef) -> Handover | None:
        if not gateway.reachable(order.incident_id, order.room_code):
            log.info(
                "[incident=%s leg=%s] accepted Twilio call not streamed: room %s has no live session",
                order.incident_id,
                order.leg_id,
                order.room_code,
            )
            return None
        token = grants.issue(
            incident_id=order.incident_id,
            leg_id=order.leg_id,
            call_sid=call.call_sid,
            purpose="room",
            attach=gateway_attach(gateway, order.incident_id, order.leg_id),
        )
        text = CONNECTING_TEXT.format(
            code=" ".join(order.incident_code), room=speakable_room(order.room_code)
        )
        twiml = connect_stream([text], url, {"token": token}, after=[ROOM_LEFT_TEXT], voice=speech)
        return Handover(twiml, "room_stream")

    return offer


# ------------------------------------------------------------------------------------------- endpoints


class _GatewayEndpoint:
    """An accepted radiologist's stream joined to the room through the media gateway."""

    def __init__(self, gateway: Any, incident_id: str, leg: Any) -> None:
        self._gateway, self._incident, self._leg = gateway, incident_id, leg
        self._closed = False

    def receive(self, ulaw: bytes) -> None:
        self._leg.receive(ulaw)

    def close(self, reason: str) -> None:
        if not self._closed:
            self._closed = True
            self._gateway.leave_stream(self._incident, self._leg, reason)


def gateway_attach(
    gateway: Any, incident_id: str, leg_id: str | None
) -> Callable[[StreamContext], StreamEndpoint]:
    """A grant's ``attach`` for the room: ``gateway`` is a :class:`media.gateway.MediaGateway`."""

    def attach(ctx: StreamContext) -> StreamEndpoint:
        leg = gateway.join_stream(incident_id, ctx.stream_sid, ctx.send, leg_id=leg_id)
        return _GatewayEndpoint(gateway, incident_id, leg)

    return attach


@dataclass
class _Direction:
    name: str
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    underruns: int = 0
    peak: int = 0
    established_mono: float | None = None

    def level(self, samples: audio.Samples) -> None:
        if samples.size:
            self.peak = max(self.peak, int(np.abs(samples.astype(np.int32)).max()))

    def snapshot(self) -> dict[str, Any]:
        peak_dbfs = 20 * float(np.log10(self.peak / 32768.0)) if self.peak > 0 else audio.FLOOR_DBFS
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "dropped": self.dropped,
            "underruns": self.underruns,
            "peak_dbfs": round(peak_dbfs, 1),
            "established": self.established_mono is not None,
        }


class RtpStreamBridge:
    """A Twilio media stream cross-connected with one SIP leg's :class:`~media.session.RtpSession` (both 8 kHz
    G.711: no resampling). Paced by the RTP session's 20 ms tick, like :class:`media.legbridge.LegBridge`: the
    stream's frames wait in a queue of at most ``max_frames`` (oldest dropped), and every frame the SIP leg plays
    out is sent on the stream at once. A direction is *established* at its first frame carrying audio from the
    far end (a received RTP packet, a received stream frame)."""

    def __init__(
        self,
        clock: Clock,
        session: RtpSession,
        ctx: StreamContext,
        *,
        names: tuple[str, str] = ("caller", "radiologist"),
        max_frames: int = 3,
        on_close: Callable[[str], None] | None = None,
    ) -> None:
        if session.state != "running":
            raise MediaError(
                f"cannot bridge a stream to an RTP session in state {session.state}: expected running"
            )
        self._clock = clock
        self._session = session
        self._ctx = ctx
        self._max = max_frames
        self._queue: deque[audio.Samples] = deque()
        self._pending = b""
        self._on_close = on_close
        stream, sip = names
        self.to_sip = _Direction(f"{stream}->{sip}")
        self.to_stream = _Direction(f"{sip}->{stream}")
        self._rx_at_start = session.stats.packets_received
        self.started_mono = clock.monotonic()
        self.closed: str | None = None
        session.attach(source=self._pop, sink=self._played)

    @property
    def stream_sid(self) -> str:
        return self._ctx.stream_sid

    # stream -> SIP
    def receive(self, ulaw: bytes) -> None:
        if self.closed is not None:
            return
        self._pending += ulaw
        while len(self._pending) >= FRAME:
            chunk, self._pending = self._pending[:FRAME], self._pending[FRAME:]
            d = self.to_sip
            if len(self._queue) >= self._max:
                self._queue.popleft()
                d.dropped += 1
            samples = audio.decode("PCMU", chunk)
            self._queue.append(samples)
            d.frames_in += 1
            d.level(samples)

    def _pop(self) -> audio.Samples | None:
        d = self.to_sip
        if not self._queue:
            d.underruns += 1
            return None
        d.frames_out += 1
        if d.established_mono is None:
            d.established_mono = self._clock.monotonic()
        return self._queue.popleft()

    # SIP -> stream
    def _played(self, samples: audio.Samples) -> None:
        d = self.to_stream
        d.frames_in += 1
        d.level(samples)
        if d.established_mono is None and self._session.stats.packets_received > self._rx_at_start:
            d.established_mono = self._clock.monotonic()
        self._ctx.send(audio.encode("PCMU", samples))
        d.frames_out += 1

    def snapshot(self) -> tuple[_Direction, _Direction]:
        return self.to_sip, self.to_stream

    def close(self, reason: str) -> None:
        if self.closed is not None:
            return
        self.closed = reason
        self._session.attach()
        if self._on_close is not None:
            self._on_close(reason)

    def hang_up(self, reason: str) -> None:
        """End the stream from our side (the SIP leg went away)."""
        self._ctx.end(reason)
        self.close(reason)
