"""SIP messages: parse and render (RFC 3261 §7, §20, §25).

Theory of operation
-------------------
A message is a start line, headers and a body. :func:`parse_message` takes one whole datagram (or one frame cut by
:class:`StreamFramer` from a TCP/TLS byte stream) and returns a :class:`Request` or :class:`Response`. Headers keep
their order; compact forms (``v``, ``i``, ``f``…) are expanded to their long names; header lines folded with
leading whitespace are unfolded; comma-separated values of the list headers (Via, Route, Record-Route, Contact,
Allow, Supported…) become separate entries. ``bytes(msg)`` renders a message with a correct Content-Length.

Anything malformed raises :class:`SipParseError` carrying the status a UAS should answer
(400 bad syntax, 413 too large, 505 wrong version, 416 unsupported URI scheme, 420 bad extension). Parsing is
pure: no sockets, no clocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from urllib.parse import quote, unquote

from sip.errors import SipParseError

MAX_MESSAGE_SIZE = 65_535
MAX_HEADERS = 128
SIP_VERSION = "SIP/2.0"

COMPACT_FORMS: dict[str, str] = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    "o": "Event",
    "r": "Refer-To",
    "u": "Allow-Events",
}

_CANONICAL: dict[str, str] = {
    name.lower(): name
    for name in (
        "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
        "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact", "Content-Disposition",
        "Content-Encoding", "Content-Language", "Content-Length", "Content-Type", "CSeq", "Date", "Error-Info",
        "Event", "Expires", "From", "In-Reply-To", "Max-Forwards", "Min-Expires", "MIME-Version",
        "Organization", "P-Asserted-Identity", "Priority", "Proxy-Authenticate", "Proxy-Authorization",
        "Proxy-Require", "Reason", "Record-Route", "Refer-To", "Reply-To", "Require", "Retry-After", "Route",
        "RSeq", "RAck", "Server", "Session-Expires", "Subject", "Supported", "Timestamp", "To", "Unsupported",
        "User-Agent", "Via", "Warning", "WWW-Authenticate",
    )
}

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1); they are split into separate entries.
LIST_HEADERS = frozenset(
    {"Via", "Route", "Record-Route", "Contact", "Allow", "Supported", "Require", "Proxy-Require",
     "Unsupported", "Accept", "Accept-Encoding", "Accept-Language", "Allow-Events", "Content-Encoding"}
)

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE = re.compile(rf"^{_TOKEN}$")
_REQUEST_LINE = re.compile(rf"^({_TOKEN}) (\S+) (SIP/\d+\.\d+)$")
_STATUS_LINE = re.compile(r"^(SIP/\d+\.\d+) (\d{3}) ?(.*)$")
_HEADER_NAME = re.compile(rf"^{_TOKEN}$")


def canonical_name(name: str) -> str:
    """The long, canonically capitalised form of a header name (compact forms expanded)."""
    low = name.strip().lower()
    if low in COMPACT_FORMS:
        return COMPACT_FORMS[low]
    if low in _CANONICAL:
        return _CANONICAL[low]
    return "-".join(part.capitalize() for part in low.split("-"))


def split_list(value: str) -> list[str]:
    """Split a header value on commas that are outside quotes and angle brackets."""
    parts: list[str] = []
    buf: list[str] = []
    in_quote = in_angle = False
    i = 0
    while i < len(value):
        ch = value[i]
        if in_quote:
            buf.append(ch)
            if ch == "\\" and i + 1 < len(value):
                buf.append(value[i + 1])
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
            buf.append(ch)
        elif ch == "<":
            in_angle = True
            buf.append(ch)
        elif ch == ">":
            in_angle = False
            buf.append(ch)
        elif ch == "," and not in_angle:
            parts.append("".join(buf).strip())
            buf = []
        else:
            buf.append(ch)
        i += 1
    if in_quote:
        raise SipParseError(f"unterminated quoted string in header value {value!r}")
    parts.append("".join(buf).strip())
    return [p for p in parts if p]


# ---------------------------------------------------------------------------------------------------------------
# URIs


def _parse_params(text: str, sep: str = ";") -> tuple[tuple[str, str | None], ...]:
    params: list[tuple[str, str | None]] = []
    for raw in text.split(sep):
        raw = raw.strip()
        if not raw:
            continue
        if "=" in raw:
            k, v = raw.split("=", 1)
            params.append((k.strip().lower(), v.strip()))
        else:
            params.append((raw.lower(), None))
    return tuple(params)


def _render_params(params: Iterable[tuple[str, str | None]], sep: str = ";") -> str:
    return "".join(f"{sep}{k}" if v is None else f"{sep}{k}={v}" for k, v in params)


@dataclass(frozen=True)
class URI:
    """A ``sip:``, ``sips:`` or ``tel:`` URI (RFC 3261 §19.1, RFC 3966)."""

    scheme: str
    host: str = ""
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> URI:
        text = text.strip()
        scheme, sep, rest = text.partition(":")
        scheme = scheme.lower()
        if not sep or not rest:
            raise SipParseError(f"cannot parse URI {text!r}: expected scheme:address")
        if scheme == "tel":
            number, _, ptext = rest.partition(";")
            if not re.fullmatch(r"\+?[0-9A-Fa-f*#().\-]+", number):
                raise SipParseError(f"cannot parse tel URI {text!r}: {number!r} is not a telephone number")
            return cls(scheme="tel", user=number, params=_parse_params(ptext))
        if scheme not in ("sip", "sips"):
            raise SipParseError(f"unsupported URI scheme {scheme!r} in {text!r}: expected sip, sips or tel", 416)
        hdr_text = ""
        if "?" in rest:
            rest, hdr_text = rest.split("?", 1)
        user = password = None
        if "@" in rest:
            userinfo, rest = rest.rsplit("@", 1)
            if ":" in userinfo:
                user, password = userinfo.split(":", 1)
                password = unquote(password)
            else:
                user = userinfo
            user = unquote(user)
            if not user:
                raise SipParseError(f"cannot parse URI {text!r}: empty user part before '@'")
        hostport, _, ptext = rest.partition(";")
        if hostport.startswith("["):
            end = hostport.find("]")
            if end < 0:
                raise SipParseError(f"cannot parse URI {text!r}: unterminated IPv6 reference")
            host = hostport[: end + 1]
            porttext = hostport[end + 1 :]
            if porttext and not porttext.startswith(":"):
                raise SipParseError(f"cannot parse URI {text!r}: junk {porttext!r} after IPv6 host")
            porttext = porttext[1:]
        else:
            host, _, porttext = hostport.partition(":")
        if not host or not re.fullmatch(r"[A-Za-z0-9.\-_]+|\[[0-9A-Fa-f:.]+\]", host):
            raise SipParseError(f"cannot parse URI {text!r}: bad host {host!r}")
        port: int | None = None
        if porttext:
            if not porttext.isdigit() or not 0 < int(porttext) < 65536:
                raise SipParseError(f"cannot parse URI {text!r}: port {porttext!r} is not 1-65535")
            port = int(porttext)
        headers: tuple[tuple[str, str], ...] = ()
        if hdr_text:
            pairs = []
            for item in hdr_text.split("&"):
                k, _, v = item.partition("=")
                pairs.append((unquote(k), unquote(v)))
            headers = tuple(pairs)
        return cls(scheme, host.lower(), user, password, port, _parse_params(ptext), headers)

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}{_render_params(self.params)}"
        out = f"{self.scheme}:"
        if self.user is not None:
            out += quote(self.user, safe="-_.!~*'()&=+$,;?/")
            if self.password is not None:
                out += ":" + quote(self.password, safe="-_.!~*'()&=+$,")
            out += "@"
        out += self.host
        if self.port is not None:
            out += f":{self.port}"
        out += _render_params(self.params)
        if self.headers:
            out += "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in self.headers)
        return out

    def param(self, name: str) -> str | None:
        for k, v in self.params:
            if k == name:
                return v if v is not None else ""
        return None

    def with_params(self, **params: str | None) -> URI:
        kept = [(k, v) for k, v in self.params if k not in params]
        return replace(self, params=(*kept, *params.items()))

    @property
    def transport(self) -> str:
        """The transport this URI asks for (RFC 3263 simplified: no DNS lookups, explicit or default)."""
        t = self.param("transport")
        if t:
            return t.upper()
        return "TLS" if self.scheme == "sips" else "UDP"

    @property
    def hostport(self) -> tuple[str, int]:
        default = 5061 if self.scheme == "sips" or self.param("transport") == "tls" else 5060
        return self.host.strip("[]"), self.port or default


@dataclass(frozen=True)
class NameAddr:
    """``"Display" <uri>;params`` as in From, To, Contact, Route, Record-Route (RFC 3261 §20.10)."""

    uri: URI
    display: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip()
        display: str | None = None
        if text == "*":
            raise SipParseError("'*' is not a name-addr")
        if "<" in text:
            head, _, rest = text.partition("<")
            uri_text, close, ptext = rest.partition(">")
            if not close:
                raise SipParseError(f"cannot parse address {text!r}: missing '>'")
            head = head.strip()
            if head.startswith('"'):
                if not head.endswith('"') or len(head) < 2:
                    raise SipParseError(f"cannot parse address {text!r}: bad quoted display name")
                display = re.sub(r"\\(.)", r"\1", head[1:-1])
            elif head:
                display = head
            uri = URI.parse(uri_text)
        else:
            # addr-spec form: parameters after ';' belong to the header, not the URI (RFC 3261 §20.10)
            uri_text, _, ptext = text.partition(";")
            uri = URI.parse(uri_text)
        return cls(uri, display, _parse_params(ptext))

    def __str__(self) -> str:
        out = ""
        if self.display is not None:
            escaped = self.display.replace("\\", "\\\\").replace('"', '\\"')
            out = f'"{escaped}" '
        return f"{out}<{self.uri}>{_render_params(self.params)}"

    def param(self, name: str) -> str | None:
        for k, v in self.params:
            if k == name:
                return v if v is not None else ""
        return None

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    def with_tag(self, tag: str) -> NameAddr:
        kept = tuple((k, v) for k, v in self.params if k != "tag")
        return replace(self, params=(*kept, ("tag", tag)))


@dataclass(frozen=True)
class Via:
    """One Via entry (RFC 3261 §20.42, RFC 3581 rport)."""

    transport: str
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    _RE = re.compile(r"^SIP\s*/\s*2\.0\s*/\s*([A-Za-z]+)\s+([^\s;:]+|\[[^\]]+\])(?:\s*:\s*(\d+))?\s*(;.*)?$", re.S)

    @classmethod
    def parse(cls, text: str) -> Via:
        m = cls._RE.match(text.strip())
        if not m:
            raise SipParseError(f"cannot parse Via {text!r}: expected 'SIP/2.0/<transport> host[:port];params'")
        port = int(m.group(3)) if m.group(3) else None
        if port is not None and not 0 < port < 65536:
            raise SipParseError(f"cannot parse Via {text!r}: port {port} is not 1-65535")
        return cls(m.group(1).upper(), m.group(2).lower(), port, _parse_params(m.group(4) or ""))

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{_render_params(self.params)}"

    def param(self, name: str) -> str | None:
        for k, v in self.params:
            if k == name:
                return v if v is not None else ""
        return None

    def with_params(self, **params: str | None) -> Via:
        names = set(params)
        kept = [(k, v) for k, v in self.params if k not in names]
        return replace(self, params=(*kept, *params.items()))

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def rport(self) -> int | None:
        value = self.param("rport")
        return int(value) if value else None

    @property
    def received(self) -> str | None:
        return self.param("received")


# ---------------------------------------------------------------------------------------------------------------
# Headers and messages


class Headers:
    """An ordered, case-insensitive multi-map of header entries; list headers hold one entry per value."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        for name, value in items:
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        name = canonical_name(name)
        if name in LIST_HEADERS:
            self._items.extend((name, v) for v in split_list(value))
        else:
            self._items.append((name, value.strip()))

    def prepend(self, name: str, value: str) -> None:
        self._items.insert(0, (canonical_name(name), value.strip()))

    def set(self, name: str, value: str) -> None:
        self.remove(name)
        self.add(name, value)

    def remove(self, name: str) -> None:
        name = canonical_name(name)
        self._items = [(k, v) for k, v in self._items if k != name]

    def get(self, name: str, default: str | None = None) -> str | None:
        name = canonical_name(name)
        for k, v in self._items:
            if k == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        name = canonical_name(name)
        return [v for k, v in self._items if k == name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def copy(self) -> Headers:
        h = Headers()
        h._items = list(self._items)
        return h


class _Message:
    headers: Headers
    body: bytes

    # --- typed accessors -------------------------------------------------------------------------------------
    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise SipParseError(f"missing mandatory header {name}")
        return value

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        vias = self.headers.get_all("Via")
        if not vias:
            raise SipParseError("missing mandatory header Via")
        return Via.parse(vias[0])

    @property
    def call_id(self) -> str:
        return self._required("Call-ID")

    @property
    def cseq(self) -> tuple[int, str]:
        value = self._required("CSeq")
        parts = value.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) >= 2**31:
            raise SipParseError(f"cannot parse CSeq {value!r}: expected '<number below 2**31> <METHOD>'")
        return int(parts[0]), parts[1]

    @property
    def from_(self) -> NameAddr:
        return NameAddr.parse(self._required("From"))

    @property
    def to(self) -> NameAddr:
        return NameAddr.parse(self._required("To"))

    @property
    def contact(self) -> NameAddr | None:
        value = self.headers.get("Contact")
        if value is None or value.strip() == "*":
            return None
        return NameAddr.parse(value)

    @property
    def record_route(self) -> list[NameAddr]:
        return [NameAddr.parse(v) for v in self.headers.get_all("Record-Route")]

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("Content-Type")
        return value.split(";")[0].strip().lower() if value else None

    def _render(self, start: str) -> bytes:
        lines = [start]
        for name, value in self.headers:
            if name == "Content-Length":
                continue
            lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body

    def check_mandatory(self) -> None:
        """Raise :class:`SipParseError` if a header every request/response needs is missing or malformed."""
        _ = self.top_via, self.call_id, self.cseq, self.from_, self.to


@dataclass(eq=False)
class Request(_Message):
    method: str
    uri: URI
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION

    def __bytes__(self) -> bytes:
        return self._render(f"{self.method} {self.uri} {self.version}")

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Request)
            and (self.method, self.uri, self.headers, self.body, self.version)
            == (other.method, other.uri, other.headers, other.body, other.version)
        )

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


@dataclass(eq=False)
class Response(_Message):
    status: int
    reason: str = ""
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION

    def __bytes__(self) -> bytes:
        return self._render(f"{self.version} {self.status} {self.reason}")

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Response)
            and (self.status, self.reason, self.headers, self.body, self.version)
            == (other.status, other.reason, other.headers, other.body, other.version)
        )

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


Message = Request | Response


def _split_head(data: bytes) -> tuple[list[str], bytes]:
    end = data.find(b"\r\n\r\n")
    sep = 4
    if end < 0:
        end = data.find(b"\n\n")
        sep = 2
    if end < 0:
        raise SipParseError("message has no blank line after its headers")
    try:
        head = data[:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipParseError(f"message head is not UTF-8 at byte {exc.start}") from exc
    lines = head.replace("\r\n", "\n").split("\n")
    return lines, data[end + sep :]


def parse_message(data: bytes, *, stream: bool = False) -> Request | Response:
    """Parse one complete SIP message.

    With ``stream=False`` (datagrams) a body longer than Content-Length is truncated to it and a shorter one is an
    error; with ``stream=True`` the caller framed the message and the body must match exactly.
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise SipParseError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE_SIZE}-byte limit", 413)
    data = data.lstrip(b"\r\n")
    lines, body = _split_head(data)
    start = lines[0].strip()
    # unfold continuation lines (RFC 3261 §7.3.1)
    raw_headers: list[str] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if not raw_headers:
                raise SipParseError(f"continuation line {line!r} before any header")
            raw_headers[-1] += " " + line.strip()
        elif line:
            raw_headers.append(line)
    if len(raw_headers) > MAX_HEADERS:
        raise SipParseError(f"{len(raw_headers)} header lines exceed the limit of {MAX_HEADERS}", 413)
    headers = Headers()
    for line in raw_headers:
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not _HEADER_NAME.match(name):
            raise SipParseError(f"cannot parse header line {line!r}: expected 'Name: value'")
        headers.add(name, value)
    length_text = headers.get("Content-Length")
    if length_text is not None:
        if not length_text.isdigit():
            raise SipParseError(f"cannot parse Content-Length {length_text!r}: expected a non-negative integer")
        length = int(length_text)
        if length > len(body):
            raise SipParseError(f"Content-Length {length} exceeds the {len(body)} bytes of body received")
        if stream and length != len(body):
            raise SipParseError(f"Content-Length {length} does not match the framed body of {len(body)} bytes")
        body = body[:length]
    elif stream:
        raise SipParseError("a message on a stream transport needs Content-Length")
    msg: Request | Response
    if start.startswith("SIP/"):
        m = _STATUS_LINE.match(start)
        if not m:
            raise SipParseError(f"cannot parse status line {start!r}")
        if m.group(1) != SIP_VERSION:
            raise SipParseError(f"unsupported SIP version {m.group(1)!r}: expected {SIP_VERSION}", 505)
        status = int(m.group(2))
        if not 100 <= status <= 699:
            raise SipParseError(f"status code {status} outside 100-699")
        msg = Response(status, m.group(3), headers, body)
    else:
        m = _REQUEST_LINE.match(start)
        if not m:
            raise SipParseError(f"cannot parse request line {start!r}: expected 'METHOD uri SIP/2.0'")
        method, uri_text, version = m.groups()
        if version != SIP_VERSION:
            raise SipParseError(f"unsupported SIP version {version!r}: expected {SIP_VERSION}", 505)
        msg = Request(method, URI.parse(uri_text), headers, body)
        cseq_method = msg.cseq[1]
        if cseq_method != method:
            raise SipParseError(f"CSeq method {cseq_method!r} does not match request method {method!r}")
    msg.check_mandatory()
    return msg


class StreamFramer:
    """Cuts a TCP/TLS byte stream into whole messages by the blank line and Content-Length (RFC 3261 §18.3)."""

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_size

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every complete message now available (keep-alive CRLFs are dropped)."""
        self._buf += data
        out: list[bytes] = []
        while True:
            while self._buf[:2] == b"\r\n":
                del self._buf[:2]
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > self._max:
                    raise SipParseError(f"header block exceeds {self._max} bytes", 413)
                return out
            head = bytes(self._buf[:end])
            m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*$", head)
            if not m:
                raise SipParseError("a message on a stream transport needs Content-Length")
            length = int(m.group(1))
            total = end + 4 + length
            if total > self._max:
                raise SipParseError(f"message of {total} bytes exceeds the {self._max}-byte limit", 413)
            if len(self._buf) < total:
                return out
            out.append(bytes(self._buf[:total]))
            del self._buf[:total]
