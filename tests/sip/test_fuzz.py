"""Mutation fuzzing of the parser: 10,000 mutated messages, deterministic (derandomized hypothesis).

Every mutant either parses (and then round-trips and all its typed views work) or raises SipParseError with a
4xx/5xx status; nothing else may escape, and the stream framer holds to the same rule.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sip.errors import SipParseError
from sip.message import Request, Response, StreamFramer, parse_message

DATA = Path(__file__).resolve().parents[1] / "data" / "rfc4475"

_TYPICAL = [
    b"INVITE sip:alice@127.0.0.1:5062;transport=udp SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: "Alice" <sip:alice@example.com>\r\n'
    b"From: Bob <sip:bob@example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:bob@127.0.0.1:5061>\r\n"
    b"Supported: timer, 100rel\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO\r\n"
    b"Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 31\r\n\r\n"
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n",
    b"SIP/2.0 401 Unauthorized\r\n"
    b"Via: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bKnashds7;received=192.0.2.1;rport=5070\r\n"
    b"From: <sip:bob@example.com>;tag=a73kszlfl\r\n"
    b"To: <sip:bob@example.com>;tag=1410948204\r\n"
    b"Call-ID: 1j9FpLxk3uxtm8tn@10.0.0.1\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b'WWW-Authenticate: Digest realm="example.com", nonce="abc", algorithm=SHA-256, qop="auth"\r\n'
    b"l: 0\r\n\r\n",
    b"ACK sips:[2001:db8::10]:5061 SIP/2.0\n"
    b"v: SIP/2.0/TLS [2001:db8::9]:5061;branch=z9hG4bK1\n"
    b"f: sips:x@[2001:db8::9];tag=1\n"
    b"t: <tel:+1-201-555-0123;phone-context=example.com>;tag=2\n"
    b"i: x@y\n"
    b"CSeq: 7 ACK\n"
    b"m: *\n"
    b"l: 0\n\n",
]
_VALID_TORTURE = [
    "wsinv",
    "intmeth",
    "esc01",
    "escnull",
    "esc02",
    "lwsdisp",
    "longreq",
    "semiuri",
    "transports",
    "mpart01",
    "unreason",
    "noreason",
    "badbranch",
    "bcast",
    "cparam01",
    "regescrt",
    "inv2543",
]
VALID_SEEDS = [(DATA / f"{name}.dat").read_bytes() for name in _VALID_TORTURE] + _TYPICAL
T = TypeVar("T")
ALL_SEEDS = [p.read_bytes() for p in sorted(DATA.glob("*.dat"))] + _TYPICAL

_NASTY = list(b";,:<>\"\\@%=?&[] \t\r\n/+*'~`!$()")


_KINDS = ["flip-syntax", "flip-syntax", "flip-any", "insert", "delete", "truncate", "duplicate", "duplicate",
          "remove", "remove", "value", "value", "fold", "space"]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    # mostly well-formed seeds, so that a good share of mutants parse and exercise the round trip
    data = bytearray(
        draw(st.sampled_from(VALID_SEEDS) if draw(st.integers(0, 4)) else st.sampled_from(ALL_SEEDS))
    )
    # positions from a seeded PRNG: hypothesis's own integers favour the ends (position 0 all the time)
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(_KINDS))
        pos = rnd.randint(0, len(data))
        if kind.startswith("flip") and data:  # one byte, biased to the characters that carry syntax
            pos = min(pos, len(data) - 1)
            data[pos] = draw(st.sampled_from(_NASTY) if kind == "flip-syntax" else st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[pos:]
        else:  # header-line surgery on the head
            end = data.find(b"\r\n\r\n")
            end = len(data) if end < 0 else end
            lines = bytes(data[:end]).split(b"\r\n")
            if len(lines) < 2:
                continue
            i = rnd.randint(1, len(lines) - 1)
            if kind == "duplicate":
                lines.insert(i, lines[rnd.randint(1, len(lines) - 1)])
            elif kind == "remove":
                del lines[i]
            elif kind == "value":
                name = lines[i].split(b":", 1)[0]
                alphabet = st.sampled_from([chr(c) for c in _NASTY]) | st.characters(codec="utf-8")
                lines[i] = name + b": " + draw(st.text(alphabet=alphabet, max_size=24)).encode()
            elif kind == "fold":
                lines[i] = lines[i].replace(b" ", b"\r\n\t", 1)
            else:
                lines[i] = b" " * draw(st.integers(0, 2)) + lines[i].replace(b":", b" : ", 1) + b" "
            data[:end] = b"\r\n".join(lines)
    return bytes(data)


def _exercise(m: Request | Response) -> None:
    """Every typed view of a parsed message must work: parse_message validated them all."""
    assert m.vias
    assert m.top_via == m.vias[0]
    assert m.call_id
    assert m.cseq[0] >= 0
    _ = (m.from_, m.to, m.contacts, m.routes, m.record_route, m.max_forwards, m.content_type, m.supported)
    if isinstance(m, Request):
        assert m.cseq[1] == m.method


@settings(
    max_examples=10_000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(mutated())
def test_mutants_parse_and_round_trip_or_raise_sip_parse_error(data: bytes) -> None:
    msg, status = attempt(parse_message, data)
    if msg is None:
        assert status is not None
        assert 400 <= status <= 599
        event(f"refused {status}")
    else:
        event("parsed")
        _exercise(msg)
        rendered = bytes(msg)
        again = parse_message(rendered)
        assert again == msg
        assert bytes(again) == rendered
    framer = StreamFramer()
    frames, status = attempt(lambda d: framer.feed(d) + framer.feed(b"\r\n"), data)
    assert status in (None, 400, 413)
    for frame in frames or []:
        streamed, status = attempt(lambda f: parse_message(f, stream=True), frame)
        assert status is None or 400 <= status <= 599
        if streamed is not None:
            assert parse_message(bytes(streamed), stream=True) == streamed


def attempt(call: Callable[[bytes], T], data: bytes) -> tuple[T | None, int | None]:
    """(result, None) or (None, status of the SipParseError); any other exception escapes and fails the test."""
    try:
        return call(data), None
    except SipParseError as exc:
        return None, exc.status
