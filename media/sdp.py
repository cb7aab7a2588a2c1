"""SDP offer/answer for one G.711 audio stream (RFC 4566, RFC 3264, RFC 4733 §7). Pure: no I/O.

Theory of operation
-------------------
We offer one audio stream: ``m=audio <port> RTP/AVP 0 8 101`` (PCMU, PCMA, telephone-event/8000 on 101),
``a=ptime:20`` and a direction attribute. :func:`make_offer` renders it; hold is an offer with
``direction="sendonly"`` (or ``"inactive"``).

Answering (:func:`answer_offer`): every m-line of the offer gets exactly one m-line in the answer, in the same
order (RFC 3264 §6). The first ``audio`` m-line over ``RTP/AVP`` with a non-zero port that lists PCMU or PCMA
is accepted; the codec is the first of those two in the *offerer's* preference order. telephone-event is
accepted with the *offerer's* payload type (any number, rate 8000). Every other m-line (video, a second audio
stream, SRTP ``RTP/SAVP``, T.38 ...) is rejected with port 0 and its offered formats echoed. If nothing is
acceptable, :class:`SdpError` (status 488) names what was offered.

Direction is always stated from *our* side in :class:`NegotiatedMedia`: an offer ``sendonly`` (the peer holds
us) is answered ``recvonly`` and we receive only. The legacy hold form, ``c=0.0.0.0`` (RFC 2543, RFC 3264
§8.4), means "do not send to me": we neither send nor expect to, unless the peer says ``sendonly``, in which
case we answer ``recvonly``.

The offerer side (:func:`negotiated_from_answer`) checks the answer against our offer (same m-line count, the
accepted codec was offered) and reverses the answer's direction into ours.

``ptime`` in :class:`NegotiatedMedia` is the packet time the peer asked for (``a=ptime``, default 20). We
always send 20 ms packets (a ``ptime`` is a hint, RFC 4566 §6) and accept any packet length on receipt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from comms.errors import CommsError

__all__ = [
    "DIRECTIONS",
    "MediaDescription",
    "NegotiatedMedia",
    "SdpError",
    "SessionDescription",
    "answer_offer",
    "make_offer",
    "negotiated_from_answer",
    "parse_sdp",
]

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_REVERSE = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
_STATIC = {0: "PCMU", 8: "PCMA"}
_CODECS = ("PCMU", "PCMA")
OFFER_DTMF_PT = 101
SESSION_NAME = "ContrastComms"


class SdpError(CommsError):
    """An SDP could not be parsed or nothing in it is acceptable. ``status`` is the SIP response to send
    (488)."""

    def __init__(self, message: str, status: int = 488) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class NegotiatedMedia:
    """The result of one offer/answer exchange, from our side.

    ``direction`` is ours: ``sendrecv`` / ``sendonly`` (we send, peer does not) / ``recvonly`` / ``inactive``.
    """

    remote_host: str
    remote_port: int
    codec: str
    payload_type: int
    dtmf_payload_type: int | None
    ptime: int
    direction: str

    @property
    def sends(self) -> bool:
        """True when we may send RTP."""
        return self.direction in ("sendrecv", "sendonly")

    @property
    def receives(self) -> bool:
        """True when the peer may send RTP to us."""
        return self.direction in ("sendrecv", "recvonly")

    @property
    def on_hold(self) -> bool:
        """True when at least one side does not send."""
        return self.direction != "sendrecv"


@dataclass(frozen=True)
class MediaDescription:
    """One ``m=`` section."""

    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    connection: str | None = None  # media-level c= address
    attributes: tuple[tuple[str, str | None], ...] = ()

    def attribute(self, name: str) -> str | None:
        for key, value in self.attributes:
            if key == name:
                return value if value is not None else ""
        return None

    def attribute_values(self, name: str) -> list[str]:
        return [v or "" for k, v in self.attributes if k == name]

    def rtpmap(self) -> dict[int, tuple[str, int]]:
        """Payload type -> (encoding name upper-case, clock rate) for the listed formats, static ones included."""
        out: dict[int, tuple[str, int]] = {}
        for fmt in self.formats:
            if fmt.isdigit() and int(fmt) in _STATIC:
                out[int(fmt)] = (_STATIC[int(fmt)], 8000)
        for value in self.attribute_values("rtpmap"):
            pt, _, rest = value.partition(" ")
            name, _, rate = rest.strip().partition("/")
            rate = rate.partition("/")[0]
            if pt.isdigit() and rate.isdigit() and pt in self.formats:
                out[int(pt)] = (name.upper(), int(rate))
        return out

    def describe(self) -> str:
        """Human summary for error messages: ``audio RTP/AVP [18 G729/8000, 101 TELEPHONE-EVENT/8000]``."""
        names = self.rtpmap()
        fmts = []
        for fmt in self.formats:
            if fmt.isdigit() and int(fmt) in names:
                n, r = names[int(fmt)]
                fmts.append(f"{fmt} {n}/{r}")
            else:
                fmts.append(fmt)
        return f"m={self.media} port {self.port} {self.proto} [{', '.join(fmts)}]"


@dataclass(frozen=True)
class SessionDescription:
    """A parsed SDP (only what offer/answer needs; unknown lines are kept as session attributes or
    dropped)."""

    origin: str
    session_name: str
    connection: str | None
    media: tuple[MediaDescription, ...]
    attributes: tuple[tuple[str, str | None], ...] = field(default=())

    def address_of(self, m: MediaDescription) -> str | None:
        return m.connection if m.connection is not None else self.connection

    def direction_of(self, m: MediaDescription) -> str:
        for key, _ in reversed(m.attributes):
            if key in DIRECTIONS:
                return key
        for key, _ in reversed(self.attributes):
            if key in DIRECTIONS:
                return key
        return "sendrecv"


def _parse_connection(value: str, lineno: int) -> str:
    parts = value.split()
    if len(parts) < 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"bad SDP line {lineno}: c={value!r}: expected 'IN IP4|IP6 <address>'", status=400)
    return parts[2].split("/")[0]


@dataclass
class _Section:
    media: str
    port: int
    proto: str
    formats: list[str]
    connection: str | None = None
    attrs: list[tuple[str, str | None]] = field(default_factory=list)

    def build(self) -> MediaDescription:
        return MediaDescription(
            self.media, self.port, self.proto, tuple(self.formats), self.connection, tuple(self.attrs)
        )


def parse_sdp(text: str) -> SessionDescription:
    """Parse an SDP body (CRLF or LF line ends). Raises :class:`SdpError` (status 400) when malformed."""
    origin = ""
    name = ""
    connection: str | None = None
    session_attrs: list[tuple[str, str | None]] = []
    sections: list[_Section] = []
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines or not lines[0].startswith("v="):
        first = lines[0] if lines else ""
        raise SdpError(f"not an SDP body: first line {first!r}, expected 'v=0'", status=400)
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"bad SDP line {lineno}: {line!r}: expected '<type>=<value>'", status=400)
        kind, value = line[0], line[2:]
        cur = sections[-1] if sections else None
        if kind == "m":
            parts = value.split()
            if len(parts) < 4 or not parts[1].split("/")[0].isdigit():
                raise SdpError(
                    f"bad SDP line {lineno}: m={value!r}: expected '<media> <port> <proto> <fmt> ...'",
                    status=400,
                )
            sections.append(_Section(parts[0], int(parts[1].split("/")[0]), parts[2], parts[3:]))
        elif kind == "o":
            origin = value
        elif kind == "s":
            name = value
        elif kind == "c":
            addr = _parse_connection(value, lineno)
            if cur is None:
                connection = addr
            else:
                cur.connection = addr
        elif kind == "a":
            key, sep, val = value.partition(":")
            attr = (key.strip(), val.strip() if sep else None)
            (session_attrs if cur is None else cur.attrs).append(attr)
    return SessionDescription(
        origin, name, connection, tuple(sec.build() for sec in sections), tuple(session_attrs)
    )


def _session_header(host: str, session_id: int, version: int) -> list[str]:
    family = "IP6" if ":" in host else "IP4"
    return [
        "v=0",
        f"o=- {session_id} {version} IN {family} {host}",
        f"s={SESSION_NAME}",
        f"c=IN {family} {host}",
        "t=0 0",
    ]


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"cannot use direction {direction!r}: expected one of {DIRECTIONS}")


def make_offer(
    host: str, port: int, *, session_id: int, version: int = 1, direction: str = "sendrecv"
) -> str:
    """Render our offer: PCMU, PCMA, telephone-event/8000 on 101, ptime 20, ``direction``."""
    _check_direction(direction)
    lines = [
        *_session_header(host, session_id, version),
        f"m=audio {port} RTP/AVP 0 8 {OFFER_DTMF_PT}",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        f"a=rtpmap:{OFFER_DTMF_PT} telephone-event/8000",
        f"a=fmtp:{OFFER_DTMF_PT} 0-16",
        "a=ptime:20",
        f"a={direction}",
    ]
    return "\r\n".join(lines) + "\r\n"


def _ptime(m: MediaDescription) -> int:
    value = m.attribute("ptime")
    if value and value.strip().isdigit() and 10 <= int(value) <= 200:
        return int(value)
    return 20


def _pick(m: MediaDescription) -> tuple[int, str, int | None, str | None] | None:
    """(payload type, codec, dtmf payload type, dtmf fmtp) for an acceptable m-line, else None."""
    if m.media != "audio" or m.port == 0 or m.proto.upper() != "RTP/AVP":
        return None
    names = m.rtpmap()
    chosen: tuple[int, str] | None = None
    dtmf: int | None = None
    for fmt in m.formats:
        if not fmt.isdigit():
            continue
        pt = int(fmt)
        name, rate = names.get(pt, ("", 0))
        if chosen is None and name in _CODECS and rate == 8000:
            chosen = (pt, name)
        if dtmf is None and name == "TELEPHONE-EVENT" and rate == 8000:
            dtmf = pt
    if chosen is None:
        return None
    fmtp = None
    if dtmf is not None:
        for value in m.attribute_values("fmtp"):
            pt_s, _, params = value.partition(" ")
            if pt_s == str(dtmf):
                fmtp = params.strip()
    return chosen[0], chosen[1], dtmf, fmtp


def _hold_address(addr: str | None) -> bool:
    return addr in ("0.0.0.0", "::")


def answer_offer(
    offer_sdp: str, host: str, port: int, *, session_id: int, version: int = 1
) -> tuple[str, NegotiatedMedia]:
    """Answer ``offer_sdp`` with our address; returns the answer body and what was agreed.

    Raises :class:`SdpError` (488) when no m-line is acceptable, naming every offered m-line.
    """
    offer = parse_sdp(offer_sdp)
    lines = _session_header(host, session_id, version)
    negotiated: NegotiatedMedia | None = None
    for m in offer.media:
        pick = _pick(m) if negotiated is None else None
        address = offer.address_of(m)
        if pick is not None and address is None:
            pick = None  # no c= anywhere: unusable
        if pick is None or address is None:
            lines.append(f"m={m.media} 0 {m.proto} {' '.join(m.formats)}")
            continue
        pt, codec, dtmf, fmtp = pick
        offered_dir = offer.direction_of(m)
        if _hold_address(address):
            # legacy hold: the peer does not want to receive
            ours = "recvonly" if offered_dir == "sendonly" else "inactive"
        else:
            ours = _REVERSE[offered_dir]
        fmts = f"{pt}" if dtmf is None else f"{pt} {dtmf}"
        lines.append(f"m=audio {port} RTP/AVP {fmts}")
        lines.append(f"a=rtpmap:{pt} {codec}/8000")
        if dtmf is not None:
            lines.append(f"a=rtpmap:{dtmf} telephone-event/8000")
            lines.append(f"a=fmtp:{dtmf} {fmtp or '0-15'}")
        lines.append("a=ptime:20")
        lines.append(f"a={ours}")
        negotiated = NegotiatedMedia(
            remote_host=address,
            remote_port=m.port,
            codec=codec,
            payload_type=pt,
            dtmf_payload_type=dtmf,
            ptime=_ptime(m),
            direction=ours,
        )
    if negotiated is None:
        offered = "; ".join(m.describe() for m in offer.media) or "no m-lines"
        raise SdpError(
            f"no acceptable media in offer: offered {offered}; expected m=audio over RTP/AVP "
            "with PCMU (0) or PCMA (8) at 8000 Hz"
        )
    return "\r\n".join(lines) + "\r\n", negotiated


def negotiated_from_answer(offer_sdp: str, answer_sdp: str) -> NegotiatedMedia:
    """Check the peer's answer against our offer and return what was agreed (direction from our side)."""
    offer = parse_sdp(offer_sdp)
    answer = parse_sdp(answer_sdp)
    if len(answer.media) != len(offer.media):
        raise SdpError(
            f"answer has {len(answer.media)} m-lines, offer had {len(offer.media)}: expected the same count "
            "(RFC 3264 §6)"
        )
    for om, am in zip(offer.media, answer.media, strict=True):
        if am.port == 0 or om.port == 0 or am.media != "audio":
            continue
        pick = _pick(am)
        if pick is None:
            raise SdpError(f"answer accepted {am.describe()}: expected PCMU or PCMA over RTP/AVP")
        pt, codec, dtmf, _ = pick
        offered = om.rtpmap()
        if offered.get(pt, ("", 0))[0] != codec:
            raise SdpError(
                f"answer chose payload type {pt} ({codec}) which the offer did not contain as {codec}"
            )
        address = answer.address_of(am)
        if address is None:
            raise SdpError(f"answer {am.describe()} has no c= line: expected a connection address")
        answered_dir = answer.direction_of(am)
        ours = _REVERSE[answered_dir]
        offered_dir = offer.direction_of(om)
        if _hold_address(address) and ours in ("sendrecv", "sendonly"):
            ours = "recvonly" if ours == "sendrecv" else "inactive"
        if offered_dir == "sendonly" and ours == "sendrecv":
            ours = "sendonly"  # the answerer must not send to a sendonly offerer even if it says sendrecv
        elif offered_dir == "recvonly" and ours == "sendrecv":
            ours = "recvonly"
        elif offered_dir == "inactive":
            ours = "inactive"
        return NegotiatedMedia(
            remote_host=address,
            remote_port=am.port,
            codec=codec,
            payload_type=pt,
            dtmf_payload_type=dtmf,
            ptime=_ptime(am),
            direction=ours,
        )
    rejected = "; ".join(m.describe() for m in answer.media) or "no m-lines"
    raise SdpError(f"answer rejected every stream: {rejected}; expected an audio stream with a non-zero port")
