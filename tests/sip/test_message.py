"""SIP message parse/render: URIs, addresses, Via, headers, framing, UAS checks, and parse(render(x)) == x."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip.errors import SipParseError
from sip.message import (
    MAX_HEADER_ENTRIES,
    MAX_HEADERS,
    URI,
    Headers,
    NameAddr,
    Request,
    RequestRejected,
    Response,
    StreamFramer,
    Via,
    canonical_name,
    check_request,
    is_keepalive,
    parse_message,
    quote_string,
    split_list,
)

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def parse_request(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def status_of(data: bytes, *, stream: bool = False) -> int:
    with pytest.raises(SipParseError) as info:
        parse_message(data, stream=stream)
    return info.value.status


def replace_line(old: bytes, new: bytes, data: bytes = INVITE) -> bytes:
    assert old in data
    return data.replace(old, new)


# --- URIs ------------------------------------------------------------------------------------------


def test_sip_uri_fields_and_render() -> None:
    uri = URI.parse(
        "SIP:Alice:pw@Atlanta.Example.COM:5070;transport=TCP;lr?subject=project%20x&priority=urgent"
    )
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sip",
        "Alice",
        "pw",
        "atlanta.example.com",
        5070,
    )
    assert uri.params == (("transport", "TCP"), ("lr", None))
    assert uri.headers == (("subject", "project x"), ("priority", "urgent"))
    assert uri.transport == "TCP"
    assert uri.param("lr") == ""
    assert uri.param("maddr") is None
    assert (
        str(uri)
        == "sip:Alice:pw@atlanta.example.com:5070;transport=TCP;lr?subject=project%20x&priority=urgent"
    )


def test_sips_ipv6_and_defaults() -> None:
    uri = URI.parse("sips:[2001:DB8::1]")
    assert uri.host == "[2001:db8::1]"
    assert uri.port is None
    assert uri.hostport == ("2001:db8::1", 5061)
    assert uri.transport == "TLS"
    assert URI.parse("sip:[::1]:5062").hostport == ("::1", 5062)
    assert URI.parse("sip:h").with_params(transport="tcp").param("transport") == "tcp"


def test_tel_uri() -> None:
    uri = URI.parse("tel:+1-201-555-0123;phone-context=example.com")
    assert (uri.scheme, uri.user, uri.host) == ("tel", "+1-201-555-0123", "")
    assert uri.param("phone-context") == "example.com"
    assert str(uri) == "tel:+1-201-555-0123;phone-context=example.com"


def test_user_part_escaping_is_minimal_and_reversible() -> None:
    uri = URI(scheme="sip", host="example.com", user="a b@c:d%é")
    text = str(uri)
    assert text == "sip:a%20b%40c%3Ad%25%C3%A9@example.com"
    assert URI.parse(text) == uri


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("http://example.com", 416),
        ("nobodyKnowsThisScheme:foo", 416),
        ("<sip:a@b>", 400),
        ("sip:", 400),
        ("sip:a@", 400),
        ("sip:@host", 400),
        ("sip:a%ZZ@host", 400),
        ("sip:a%FF@host", 400),  # escaped octets that are not UTF-8
        ("sip:host:0", 400),
        ("sip:host:65536", 400),
        ("sip:host:12a", 400),
        ("sip:ho st", 400),
        ("sip:host;", 400),
        ("sip:host;a=", 400),
        ("sip:host;a=b c", 400),
        ("sip:host?h", 400),
        ("sip:[::1", 400),
        ("sip:[::1]x", 400),
        ("sip:ho<st", 400),
        ("tel:abc!", 400),
        ("sip:a\x00@host", 400),
    ],
)
def test_bad_uris_are_refused_with_a_status(text: str, status: int) -> None:
    with pytest.raises(SipParseError) as info:
        URI.parse(text)
    assert info.value.status == status


# --- name-addr -------------------------------------------------------------------------------------


def test_name_addr_quoted_display_and_params() -> None:
    addr = NameAddr.parse('"Mr. \\"J\\" User" <sip:j@example.com;lr> ;tag = abc; q=0.5 ;Flag')
    assert addr.display == 'Mr. "J" User'
    assert addr.uri.params == (("lr", None),)
    assert addr.params == (("tag", "abc"), ("q", "0.5"), ("flag", None))
    assert addr.tag == "abc"
    assert str(addr) == '"Mr. \\"J\\" User" <sip:j@example.com;lr>;tag=abc;q=0.5;flag'
    assert NameAddr.parse(str(addr)) == addr


def test_addr_spec_params_belong_to_the_header() -> None:
    addr = NameAddr.parse("sip:+12125551212@gw.example.net;user=phone;tag=9")
    assert addr.uri.params == ()
    assert addr.params == (("user", "phone"), ("tag", "9"))
    assert str(addr.with_tag("10")) == "<sip:+12125551212@gw.example.net>;user=phone;tag=10"


def test_unquoted_utf8_display_name_is_accepted_and_rendered_quoted() -> None:
    addr = NameAddr.parse("Jörg Müller <sip:j@example.com>")
    assert addr.display == "Jörg Müller"
    assert str(addr) == '"Jörg Müller" <sip:j@example.com>'


def test_quoted_param_value_is_kept_verbatim() -> None:
    addr = NameAddr.parse('<sip:a@b>;x="a;b,c\\"d"')
    assert addr.params == (("x", '"a;b,c\\"d"'),)


@pytest.mark.parametrize(
    "text",
    [
        '"unterminated <sip:a@b>',
        "<sip:a@b",
        "Bell, Alexander <sip:a@b>",
        "< sip:a@b>",
        "<sip:a@b>;",
        "<sip:a@b>;=x",
        "<sip:a@b> junk",
        "sip:a@b?x=y",
        '"a" sip:a@b',
        "*",
        "",
        '"ctl\x01" <sip:a@b>',
    ],
)
def test_bad_addresses(text: str) -> None:
    with pytest.raises(SipParseError):
        NameAddr.parse(text)


def test_quote_string_escapes_and_neutralises_line_breaks() -> None:
    assert quote_string('a"b\\c\x01') == '"a\\"b\\\\c\\\x01"'
    assert quote_string("evil\r\nVia: x") == '"evil  Via: x"'


# --- Via -------------------------------------------------------------------------------------------


def test_via_fields() -> None:
    via = Via.parse("SIP / 2.0 / udp  Host.Example.com : 5060 ; branch = z9hG4bK1 ;rport;received=192.0.2.1")
    assert (via.transport, via.host, via.port) == ("UDP", "host.example.com", 5060)
    assert via.branch == "z9hG4bK1"
    assert via.has_rport
    assert via.rport is None
    assert via.received == "192.0.2.1"
    filled = via.with_params(rport="5070")
    assert filled.rport == 5070
    assert str(filled).endswith(";branch=z9hG4bK1;received=192.0.2.1;rport=5070")
    assert Via.parse(str(filled)) == filled
    assert Via.parse("SIP/2.0/TLS [2001:db8::1]:5061;branch=x").host == "[2001:db8::1]"


@pytest.mark.parametrize(
    "text", ["SIP/2.0/UDP", "SIP/2.0 UDP host", "SIP/2.0/UDP host;rport=abc", "SIP/2.0/UDP host;branch", "x"]
)
def test_bad_vias(text: str) -> None:
    with pytest.raises(SipParseError):
        Via.parse(text)


def test_via_of_another_version_is_505() -> None:
    with pytest.raises(SipParseError) as info:
        Via.parse("SIP/3.0/UDP host")
    assert info.value.status == 505


# --- headers ---------------------------------------------------------------------------------------


def test_canonical_names_and_compact_forms() -> None:
    assert [canonical_name(n) for n in ("v", "I", "call-id", "WWW-AUTHENTICATE", "x-my-header", "cseq")] == [
        "Via",
        "Call-ID",
        "Call-ID",
        "WWW-Authenticate",
        "X-My-Header",
        "CSeq",
    ]


def test_headers_split_lists_but_not_other_values() -> None:
    h = Headers(
        [("Via", "SIP/2.0/UDP a, SIP/2.0/UDP b"), ("Subject", "a, b"), ("m", '"x, y" <sip:a@b>, <sip:c@d>')]
    )
    assert h.get_all("via") == ["SIP/2.0/UDP a", "SIP/2.0/UDP b"]
    assert h.get("Subject") == "a, b"
    assert h.get_all("Contact") == ['"x, y" <sip:a@b>', "<sip:c@d>"]
    h.prepend("Via", "SIP/2.0/TCP z")
    h.set("Subject", "new")
    assert h.get("via") == "SIP/2.0/TCP z"
    assert h.get_all("Subject") == ["new"]
    assert "SUBJECT" in h
    h.remove("Subject")
    assert "Subject" not in h
    assert len(h) == 5
    assert h.count("Via") == 3
    assert split_list("a,,b, ,c") == ["a", "b", "c"]
    with pytest.raises(SipParseError):
        split_list('"open, quote')


def test_rendered_values_cannot_inject_header_lines() -> None:
    req = parse_request(INVITE)
    req.headers.add("Subject", "hello\r\nVia: SIP/2.0/UDP evil.example.com")
    again = parse_request(bytes(req))
    assert len(again.vias) == 1
    assert again.headers.get("Subject") == "hello Via: SIP/2.0/UDP evil.example.com"


# --- messages --------------------------------------------------------------------------------------


def test_parse_request_and_accessors() -> None:
    req = parse_request(INVITE)
    assert req.method == "INVITE"
    assert req.uri.user == "bob"
    assert req.cseq == (314159, "INVITE")
    assert req.max_forwards == 70
    assert req.from_.tag == "1928301774"
    assert req.to.tag is None
    assert req.to.display == "Bob"
    assert req.top_via.branch == "z9hG4bK776asdhds"
    assert req.content_type == "application/sdp"
    assert req.body == b"v=0\n"
    assert repr(req) == "<Request INVITE sip:bob@biloxi.example.com>"


def test_render_writes_the_true_content_length_in_place() -> None:
    req = parse_request(INVITE)
    req.body = b"v=0\r\no=x\r\n"
    text = bytes(req)
    assert b"Content-Length: 10\r\n\r\nv=0" in text
    assert text.index(b"Content-Length") < text.index(b"\r\n\r\n")
    bare = Request("OPTIONS", URI.parse("sip:a@b"), Headers([("Via", "SIP/2.0/UDP h;branch=z9hG4bKx")]))
    assert bytes(bare).endswith(b"Content-Length: 0\r\n\r\n")


def test_equality_ignores_content_length_only() -> None:
    a = parse_request(INVITE)
    b = parse_request(INVITE.replace(b"Content-Length: 4\r\n", b""))
    assert a == b
    b.headers.add("X-Extra", "1")
    assert a != b
    assert a != "not a message"


def test_response_parse_and_render() -> None:
    data = (
        b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1;received=10.0.0.1\r\n"
        b"To: <sip:b@h>;tag=x\r\nFrom: <sip:a@h>;tag=y\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n"
    )
    resp = parse_message(data)
    assert isinstance(resp, Response)
    assert (resp.status, resp.reason) == (180, "Ringing")
    assert parse_message(bytes(resp)) == resp
    assert repr(resp) == "<Response 180 Ringing>"


def test_lf_only_lines_leading_crlf_and_folding() -> None:
    data = b"\r\n\r\n" + INVITE.replace(b"\r\n", b"\n").replace(b"Max-Forwards: 70", b"Max-Forwards:\n   70")
    req = parse_request(data)
    assert req.max_forwards == 70
    assert req.body == b"v=0\n"


def test_datagram_body_is_cut_to_content_length_and_stream_must_match() -> None:
    assert parse_request(INVITE + b"garbage").body == b"v=0\n"
    assert status_of(INVITE + b"garbage", stream=True) == 400
    assert status_of(INVITE[:-2]) == 400
    assert status_of(INVITE.replace(b"Content-Length: 4\r\n", b""), stream=True) == 400


@pytest.mark.parametrize(
    ("old", "new", "status"),
    [
        (b"SIP/2.0\r\n", b"SIP/3.0\r\n", 505),
        (b"INVITE sip:bob@biloxi.example.com", b"INVITE  sip:bob@biloxi.example.com", 400),
        (b"INVITE sip:bob@biloxi.example.com", b"INVITE foo:bob", 416),
        (b"INVITE sip:bob@biloxi.example.com", b"INVITE sip:bob@biloxi.example.com?x=y", 400),
        (b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE", 400),
        (b"CSeq: 314159 INVITE", b"CSeq: 2147483648 INVITE", 400),
        (b"CSeq: 314159 INVITE", b"CSeq: x INVITE", 400),
        (b"Max-Forwards: 70", b"Max-Forwards: 256", 400),
        (b"Max-Forwards: 70", b"Max-Forwards: -1", 400),
        (b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com", b"Call-ID: a b", 400),
        (b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com", b"Call-ID:", 400),
        (b"Content-Length: 4", b"Content-Length: 4\r\nl: 4", 400),
        (b"Content-Length: 4", b"Content-Length: four", 400),
        (b"Content-Type: application/sdp", b"Content-Type: sdp", 400),
        (b"Max-Forwards: 70", b"Max-Forwards: 70\r\nDate: Sat, 13 Nov 2010 23:29:00 UTC", 400),
        (b"Max-Forwards: 70", b"Max-Forwards: 70\r\nRequire: a b", 400),
        (b"Max-Forwards: 70", b"Max-Forwards: 70\r\nRoute: sip:a@b, <sip:c", 400),
        (b"Max-Forwards: 70", b"Max-Forwards: 70\r\nBad Name: x", 400),
        (b"Max-Forwards: 70", b"Max-Forwards: 70\r\nNoColon", 400),
        (b"Max-Forwards: 70", b"Max-Forwards: 70\r\nX: a\rb", 400),
        (b"To: Bob <sip:bob@biloxi.example.com>\r\n", b"", 400),
        (b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n", b"", 400),
        (b"To: Bob", b"To: Bob <sip:x@y>\r\nTo: Bob", 400),
        (
            b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n",
            b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n x\r\n",
            400,
        ),
        (b"Bob", "B\u00f6b".encode("latin-1"), 400),  # head not UTF-8
    ],
)
def test_malformed_requests(old: bytes, new: bytes, status: int) -> None:
    assert status_of(replace_line(old, new)) == status


def test_status_line_errors() -> None:
    ok = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTo: <sip:b@h>\r\nFrom: <sip:a@h>\r\nCall-ID: c\r\n"
    ok += b"CSeq: 1 INVITE\r\n\r\n"
    assert parse_message(ok.replace(b"200 OK", b"200")).reason == ""  # type: ignore[union-attr]
    assert status_of(ok.replace(b"200 OK", b"099 Low")) == 400
    assert status_of(ok.replace(b"200 OK", b"2000 OK")) == 400
    assert status_of(ok.replace(b"200 OK", b"200 O\x01K")) == 400
    assert status_of(ok.replace(b"SIP/2.0 200", b"SIP/2.1 200")) == 505
    assert status_of(b"") == 400
    assert status_of(b"\r\n\r\n") == 400
    assert status_of(b"OPTIONS sip:a@b SIP/2.0") == 400


def test_size_caps() -> None:
    assert status_of(INVITE + b"x" * 70_000) == 413
    many = INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\n" + b"X-A: 1\r\n" * MAX_HEADERS)
    assert status_of(many) == 413
    with pytest.raises(SipParseError) as info:
        parse_message(INVITE, max_size=100)
    assert info.value.status == 413
    contacts = b"Contact: " + b", ".join([b"<sip:a@b>"] * (MAX_HEADER_ENTRIES + 1))
    assert status_of(replace_line(b"Contact: <sip:alice@pc33.atlanta.example.com>", contacts)) == 413


def test_contact_star_and_keepalive() -> None:
    req = parse_request(replace_line(b"Contact: <sip:alice@pc33.atlanta.example.com>", b"Contact: *"))
    assert req.contact is None
    assert req.contacts == []
    assert is_keepalive(b"\r\n\r\n")
    assert is_keepalive(b"\r\n")
    assert not is_keepalive(INVITE)


# --- stream framing --------------------------------------------------------------------------------


def test_framer_cuts_messages_fed_byte_by_byte_with_keepalives() -> None:
    framer = StreamFramer()
    stream = b"\r\n\r\n" + INVITE + b"\r\n" + INVITE.replace(b"Content-Length: 4", b"l:\r\n 4")
    frames: list[bytes] = []
    for i in range(len(stream)):
        frames += framer.feed(stream[i : i + 1])
    assert [parse_message(f, stream=True) for f in frames] == [parse_request(INVITE)] * 2
    assert framer.buffered == 0


def test_framer_errors() -> None:
    with pytest.raises(SipParseError) as info:
        StreamFramer().feed(INVITE.replace(b"Content-Length: 4\r\n", b""))
    assert info.value.status == 400
    with pytest.raises(SipParseError):
        StreamFramer().feed(INVITE.replace(b"Content-Length: 4", b"Content-Length: 4\r\nl: 5"))
    with pytest.raises(SipParseError):
        StreamFramer().feed(INVITE.replace(b"Content-Length: 4", b"Content-Length: -4"))
    with pytest.raises(SipParseError) as info:
        StreamFramer(max_size=1000).feed(INVITE.replace(b"Content-Length: 4", b"Content-Length: 5000"))
    assert info.value.status == 413
    with pytest.raises(SipParseError) as info:
        StreamFramer(max_size=100).feed(b"INVITE " + b"x" * 200)
    assert info.value.status == 413
    partial = StreamFramer()
    assert partial.feed(INVITE[:-1]) == []
    assert partial.buffered == len(INVITE) - 1


# --- UAS checks ------------------------------------------------------------------------------------


def test_check_request() -> None:
    req = parse_request(INVITE)
    check_request(req, supported=("timer",), allowed_methods=("INVITE", "ACK"))
    req.headers.add("Require", "timer, 100rel")
    with pytest.raises(RequestRejected) as info:
        check_request(req, supported=("timer",))
    assert (info.value.status, info.value.headers) == (420, (("Unsupported", "100rel"),))
    with pytest.raises(RequestRejected) as info:
        check_request(req, allowed_methods=("ACK", "BYE", "ACK"))
    assert (info.value.status, info.value.headers) == (501, (("Allow", "ACK, BYE"),))
    req.headers.remove("Require")
    req.headers.set("Content-Type", "text/plain")
    with pytest.raises(RequestRejected) as info:
        check_request(req)
    assert info.value.status == 415
    check_request(req, accept=None)
    req.headers.set("Content-Type", "application/sdp")
    req.headers.add("Content-Encoding", "gzip")
    with pytest.raises(RequestRejected) as info:
        check_request(req)
    assert info.value.status == 415
    ack = parse_request(INVITE.replace(b"INVITE", b"ACK").replace(b"Max-Forwards: 70", b"Max-Forwards: 0"))
    check_request(ack, allowed_methods=(), forwarding=True)


# --- parse(render(x)) == x over generated structures -----------------------------------------------

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_TOKEN_CHARS = _ALNUM + "ABCXYZ-.!%*_+`'~"
_PARAM_CHARS = _ALNUM + "-_.!~*'()[]/:&+$"
_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12)
_token = st.text(st.sampled_from(_TOKEN_CHARS), min_size=1, max_size=8)
_label = st.text(st.sampled_from(_ALNUM), min_size=1, max_size=8)
_hosts = st.one_of(
    st.lists(_label, min_size=1, max_size=3).map(".".join),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.sampled_from(["[2001:db8::1]", "[::1]", "[fe80::1:2:3]"]),
)
_escape = st.integers(0, 255).map(lambda b: f"%{b:02X}")
_pchars = st.lists(st.sampled_from(_PARAM_CHARS) | _escape, min_size=1, max_size=6).map("".join)
_uri_params = st.lists(st.tuples(_pchars.map(str.lower), st.none() | _pchars), max_size=3).map(tuple)
_sip_uris = st.builds(
    URI,
    scheme=st.sampled_from(["sip", "sips"]),
    host=_hosts,
    user=st.none() | st.text(st.characters(codec="utf-8"), min_size=1, max_size=10),
    password=st.none() | st.text(st.characters(codec="utf-8"), max_size=6),
    port=st.none() | st.integers(1, 65535),
    params=_uri_params,
    headers=st.lists(
        st.tuples(st.text(min_size=1, max_size=6, alphabet=st.characters(codec="utf-8")), _text)
    ).map(tuple),
).map(lambda u: u if u.user is not None else URI(u.scheme, u.host, None, None, u.port, u.params, u.headers))
_tel_uris = st.builds(
    URI,
    scheme=st.just("tel"),
    user=st.from_regex(r"\+?[0-9][0-9\-.()]{0,12}", fullmatch=True),
    params=_uri_params,
)
_uris = st.one_of(_sip_uris, _tel_uris)
_gen_values = st.none() | _token | _text.map(quote_string)
_gen_params = st.lists(st.tuples(_token.map(str.lower), _gen_values), max_size=3).map(tuple)
_name_addrs = st.builds(NameAddr, uri=_uris, display=st.none() | _text, params=_gen_params)
_vias = st.builds(
    Via,
    transport=st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"]),
    host=_hosts,
    port=st.none() | st.integers(1, 65535),
    params=st.lists(
        st.tuples(_token.map(str.lower).filter(lambda n: n not in ("rport", "ttl", "branch", "received", "maddr")),
                  _gen_values),
        max_size=3,
    ).map(tuple),
)  # fmt: skip
_PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


@_PROPERTY
@given(_uris)
def test_uri_round_trip(uri: URI) -> None:
    assert URI.parse(str(uri)) == uri


@_PROPERTY
@given(_name_addrs)
def test_name_addr_round_trip(addr: NameAddr) -> None:
    assert NameAddr.parse(str(addr)) == addr


@_PROPERTY
@given(_vias)
def test_via_round_trip(via: Via) -> None:
    assert Via.parse(str(via)) == via


_values = _text.map(lambda s: s.strip(" \t"))


@st.composite
def _messages(draw: st.DrawFn) -> Request | Response:
    method = draw(st.sampled_from(["INVITE", "BYE", "OPTIONS", "REGISTER", "X-CUSTOM"]) | _token)
    headers = Headers()
    for via in draw(st.lists(_vias, min_size=1, max_size=3)):
        headers.add("Via", str(via.with_params(branch="z9hG4bK" + draw(_label))))
    headers.add("From", str(draw(_name_addrs).with_tag(draw(_label))))
    headers.add("To", str(draw(_name_addrs)))
    headers.add("Call-ID", draw(_label) + "@" + draw(_label))
    headers.add("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}")
    headers.add("Max-Forwards", str(draw(st.integers(0, 255))))
    for contact in draw(st.lists(_name_addrs, max_size=2)):
        headers.add("Contact", str(contact))
    for name, value in draw(st.lists(st.tuples(_token.map(lambda t: "X-" + t), _values), max_size=4)):
        headers.add(name, value)
    body = draw(st.binary(max_size=40))
    if draw(st.booleans()):
        uri = draw(_uris)
        return Request(
            method, URI(uri.scheme, uri.host, uri.user, uri.password, uri.port, uri.params), headers, body
        )
    reason = draw(_values.map(lambda s: "".join(c for c in s if c.isprintable() or c == " ")))
    return Response(draw(st.integers(100, 699)), reason, headers, body)


@_PROPERTY
@given(_messages())
def test_message_round_trip(msg: Request | Response) -> None:
    data = bytes(msg)
    assert parse_message(data) == msg
    framer = StreamFramer()
    (frame,) = framer.feed(data)
    assert parse_message(frame, stream=True) == msg
