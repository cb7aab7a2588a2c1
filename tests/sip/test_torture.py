"""RFC 4475 torture messages against the parser (tests/data/rfc4475/*.dat, see its README)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sip.auth import AuthStatus, DigestServer
from sip.errors import SipParseError
from sip.message import (
    Request,
    RequestRejected,
    Response,
    StreamFramer,
    check_request,
    parse_message,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "rfc4475"

# §3.1.1: syntactically valid; a parser must accept them.
VALID = [
    "wsinv", "intmeth", "esc01", "escnull", "esc02", "lwsdisp", "longreq", "dblreq", "semiuri", "transports",
    "mpart01", "unreason", "noreason",
]  # fmt: skip
# §3.2, §3.3, §3.4: well-formed; the element above the parser decides (checked one by one below).
SEMANTIC_VALID = [
    "badbranch", "bext01", "invut", "regaut01", "bcast", "zeromf", "cparam01", "cparam02", "regescrt",
    "sdp01", "inv2543",
]  # fmt: skip
# §3.1.2 (invalid syntax) and the §3.3 messages a UAS must refuse: name -> status to answer.
INVALID = {
    "badinv01": 400, "clerr": 400, "ncl": 400, "scalar02": 400, "scalarlg": 400, "quotbal": 400,
    "ltgtruri": 400, "lwsruri": 400, "lwsstart": 400, "trws": 400, "escruri": 400, "baddate": 400,
    "regbadct": 400, "badaspec": 400, "baddn": 400, "badvers": 505, "mismatch01": 400, "mismatch02": 501,
    "bigcode": 400, "insuf": 400, "unkscm": 416, "novelsc": 416, "unksm2": 416, "multi01": 400, "mcl01": 400,
}  # fmt: skip


def load(name: str) -> bytes:
    return (DATA / f"{name}.dat").read_bytes()


def parse_request(name: str) -> Request:
    msg = parse_message(load(name))
    assert isinstance(msg, Request)
    return msg


def test_every_file_is_classified() -> None:
    names = {p.stem for p in DATA.glob("*.dat")}
    assert names == set(VALID) | set(SEMANTIC_VALID) | set(INVALID)
    assert len(names) == 49


@pytest.mark.parametrize("name", VALID + SEMANTIC_VALID)
def test_valid_message_parses_and_round_trips(name: str) -> None:
    msg = parse_message(load(name))
    rendered = bytes(msg)
    again = parse_message(rendered)
    assert again == msg
    assert bytes(again) == rendered


@pytest.mark.parametrize(("name", "status"), sorted(INVALID.items()))
def test_invalid_message_is_refused_with_its_status(name: str, status: int) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(load(name))
    assert info.value.status == status, str(info.value)


def outcome(call: Callable[[], object]) -> int | None:
    """None if ``call`` succeeds, the status of the SipParseError it raises otherwise (anything else escapes)."""
    try:
        call()
    except SipParseError as exc:
        return exc.status
    return None


@pytest.mark.parametrize("name", sorted(p.stem for p in DATA.glob("*.dat")))
def test_no_torture_message_raises_anything_but_a_parse_error(name: str) -> None:
    data = load(name)
    for cut in range(0, len(data), 7):  # every prefix, as a datagram and as a stream would deliver it
        status = outcome(lambda: parse_message(data[:cut]))  # noqa: B023
        assert status is None or 400 <= status <= 599
        status = outcome(lambda: StreamFramer().feed(data[:cut]))  # noqa: B023
        assert status in (None, 400, 413)


def test_wsinv_unfolds_and_reads_through_whitespace() -> None:
    msg = parse_request("wsinv")
    assert msg.method == "INVITE"
    assert msg.uri.user == "vivekg"
    assert msg.uri.host == "chair-dnrc.example.com"
    assert msg.uri.param("unknownparam") == ""
    assert msg.to.tag == "1918181833n"
    assert msg.to.display is None
    assert msg.from_.display == 'J Rosenberg \\"'
    assert msg.from_.tag == "98asjd8"
    assert msg.max_forwards == 68
    assert msg.cseq == (9, "INVITE")
    assert msg.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert [(v.transport, v.host, v.branch) for v in msg.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.headers.get("Subject") == ""
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    contact = msg.contact
    assert contact is not None
    assert contact.display == 'Quoted string ""'
    assert contact.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    (route,) = msg.routes
    assert route.uri.params == (("lr", None), ("unknownwith", "value"), ("unknown-no-value", None))
    assert msg.content_type == "application/sdp"
    assert len(msg.body) == 150
    assert msg.body.endswith(b"a=rtpmap:31 LPC\r\n")


def test_intmeth_keeps_unusual_characters() -> None:
    msg = parse_request("intmeth")
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.cseq == (139122385, msg.method)
    assert msg.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert msg.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert msg.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert msg.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.to.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert msg.from_.display == "token1~` token2'+_ token3*%!.-"
    assert msg.from_.param("fromParam''~+*_!.-%") == '"работающий"'
    assert msg.from_.tag == "_token~1'+`*%!-."
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.max_forwards == 255
    assert msg.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_esc01_unescapes_uri_user_parts_only() -> None:
    msg = parse_request("esc01")
    assert msg.uri.user == "sips:user@example.com"
    assert msg.uri.host == "example.net"
    assert msg.to.uri.user == "user"
    assert msg.from_.uri.user == "I have spaces"
    contact = msg.contact
    assert contact is not None
    assert contact.uri.user == "caller"
    # parameters stay escaped: "value%41" is not "valueA" (unescaping is never recursive)
    assert contact.uri.params == (("%6c%72", None), ("n%61me", "v%61lue%25%34%31"))
    assert str(msg.uri) == "sip:sips%3Auser%40example.com@example.net"


def test_escnull_keeps_nul_octets_in_user_parts() -> None:
    msg = parse_request("escnull")
    assert msg.to.uri.user == "null-\x00-null"
    assert [c.uri.user for c in msg.contacts] == ["\x00", "\x00\x00"]
    assert str(msg.contacts[1].uri) == "sip:%00%00@host5.example.com"


def test_esc02_percent_is_not_an_escape_outside_uris() -> None:
    msg = parse_request("esc02")
    assert msg.method == "RE%47IST%45R"
    assert msg.to.display == "%Z%45"
    assert [c.uri.user for c in msg.contacts] == ["alias1", "alias3"]
    assert msg.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert msg.top_via.branch == "z9hG4bK209%fzsnel234"


def test_lwsdisp_accepts_display_name_glued_to_bracket() -> None:
    assert parse_request("lwsdisp").from_.display == "caller"


def test_longreq_long_values_and_34_vias() -> None:
    msg = parse_request("longreq")
    vias = msg.vias
    assert len(vias) == 34
    assert [v.host for v in vias[:33]] == [f"sip{n}.example.com" for n in range(33, 0, -1)]
    assert vias[-1].received == "192.0.2.5"
    assert vias[-1].branch == "very" + "long" * 50 + "branchvalue"
    assert msg.to.uri.port == 6000
    assert msg.to.uri.param("very" + "long" * 25 + "parameternamewithnovalue") == ""
    assert msg.to.display is not None
    assert msg.to.display.startswith("I have a user name of extremeextreme")
    assert msg.from_.tag == "12" + "982" * 50 + "424"
    assert msg.call_id == "longreq.one" + "really" * 20 + "longcallid"
    assert len(msg.body) == 150


def test_dblreq_ignores_octets_after_the_body() -> None:
    msg = parse_request("dblreq")
    assert msg.method == "REGISTER"
    assert msg.body == b""


def test_semiuri_user_part_holds_a_parameter() -> None:
    msg = parse_request("semiuri")
    assert msg.uri.user == "user;par=u@example.net"
    assert msg.uri.host == "example.com"
    assert len(msg.headers.get_all("Accept")) == 6


def test_transports_and_extension_transport() -> None:
    msg = parse_request("transports")
    assert [v.transport for v in msg.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_mpart01_binary_body_is_framed_by_content_length() -> None:
    msg = parse_request("mpart01")
    assert b"\x00" in msg.body
    assert msg.body.endswith(b"--7a9cbec02ceef655--\r\n")
    assert msg.top_via.has_rport
    assert msg.top_via.rport is None
    assert msg.content_type == "multipart/mixed"


def test_reason_phrases() -> None:
    unreason = parse_message(load("unreason"))
    assert isinstance(unreason, Response)
    assert unreason.status == 200
    assert unreason.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    noreason = parse_message(load("noreason"))
    assert isinstance(noreason, Response)
    assert (noreason.status, noreason.reason) == (100, "")


@pytest.mark.parametrize("name", [n for n in VALID if n not in ("dblreq",)] + ["badbranch", "bcast"])
def test_valid_messages_survive_a_byte_stream(name: str) -> None:
    data = load(name)
    framer = StreamFramer()
    frames: list[bytes] = []
    stream = data + b"\r\n\r\n" + data  # two copies with a CRLF keep-alive between, fed in odd chunks
    for i in range(0, len(stream), 13):
        frames += framer.feed(stream[i : i + 13])
    assert len(frames) == 2
    first, second = (parse_message(f, stream=True) for f in frames)
    assert first == second == parse_message(data)


def test_badbranch_parses_and_leaves_the_bare_cookie_to_the_transaction_layer() -> None:
    assert parse_request("badbranch").top_via.branch == "z9hG4bK"


def test_bext01_uas_answers_420_with_unsupported() -> None:
    msg = parse_request("bext01")
    with pytest.raises(RequestRejected) as info:
        check_request(msg, supported=("timer", "100rel"))
    assert info.value.status == 420
    assert info.value.headers == (("Unsupported", "nothingSupportsThis, nothingSupportsThisEither"),)


def test_invut_uas_answers_415_with_accept() -> None:
    with pytest.raises(RequestRejected) as info:
        check_request(parse_request("invut"), accept=("application/sdp",))
    assert info.value.status == 415
    assert info.value.headers == (("Accept", "application/sdp"),)


def test_regaut01_unknown_auth_scheme_gets_a_plain_challenge() -> None:
    server = DigestServer("example.com", {"j.user": "secret"}.get, secret=b"k" * 32)
    result = server.check(parse_request("regaut01"), 100.0, "192.0.2.253")
    assert result.status is AuthStatus.CHALLENGE
    assert result.event is None
    assert result.response is not None
    assert result.response.status == 401


def test_bcast_response_with_two_vias_parses() -> None:
    msg = parse_message(load("bcast"))
    assert isinstance(msg, Response)
    assert [v.host for v in msg.vias] == ["192.0.2.198", "255.255.255.255"]


def test_zeromf_is_answered_by_a_uas_but_not_forwarded() -> None:
    msg = parse_request("zeromf")
    assert msg.max_forwards == 0
    check_request(msg)  # a UAS answers OPTIONS normally
    with pytest.raises(RequestRejected) as info:
        check_request(msg, forwarding=True)
    assert info.value.status == 483


def test_cparam_parameters_land_where_the_brackets_say() -> None:
    addr_spec = parse_request("cparam01").contact
    name_addr = parse_request("cparam02").contact
    assert addr_spec is not None
    assert name_addr is not None
    assert addr_spec.params == (("unknownparam", None),)
    assert addr_spec.uri.params == ()
    assert name_addr.params == ()
    assert name_addr.uri.params == (("unknownparam", None),)


def test_regescrt_contact_uri_headers_are_unescaped() -> None:
    contact = parse_request("regescrt").contact
    assert contact is not None
    assert contact.uri.headers == (("Route", "<sip:sip.example.com>"),)


def test_sdp01_and_inv2543_parse() -> None:
    assert parse_request("sdp01").content_type == "application/sdp"
    old = parse_request("inv2543")
    assert old.max_forwards is None
    assert old.top_via.branch is None
    assert old.to.params == (("user", "phone"),)
    assert old.from_.tag is None
    assert old.body.startswith(b"v=0")
