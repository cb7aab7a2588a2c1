"""SIP messages: parse and render (RFC 3261 §7, §19, §20, §25; RFC 3581; RFC 4475 torture tests).

Theory of operation
-------------------
A message is a start line, headers and a body. :func:`parse_message` takes one whole datagram (or one
frame cut by :class:`StreamFramer` from a TCP/TLS byte stream) and returns a :class:`Request` or
:class:`Response`.

* The head (start line and headers) must be UTF-8; the body is bytes. Lines may end in CRLF or bare LF;
  CRLFs before the start line are ignored (§7.5). Folded header lines (a line starting with SP/HTAB) are
  joined with one space (§7.3.1). Header names are case-insensitive; compact forms (``v``, ``i``, ``f``...)
  are expanded and names are stored canonically capitalised. Comma-separated values of the list headers
  (Via, Route, Record-Route, Contact, Allow, Supported...) become one entry each; other values are kept
  verbatim (trimmed).
* Header values stay strings in :class:`Headers`; typed views (:class:`Via`, :class:`NameAddr`, ``cseq``...)
  are parsed on demand. :func:`parse_message` validates every header a SIP element relies on (Via, From,
  To, Call-ID, CSeq, Contact, Route, Record-Route, Max-Forwards, Content-Length, Content-Type, Date, option
  tags), the Request-URI (sip/sips/tel; no escaped headers) and that single-valued headers appear once, so
  a message that parsed can be used without further try/except.
* Content-Length frames the body: on a datagram a longer body is cut to it (extra octets are noise,
  §18.3) and a shorter one is an error; on a stream the framer cut exactly that many octets.
  Content-Length is not part of message equality: ``bytes(msg)`` always writes the true length (in place,
  or appended if absent).
* Round trip: for every message that parses, ``parse_message(bytes(m)) == m``. URIs are kept as parsed
  objects (user and password unescaped, host lowercased, parameters verbatim with lowercased names) and
  rendered with the minimum escaping, which is a fixed point of parse/render. Header values that came from
  a caller have CR/LF replaced by spaces when rendered, so no value can inject a header line.

Anything malformed raises :class:`~sip.errors.SipParseError` carrying the status a UAS should answer: 400
bad syntax, 413 too large, 416 unsupported URI scheme, 501 unknown method with a mismatched CSeq, 505 wrong
SIP version. :func:`check_request` adds the checks a UAS makes before it acts on a request (420 with
Unsupported, 415 with Accept, 501 with Allow, 483 when forwarding with Max-Forwards 0) and raises
:class:`RequestRejected`, whose ``headers`` belong on the error response. Parsing is pure: no sockets, no
clocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import quote, unquote

from sip.errors import SipParseError

MAX_MESSAGE_SIZE = 65_535
MAX_HEADERS = 128  # header lines
MAX_HEADER_ENTRIES = 256  # header values once comma-separated lists are split
SIP_VERSION = "SIP/2.0"

_WS = " \t"

COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_CANONICAL: dict[str, str] = {
    name.lower(): name
    for name in [
        "Accept",
        "Accept-Contact",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Authentication-Info",
        "Authorization",
        "Call-ID",
        "Call-Info",
        "Contact",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-Type",
        "CSeq",
        "Date",
        "Error-Info",
        "Event",
        "Expires",
        "From",
        "Identity",
        "Identity-Info",
        "In-Reply-To",
        "Max-Forwards",
        "Min-Expires",
        "Min-SE",
        "MIME-Version",
        "Organization",
        "P-Asserted-Identity",
        "Priority",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "RAck",
        "Reason",
        "Record-Route",
        "Refer-To",
        "Referred-By",
        "Reject-Contact",
        "Reply-To",
        "Request-Disposition",
        "Require",
        "Retry-After",
        "Route",
        "RSeq",
        "Server",
        "Session-Expires",
        "Subject",
        "Supported",
        "Timestamp",
        "To",
        "Unsupported",
        "User-Agent",
        "Via",
        "Warning",
        "WWW-Authenticate",
    ]
}

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1); they are split into separate entries.
LIST_HEADERS = frozenset(
    {"Via", "Route", "Record-Route", "Contact", "Allow", "Supported", "Require", "Proxy-Require",
     "Unsupported", "Accept", "Accept-Encoding", "Accept-Language", "Allow-Events", "Content-Encoding"}
)  # fmt: skip

# Headers that may appear at most once (a second one is a 400, RFC 4475 §3.3.8, §3.3.9).
SINGLE_HEADERS = frozenset(
    {"Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Length", "Content-Type"}
)

# Methods of RFC 3261 and its common extensions; any other token is an extension method.
KNOWN_METHODS = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH",
     "INFO", "REFER", "MESSAGE", "UPDATE"}
)  # fmt: skip

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE = re.compile(rf"{_TOKEN}")
_HEADER_NAME = re.compile(rf"^{_TOKEN}$")
_REQUEST_LINE = re.compile(rf"^({_TOKEN}) ([^\x00-\x20\x7f]+) ([A-Za-z]+/[0-9]+\.[0-9]+)$")
_STATUS_LINE = re.compile(r"^([A-Za-z]+/[0-9]+\.[0-9]+) ([0-9]{3})(?: (.*))?$", re.S)
_VERSION = re.compile(r"(?i)^SIP/([0-9]+)\.([0-9]+)$")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LINE_SPLIT = re.compile(r"\r?\n")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_ESC = r"%[0-9A-Fa-f]{2}"
_USER_RE = re.compile(rf"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|{_ESC})+")
_PASSWORD_RE = re.compile(rf"(?:[A-Za-z0-9\-_.!~*'()&=+$,]|{_ESC})*")
_PARAMCHARS_RE = re.compile(rf"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|{_ESC})+")
_HNAME_RE = re.compile(rf"(?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$]|{_ESC})+")
_HVALUE_RE = re.compile(rf"(?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$]|{_ESC})*")
_HOST_RE = re.compile(r"[A-Za-z0-9_\-.]+|\[[0-9A-Fa-f:.]+\]")
_TEL_RE = re.compile(r"\+?[0-9A-Fa-f*#().\-]+")
_GEN_VALUE_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+")
# Unquoted display names: tokens (RFC 3261) and, leniently, UTF-8 words (common from phones: "Jörg <sip:…>").
_DISPLAY_WORD = r"[A-Za-z0-9\-.!%*_+`'~\u0080-\U0010ffff]+"
_DISPLAY_TOKENS = re.compile(rf"^{_DISPLAY_WORD}(?:[ \t]+{_DISPLAY_WORD})*$")
_CALL_ID_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
_CALL_ID_RE = re.compile(rf"^{_CALL_ID_WORD}(?:@{_CALL_ID_WORD})?$")
_CSEQ_RE = re.compile(rf"^([0-9]+)[ \t]+({_TOKEN})$")
_MEDIA_TYPE_RE = re.compile(rf"^({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]*(;.*)?$", re.S)
_DATE_RE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} GMT$"
)
_URI_USER_SAFE = "!~*'()&=+$,;?/"
_URI_PASSWORD_SAFE = "!~*'()&=+$,"
_URI_HEADER_SAFE = "[]/?:+$!~*'()"


def canonical_name(name: str) -> str:
    """The long, canonically capitalised form of a header name (compact forms expanded)."""
    low = name.strip(_WS).lower()
    if low in COMPACT_FORMS:
        return COMPACT_FORMS[low]
    if low in _CANONICAL:
        return _CANONICAL[low]
    return "-".join(part.capitalize() for part in low.split("-"))


def split_list(value: str) -> list[str]:
    """Split a header value on commas that are outside quotes and angle brackets (empty elements dropped)."""
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
            parts.append("".join(buf).strip(_WS))
            buf = []
        else:
            buf.append(ch)
        i += 1
    if in_quote:
        raise SipParseError(f"unterminated quoted string in header value {value!r}")
    parts.append("".join(buf).strip(_WS))
    return [p for p in parts if p]


def is_keepalive(data: bytes) -> bool:
    """True for a CRLF keep-alive ping or pong (RFC 5626 §3.5.1): nothing but CR and LF octets."""
    return not data.strip(b"\r\n")


# ----------------------------------------------------------------------------------------------------
# Low-level lexing shared by URIs, addresses, Via and auth headers


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in _WS:
        i += 1
    return i


def _read_quoted(s: str, i: int, context: str) -> tuple[str, int]:
    """Read a quoted-string starting at ``s[i] == '"'``; return (unescaped content, index after the quote)."""
    out: list[str] = []
    j = i + 1
    while j < len(s):
        ch = s[j]
        if ch == '"':
            return "".join(out), j + 1
        if ch == "\\":
            if j + 1 >= len(s):
                break
            nxt = s[j + 1]
            if nxt in "\r\n":
                raise SipParseError(f"cannot parse {context}: CR or LF after a backslash in a quoted string")
            out.append(nxt)
            j += 2
            continue
        o = ord(ch)
        if (o < 0x20 and ch != "\t") or o == 0x7F:
            raise SipParseError(f"cannot parse {context}: control character {ch!r} in a quoted string")
        out.append(ch)
        j += 1
    raise SipParseError(f"cannot parse {context}: unterminated quoted string")


def quote_string(text: str) -> str:
    """Render ``text`` as a quoted-string (backslash-escaping what qdtext cannot hold; CR/LF become SP)."""
    out = ['"']
    for ch in text:
        if ch in "\r\n":
            ch = " "
        o = ord(ch)
        if ch in '"\\' or (o < 0x20 and ch != "\t") or o == 0x7F:
            out.append("\\")
        out.append(ch)
    out.append('"')
    return "".join(out)


def _parse_generic_params(text: str, context: str) -> tuple[tuple[str, str | None], ...]:
    """Parse ``*( SEMI token [ EQUAL ( token / host / quoted-string ) ] )`` with LWS allowed around the marks.

    Names are lowercased; values are kept verbatim (a quoted value keeps its quotes).
    """
    params: list[tuple[str, str | None]] = []
    i = _skip_ws(text, 0)
    while i < len(text):
        if text[i] != ";":
            raise SipParseError(f"cannot parse {context}: expected ';' at {text[i:]!r}")
        i = _skip_ws(text, i + 1)
        m = _TOKEN_RE.match(text, i)
        if not m:
            raise SipParseError(f"cannot parse {context}: expected a parameter name at {text[i:]!r}")
        name = m.group().lower()
        i = _skip_ws(text, m.end())
        value: str | None = None
        if i < len(text) and text[i] == "=":
            i = _skip_ws(text, i + 1)
            if i < len(text) and text[i] == '"':
                _, end = _read_quoted(text, i, context)
                value = text[i:end]
                i = end
            else:
                mv = _GEN_VALUE_RE.match(text, i)
                if not mv:
                    raise SipParseError(f"cannot parse {context}: expected a value for parameter {name!r}")
                value = mv.group()
                i = mv.end()
            i = _skip_ws(text, i)
        params.append((name, value))
    return tuple(params)


def _render_params(params: Iterable[tuple[str, str | None]], sep: str = ";") -> str:
    return "".join(f"{sep}{k}" if v is None else f"{sep}{k}={v}" for k, v in params)


def _find_param(params: Iterable[tuple[str, str | None]], name: str) -> str | None:
    name = name.lower()
    for k, v in params:
        if k == name:
            return v if v is not None else ""
    return None


# ----------------------------------------------------------------------------------------------------
# URIs


def _unescape(text: str, context: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError as exc:
        raise SipParseError(f"cannot parse {context}: escaped octets in {text!r} are not UTF-8") from exc


def _parse_uri_params(text: str, uri: str) -> tuple[tuple[str, str | None], ...]:
    """``*( ";" pname [ "=" pvalue ] )`` of RFC 3261 §25.1 (text starts after the first ';')."""
    params: list[tuple[str, str | None]] = []
    for raw in text.split(";"):
        name, eq, value = raw.partition("=")
        if not _PARAMCHARS_RE.fullmatch(name):
            raise SipParseError(f"cannot parse URI {uri!r}: bad parameter name {name!r}")
        if eq and not _PARAMCHARS_RE.fullmatch(value):
            raise SipParseError(f"cannot parse URI {uri!r}: bad value {value!r} of parameter {name!r}")
        params.append((name.lower(), value if eq else None))
    return tuple(params)


@dataclass(frozen=True)
class URI:
    """A ``sip:``, ``sips:`` or ``tel:`` URI (RFC 3261 §19.1, RFC 3966).

    ``user``/``password`` and header names/values are unescaped; ``host`` is lowercased; parameters keep their
    text (names lowercased). For ``tel:`` the number is in ``user`` and ``host`` is empty.
    """

    scheme: str
    host: str = ""
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> URI:
        """Parse a URI; 416 for a well-formed URI of another scheme, 400 for bad syntax."""
        text = text.strip(_WS)
        m = _SCHEME.match(text)
        if not m or len(text) == m.end():
            raise SipParseError(f"cannot parse URI {text!r}: expected scheme:address")
        if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in text):
            raise SipParseError(f"cannot parse URI {text!r}: whitespace or control characters inside")
        scheme = m.group(1).lower()
        rest = text[m.end() :]
        if scheme == "tel":
            number, sep, ptext = rest.partition(";")
            if not _TEL_RE.fullmatch(number):
                raise SipParseError(f"cannot parse tel URI {text!r}: {number!r} is not a telephone number")
            return cls(scheme="tel", user=number, params=_parse_uri_params(ptext, text) if sep else ())
        if scheme not in ("sip", "sips"):
            raise SipParseError(
                f"unsupported URI scheme {scheme!r} in {text!r}: expected sip, sips or tel", 416
            )
        user = password = None
        at = rest.rfind("@")
        if at >= 0:
            userinfo, rest = rest[:at], rest[at + 1 :]
            user_text, colon, password_text = userinfo.partition(":")
            if not _USER_RE.fullmatch(user_text):
                raise SipParseError(f"cannot parse URI {text!r}: bad user part {user_text!r}")
            user = _unescape(user_text, f"URI {text!r}")
            if colon:
                if not _PASSWORD_RE.fullmatch(password_text):
                    raise SipParseError(f"cannot parse URI {text!r}: bad password part")
                password = _unescape(password_text, f"URI {text!r}")
        rest, qmark, hdr_text = rest.partition("?")
        hostport, semi, ptext = rest.partition(";")
        if hostport.startswith("["):
            end = hostport.find("]")
            if end < 0:
                raise SipParseError(f"cannot parse URI {text!r}: unterminated IPv6 reference")
            host, porttext = hostport[: end + 1], hostport[end + 1 :]
            if porttext and not porttext.startswith(":"):
                raise SipParseError(f"cannot parse URI {text!r}: junk {porttext!r} after IPv6 host")
            has_port, porttext = bool(porttext), porttext[1:]
        else:
            host, colon2, porttext = hostport.partition(":")
            has_port = bool(colon2)
        if not _HOST_RE.fullmatch(host):
            raise SipParseError(f"cannot parse URI {text!r}: bad host {host!r}")
        port: int | None = None
        if has_port:
            if not (
                porttext.isascii() and porttext.isdigit() and len(porttext) <= 5 and 0 < int(porttext) < 65536
            ):
                raise SipParseError(f"cannot parse URI {text!r}: port {porttext!r} is not 1-65535")
            port = int(porttext)
        params = _parse_uri_params(ptext, text) if semi else ()
        headers: tuple[tuple[str, str], ...] = ()
        if qmark:
            pairs = []
            for item in hdr_text.split("&"):
                k, eq, v = item.partition("=")
                if not eq or not _HNAME_RE.fullmatch(k) or not _HVALUE_RE.fullmatch(v):
                    raise SipParseError(
                        f"cannot parse URI {text!r}: bad header {item!r}: expected name=value"
                    )
                pairs.append((_unescape(k, f"URI {text!r}"), _unescape(v, f"URI {text!r}")))
            headers = tuple(pairs)
        return cls(scheme, host.lower(), user, password, port, params, headers)

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}{_render_params(self.params)}"
        out = f"{self.scheme}:"
        if self.user is not None:
            out += quote(self.user, safe=_URI_USER_SAFE)
            if self.password is not None:
                out += ":" + quote(self.password, safe=_URI_PASSWORD_SAFE)
            out += "@"
        out += self.host
        if self.port is not None:
            out += f":{self.port}"
        out += _render_params(self.params)
        if self.headers:
            out += "?" + "&".join(
                f"{quote(k, safe=_URI_HEADER_SAFE)}={quote(v, safe=_URI_HEADER_SAFE)}"
                for k, v in self.headers
            )
        return out

    def param(self, name: str) -> str | None:
        """The value of URI parameter ``name`` ('' for a flag such as ``lr``), or None if absent."""
        return _find_param(self.params, name)

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
    """``"Display" <uri>;params`` as in From, To, Contact, Route, Record-Route (RFC 3261 §20.10).

    ``params`` are the header parameters (``tag``, ``expires``, ``q``…), names lowercased, values verbatim.
    """

    uri: URI
    display: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        s = text.strip(_WS)
        context = f"address {s!r}"
        if not s or s == "*":
            raise SipParseError(f"cannot parse {context}: expected a name-addr or addr-spec")
        display: str | None = None
        i = 0
        if s.startswith('"'):
            display, i = _read_quoted(s, 0, context)
            i = _skip_ws(s, i)
            if i >= len(s) or s[i] != "<":
                raise SipParseError(f"cannot parse {context}: expected '<' after the display name")
        else:
            lt = s.find("<")
            if lt >= 0:
                head = s[:lt].strip(_WS)
                if head:
                    if not _DISPLAY_TOKENS.fullmatch(head):
                        raise SipParseError(
                            f"cannot parse {context}: display name {head!r} must be quoted (it is not tokens)"
                        )
                    display = head
                i = lt
        if i < len(s) and s[i] == "<":
            gt = s.find(">", i)
            if gt < 0:
                raise SipParseError(f"cannot parse {context}: missing '>'")
            inner = s[i + 1 : gt]
            if not inner or inner != inner.strip(_WS):
                raise SipParseError(f"cannot parse {context}: whitespace inside '<…>'")
            uri = URI.parse(inner)
            rest = s[gt + 1 :]
        else:
            # addr-spec form: parameters after ';' belong to the header, not the URI (RFC 3261 §20.10)
            semi = s.find(";")
            uri_text, rest = (s, "") if semi < 0 else (s[:semi], s[semi:])
            uri_text = uri_text.rstrip(_WS)
            if any(c in uri_text for c in ",?> \t"):
                raise SipParseError(f"cannot parse {context}: a URI with ',', '?' or spaces must be in '<…>'")
            uri = URI.parse(uri_text)
        return cls(uri, display, _parse_generic_params(rest, context))

    def __str__(self) -> str:
        out = "" if self.display is None else quote_string(self.display) + " "
        return f"{out}<{self.uri}>{_render_params(self.params)}"

    def param(self, name: str) -> str | None:
        return _find_param(self.params, name)

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

    _RE = re.compile(
        rf"^(?i:SIP)[ \t]*/[ \t]*([0-9.]+)[ \t]*/[ \t]*({_TOKEN})[ \t]+([A-Za-z0-9_\-.]+|\[[0-9A-Fa-f:.]+\])"
        r"(?:[ \t]*:[ \t]*([0-9]{1,5}))?[ \t]*(;.*)?$",
        re.S,
    )

    @classmethod
    def parse(cls, text: str) -> Via:
        m = cls._RE.match(text.strip(_WS))
        if not m:
            raise SipParseError(
                f"cannot parse Via {text!r}: expected 'SIP/2.0/<transport> host[:port];params'"
            )
        if m.group(1) != "2.0":
            raise SipParseError(f"cannot parse Via {text!r}: protocol version {m.group(1)!r} is not 2.0", 505)
        port = int(m.group(4)) if m.group(4) else None
        if port is not None and not 0 < port < 65536:
            raise SipParseError(f"cannot parse Via {text!r}: port {port} is not 1-65535")
        params = _parse_generic_params(m.group(5) or "", f"Via {text!r}")
        for name, value in params:
            if name in ("rport", "ttl") and value and not (value.isascii() and value.isdigit()):
                raise SipParseError(f"cannot parse Via {text!r}: {name}={value!r} is not a number")
            if name in ("branch", "received", "maddr") and not value:
                raise SipParseError(f"cannot parse Via {text!r}: parameter {name} needs a value")
        return cls(m.group(2).upper(), m.group(3).lower(), port, params)

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{_render_params(self.params)}"

    def param(self, name: str) -> str | None:
        return _find_param(self.params, name)

    def with_params(self, **params: str | None) -> Via:
        names = set(params)
        kept = [(k, v) for k, v in self.params if k not in names]
        return replace(self, params=(*kept, *params.items()))

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def rport(self) -> int | None:
        """The filled-in rport value, or None (also for a bare ``rport``: see ``has_rport``)."""
        value = self.param("rport")
        return int(value) if value else None

    @property
    def has_rport(self) -> bool:
        """The sender asked for symmetric response routing (RFC 3581)."""
        return self.param("rport") is not None

    @property
    def received(self) -> str | None:
        return self.param("received")

    @property
    def maddr(self) -> str | None:
        return self.param("maddr")


# ----------------------------------------------------------------------------------------------------
# Headers and messages


def _clean_value(value: str) -> str:
    """Strip SP/HTAB and neutralise CR/LF so that a programmatic value can never inject a header line."""
    if "\r" in value or "\n" in value:
        value = value.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
    return value.strip(_WS)


class Headers:
    """An ordered, case-insensitive multi-map of header entries; list headers hold one entry per value."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        for name, value in items:
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        name = canonical_name(name)
        value = _clean_value(value)
        if name in LIST_HEADERS:
            self._items.extend((name, v) for v in split_list(value))
        else:
            self._items.append((name, value))

    def prepend(self, name: str, value: str) -> None:
        self._items.insert(0, (canonical_name(name), _clean_value(value)))

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

    def count(self, name: str) -> int:
        name = canonical_name(name)
        return sum(1 for k, _ in self._items if k == name)

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


def _parse_cseq(value: str) -> tuple[int, str]:
    m = _CSEQ_RE.match(value)
    if not m or int(m.group(1)) >= 2**31:
        raise SipParseError(f"cannot parse CSeq {value!r}: expected '<number below 2**31> <METHOD>'")
    return int(m.group(1)), m.group(2)


class _Message:
    headers: Headers
    body: bytes

    # --- typed accessors ---------------------------------------------------------------------------
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
        return _parse_cseq(self._required("CSeq"))

    @property
    def from_(self) -> NameAddr:
        return NameAddr.parse(self._required("From"))

    @property
    def to(self) -> NameAddr:
        return NameAddr.parse(self._required("To"))

    @property
    def contact(self) -> NameAddr | None:
        value = self.headers.get("Contact")
        if value is None or value.strip(_WS) == "*":
            return None
        return NameAddr.parse(value)

    @property
    def contacts(self) -> list[NameAddr]:
        """Every Contact value ('*' left out)."""
        return [NameAddr.parse(v) for v in self.headers.get_all("Contact") if v.strip(_WS) != "*"]

    @property
    def record_route(self) -> list[NameAddr]:
        return [NameAddr.parse(v) for v in self.headers.get_all("Record-Route")]

    @property
    def routes(self) -> list[NameAddr]:
        return [NameAddr.parse(v) for v in self.headers.get_all("Route")]

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("Max-Forwards")
        if value is None:
            return None
        if not (value.isascii() and value.isdigit()) or int(value) > 255:
            raise SipParseError(f"cannot parse Max-Forwards {value!r}: expected 0-255")
        return int(value)

    @property
    def require(self) -> list[str]:
        return self.headers.get_all("Require")

    @property
    def supported(self) -> list[str]:
        return self.headers.get_all("Supported")

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("Content-Type")
        return value.split(";")[0].strip(_WS).lower() if value else None

    def _render(self, start: str) -> bytes:
        lines = [_clean_value(start) if "\r" in start or "\n" in start else start]
        has_length = False
        for name, value in self.headers:
            if name == "Content-Length":
                if has_length:
                    continue
                has_length = True
                value = str(len(self.body))
            lines.append(f"{name}: {_clean_value(value)}")
        if not has_length:
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body

    def _headers_for_eq(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.headers if k != "Content-Length"]

    def check_mandatory(self) -> None:
        """Raise :class:`SipParseError` if a header every request/response needs is missing or malformed."""
        _validate_headers(self)


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
        return isinstance(other, Request) and (
            self.method,
            self.uri,
            self._headers_for_eq(),
            self.body,
            self.version,
        ) == (other.method, other.uri, other._headers_for_eq(), other.body, other.version)

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
        return isinstance(other, Response) and (
            self.status,
            self.reason,
            self._headers_for_eq(),
            self.body,
            self.version,
        ) == (other.status, other.reason, other._headers_for_eq(), other.body, other.version)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


Message = Request | Response


def _check_version(version: str, line: str) -> str:
    m = _VERSION.match(version)
    if not m:
        raise SipParseError(f"cannot parse start line {line!r}: {version!r} is not SIP/<major>.<minor>")
    if (int(m.group(1)), int(m.group(2))) != (2, 0):
        raise SipParseError(f"unsupported SIP version {version!r}: expected {SIP_VERSION}", 505)
    return SIP_VERSION


def _validate_headers(msg: _Message) -> None:
    """Check every header an element relies on; raise :class:`SipParseError` with the status to answer."""
    h = msg.headers
    for name in sorted(SINGLE_HEADERS):
        if h.count(name) > 1:
            raise SipParseError(f"header {name} appears {h.count(name)} times: expected at most once")
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if name not in h:
            raise SipParseError(f"missing mandatory header {name}")
    for via in h.get_all("Via"):
        Via.parse(via)
    _ = (msg.from_, msg.to)
    call_id = msg.call_id
    if not _CALL_ID_RE.match(call_id):
        raise SipParseError(f"cannot parse Call-ID {call_id!r}: expected word[@word]")
    _, cseq_method = msg.cseq
    if isinstance(msg, Request) and cseq_method != msg.method:
        status = 400 if msg.method in KNOWN_METHODS else 501
        raise SipParseError(
            f"CSeq method {cseq_method!r} does not match request method {msg.method!r}", status
        )
    contacts = h.get_all("Contact")
    if not (len(contacts) == 1 and contacts[0] == "*"):
        for value in contacts:
            NameAddr.parse(value)
    for name in ("Route", "Record-Route"):
        for value in h.get_all(name):
            NameAddr.parse(value)
    _ = msg.max_forwards
    content_type = h.get("Content-Type")
    if content_type is not None:
        m = _MEDIA_TYPE_RE.match(content_type)
        if not m:
            raise SipParseError(f"cannot parse Content-Type {content_type!r}: expected type/subtype;params")
        _parse_generic_params(m.group(3) or "", f"Content-Type {content_type!r}")
    date = h.get("Date")
    if date is not None and not _DATE_RE.match(date):
        raise SipParseError(f"cannot parse Date {date!r}: expected an RFC 1123 date in GMT")
    for name in ("Require", "Proxy-Require", "Supported", "Unsupported"):
        for tag in h.get_all(name):
            if not _TOKEN_RE.fullmatch(tag):
                raise SipParseError(f"cannot parse {name} option tag {tag!r}: expected a token")


def parse_message(
    data: bytes, *, stream: bool = False, max_size: int = MAX_MESSAGE_SIZE
) -> Request | Response:
    """Parse one complete SIP message.

    With ``stream=False`` (datagrams) a body longer than Content-Length is truncated to it and a shorter
    one is an error; with ``stream=True`` the caller framed the message and the body must match exactly.
    """
    if len(data) > max_size:
        raise SipParseError(f"message of {len(data)} bytes exceeds the {max_size}-byte limit", 413)
    data = data.lstrip(b"\r\n")
    if not data:
        raise SipParseError("empty message: expected a start line")
    end = _HEAD_END.search(data)
    if end is None:
        raise SipParseError("message has no blank line after its headers")
    try:
        head = data[: end.start()].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipParseError(f"message head is not UTF-8 at byte {exc.start}") from exc
    body = data[end.end() :]
    lines = _LINE_SPLIT.split(head)
    start = lines[0]

    # start line first: a wrong version is a 505 whatever else is wrong
    response_line: tuple[int, str] | None = None
    request_line: tuple[str, str] | None = None
    if start[:4].upper() == "SIP/":
        m = _STATUS_LINE.match(start)
        if not m:
            raise SipParseError(f"cannot parse status line {start!r}: expected 'SIP/2.0 <code> <reason>'")
        _check_version(m.group(1), start)
        status, reason = int(m.group(2)), m.group(3) or ""
        if not 100 <= status <= 699:
            raise SipParseError(f"status code {status} outside 100-699")
        if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in reason):
            raise SipParseError(f"reason phrase {reason!r} contains control characters")
        response_line = (status, reason)
    else:
        m = _REQUEST_LINE.match(start)
        if not m:
            raise SipParseError(f"cannot parse request line {start!r}: expected 'METHOD uri SIP/2.0'")
        _check_version(m.group(3), start)
        request_line = (m.group(1), m.group(2))

    # unfold continuation lines (RFC 3261 §7.3.1)
    raw_headers: list[str] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if not raw_headers:
                raise SipParseError(f"continuation line {line!r} before any header")
            raw_headers[-1] += " " + line.strip(_WS)
        else:
            raw_headers.append(line)
        if len(raw_headers) > MAX_HEADERS:
            raise SipParseError(f"more than {MAX_HEADERS} header lines", 413)
    headers = Headers()
    for line in raw_headers:
        if "\r" in line:
            raise SipParseError(f"bare CR in header line {line!r}")
        name, colon, value = line.partition(":")
        name = name.rstrip(_WS)
        if not colon or not _HEADER_NAME.match(name):
            raise SipParseError(f"cannot parse header line {line!r}: expected 'Name: value'")
        headers.add(name, value)

    if len(headers) > MAX_HEADER_ENTRIES:
        raise SipParseError(f"{len(headers)} header values exceed the limit of {MAX_HEADER_ENTRIES}", 413)
    lengths = headers.get_all("Content-Length")
    if len(lengths) > 1:
        raise SipParseError(f"{len(lengths)} Content-Length headers: expected one")
    if lengths:
        length_text = lengths[0]
        if not (length_text.isascii() and length_text.isdigit()):
            raise SipParseError(
                f"cannot parse Content-Length {length_text!r}: expected a non-negative integer"
            )
        length = int(length_text)
        if length > len(body):
            raise SipParseError(f"Content-Length {length} exceeds the {len(body)} bytes of body received")
        if stream and length != len(body):
            raise SipParseError(
                f"Content-Length {length} does not match the framed body of {len(body)} bytes"
            )
        body = body[:length]
    elif stream:
        raise SipParseError("a message on a stream transport needs Content-Length")

    msg: Request | Response
    if response_line is not None:
        msg = Response(response_line[0], response_line[1], headers, body)
    else:
        assert request_line is not None
        method, uri_text = request_line
        uri = URI.parse(uri_text)
        if uri.headers:
            raise SipParseError(f"Request-URI {uri_text!r} carries escaped headers: not allowed (§19.1.5)")
        msg = Request(method, uri, headers, body)
    _validate_headers(msg)
    return msg


# ----------------------------------------------------------------------------------------------------
# UAS checks (RFC 3261 §8.2.2, §8.2.3, §16.3)


class RequestRejected(SipParseError):
    """A well-formed request this element will not process; answer ``status`` and add ``headers``."""

    def __init__(self, message: str, status: int, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message, status)
        self.headers: tuple[tuple[str, str], ...] = tuple(headers)


def check_request(
    request: Request,
    *,
    supported: Iterable[str] = (),
    accept: Iterable[str] | None = ("application/sdp",),
    allowed_methods: Iterable[str] | None = None,
    forwarding: bool = False,
) -> None:
    """The checks a UAS (or, with ``forwarding=True``, a proxy) makes before acting on a parsed request.

    Raises :class:`RequestRejected`: 501 with Allow for a method not in ``allowed_methods``; 483 when
    forwarding a request whose Max-Forwards is 0; 420 with Unsupported for a Require option tag not in
    ``supported``; 415 with Accept for a body whose Content-Type is not in ``accept`` (``None``: accept any).
    ACK is never rejected (it has no response) and CANCEL carries no body or Require to check.
    """
    if request.method == "ACK":
        return
    if allowed_methods is not None:
        allowed = list(dict.fromkeys(allowed_methods))
        if request.method not in allowed:
            raise RequestRejected(
                f"method {request.method!r} is not implemented here: expected one of {allowed}",
                501,
                [("Allow", ", ".join(allowed))],
            )
    if forwarding and request.max_forwards == 0:
        raise RequestRejected("Max-Forwards reached 0: the request cannot be forwarded", 483)
    if request.method == "CANCEL":
        return
    known = {tag.lower() for tag in supported}
    missing = [tag for tag in request.require if tag.lower() not in known]
    if missing:
        raise RequestRejected(
            f"Require {missing} not supported: supported are {sorted(known)}",
            420,
            [("Unsupported", ", ".join(missing))],
        )
    if accept is not None and request.body:
        accepted = [a.lower() for a in accept]
        ctype = request.content_type
        if ctype is None or ctype not in accepted:
            raise RequestRejected(
                f"body of type {ctype!r} not understood: expected one of {accepted}",
                415,
                [("Accept", ", ".join(accepted))],
            )
        encodings = [e.lower() for e in request.headers.get_all("Content-Encoding")]
        if any(e != "identity" for e in encodings):
            raise RequestRejected(
                f"Content-Encoding {encodings} not supported: expected identity",
                415,
                [("Accept", ", ".join(accepted)), ("Accept-Encoding", "identity")],
            )


# ----------------------------------------------------------------------------------------------------
# Stream framing


def _framed_length(head: bytes) -> int:
    """Content-Length of a header block cut from a stream (latin-1 so that any octet decodes)."""
    unfolded: list[str] = []
    for line in _LINE_SPLIT.split(head.decode("latin-1"))[1:]:
        if line[:1] in (" ", "\t") and unfolded:
            unfolded[-1] += " " + line.strip(_WS)
        else:
            unfolded.append(line)
    values: list[str] = []
    for line in unfolded:
        name, colon, value = line.partition(":")
        if colon and name.rstrip(_WS).lower() in ("content-length", "l"):
            values.append(value.strip(_WS))
    if not values:
        raise SipParseError("a message on a stream transport needs Content-Length")
    if len(values) > 1:
        raise SipParseError(f"{len(values)} Content-Length headers on a stream: the framing is ambiguous")
    if not (values[0].isascii() and values[0].isdigit()):
        raise SipParseError(f"cannot frame a stream message with Content-Length {values[0]!r}")
    return int(values[0])


class StreamFramer:
    """Cuts a TCP/TLS byte stream into whole messages by the blank line and Content-Length (RFC 3261 §18.3).

    A :class:`SipParseError` from :meth:`feed` means the stream cannot be re-synchronised: close the
    connection.
    """

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_size
        self._scanned = 0  # no blank line starts before this offset (a slow sender costs O(n), not O(n²))

    @property
    def buffered(self) -> int:
        """Octets received but not yet part of a whole message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every complete message now available (keep-alive CRLFs are dropped)."""
        self._buf += data
        out: list[bytes] = []
        while True:
            skip = 0
            while skip < len(self._buf) and self._buf[skip] in (0x0D, 0x0A):
                skip += 1
            if skip:
                del self._buf[:skip]
                self._scanned = 0
            end = _HEAD_END.search(self._buf, max(self._scanned - 3, 0))
            if end is None:
                self._scanned = len(self._buf)
                if len(self._buf) > self._max:
                    raise SipParseError(f"header block exceeds {self._max} bytes", 413)
                return out
            length = _framed_length(bytes(self._buf[: end.start()]))
            total = end.end() + length
            if total > self._max:
                raise SipParseError(f"message of {total} bytes exceeds the {self._max}-byte limit", 413)
            if len(self._buf) < total:
                return out
            out.append(bytes(self._buf[:total]))
            del self._buf[:total]
            self._scanned = 0
