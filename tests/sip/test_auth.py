"""Digest authentication: RFC 7616/2617 vectors, the UAC answer, and DigestServer with throttling."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import pytest

from sip.auth import (
    AuthError,
    AuthStatus,
    Credentials,
    DigestChallenge,
    DigestCredentials,
    DigestServer,
    answer_challenge,
    credentials_for,
    digest_response,
    parse_auth_header,
)
from sip.message import Request, Response, parse_message

# RFC 7616 §3.9.1
RFC_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC_REALM = "http-auth@example.org"
MUFASA = Credentials("Mufasa", "Circle of Life")

REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnashds7\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@example.com>\r\n"
    b"From: Bob <sip:bob@example.com>;tag=456248\r\n"
    b"Call-ID: 843817637684230@998sdasdh09\r\n"
    b"CSeq: 1826 REGISTER\r\n"
    b"Contact: <sip:bob@192.0.2.10>\r\n"
    b"Content-Length: 0\r\n\r\n"
)
SECRET = b"0123456789abcdef0123456789abcdef"
USERS = {"bob": "zanzibar", "Mufasa": "Circle of Life"}


def register() -> Request:
    msg = parse_message(REGISTER)
    assert isinstance(msg, Request)
    return msg


def counter_bytes() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def make_server(**kwargs: object) -> DigestServer:
    return DigestServer("example.com", USERS.get, secret=SECRET, random_bytes=counter_bytes(), **kwargs)  # type: ignore[arg-type]


def answered(
    server: DigestServer, request: Request, creds: Credentials, now: float, *, nc: int = 1
) -> Request:
    first = server.check(request, now, "192.0.2.10")
    assert first.status is AuthStatus.CHALLENGE
    assert first.response is not None
    return answer_challenge(request, first.response, creds, nc=nc, cnonce="0a4f113b")


# --- vectors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_worked_example(algorithm: str, expected: str) -> None:
    challenge = DigestChallenge.parse(
        f'Digest realm="{RFC_REALM}",\tqop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC_NONCE}", opaque="{RFC_OPAQUE}"'
    )
    assert challenge.qop == ("auth", "auth-int")
    assert challenge.algorithm == algorithm
    creds = credentials_for(challenge, MUFASA, method="GET", uri="/dir/index.html", nc=1, cnonce=RFC_CNONCE)
    assert creds.response == expected
    assert (creds.qop, creds.nc, creds.cnonce, creds.opaque) == ("auth", "00000001", RFC_CNONCE, RFC_OPAQUE)
    assert DigestCredentials.parse(str(creds)) == creds
    assert f'response="{expected}"' in str(creds)
    assert "qop=auth, nc=00000001" in str(creds)


def test_rfc2617_example_and_legacy_form() -> None:
    common = partial(
        digest_response,
        username="Mufasa",
        password="Circle Of Life",
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        method="GET",
        uri="/dir/index.html",
    )
    rfc2617 = common(qop="auth", nc="00000001", cnonce="0a4f113b")
    assert rfc2617 == "6629fae49393a05397450978507c4ef1"

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5("Mufasa:testrealm@host.com:Circle Of Life")
    ha2 = md5("GET:/dir/index.html")
    assert common() == md5(f"{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:{ha2}")
    legacy = credentials_for(
        DigestChallenge("testrealm@host.com", "dcd98b7102dd2f0e8b11d0f600bfb0c093"),
        Credentials("Mufasa", "Circle Of Life"),
        method="GET",
        uri="/dir/index.html",
        nc=1,
        cnonce="ignored",
    )
    assert legacy.qop is None
    assert legacy.nc is None
    assert legacy.cnonce is None
    assert "qop" not in str(legacy)
    assert "nc=" not in str(legacy)


def test_sess_and_auth_int_variants() -> None:
    common = partial(
        digest_response, username="u", password="p", realm="r", nonce="n", method="INVITE", uri="sip:a@b"
    )
    sess = common(algorithm="SHA-256-sess", qop="auth", nc="00000001", cnonce="c")
    plain = common(algorithm="SHA-256", qop="auth", nc="00000001", cnonce="c")
    assert sess != plain
    assert len(sess) == 64
    with_body = common(qop="auth-int", nc="00000001", cnonce="c", body=b"v=0")
    assert with_body != common(qop="auth-int", nc="00000001", cnonce="c", body=b"v=1")
    with pytest.raises(AuthError):
        common(algorithm="SHA-512-256")
    with pytest.raises(AuthError):
        common(qop="auth")  # no nc/cnonce


def test_auth_header_syntax() -> None:
    scheme, params = parse_auth_header('Digest a=1, B="x,\\"y", c = "" ')
    assert (scheme, params) == ("Digest", {"a": "1", "b": 'x,"y', "c": ""})
    for bad in ("", "Digest a", "Digest a=1 b=2", 'Digest a="x', "Digest a=1, a=2"):
        with pytest.raises(AuthError):
            parse_auth_header(bad)
    with pytest.raises(AuthError):
        DigestChallenge.parse('Basic realm="x"')
    with pytest.raises(AuthError):
        DigestChallenge.parse('Digest realm="x"')
    with pytest.raises(AuthError):
        DigestCredentials.parse('Digest username="u", realm="r", nonce="n", uri="u", response="r", qop=auth')
    assert "secret" not in repr(Credentials("u", "secret"))


# --- the UAC answer --------------------------------------------------------------------------------


def challenge_response(status: int, *values: str) -> Response:
    header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    text = (
        f"SIP/2.0 {status} Challenge\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnashds7\r\n"
        "To: Bob <sip:bob@example.com>;tag=x\r\nFrom: Bob <sip:bob@example.com>;tag=456248\r\n"
        "Call-ID: 843817637684230@998sdasdh09\r\nCSeq: 1826 REGISTER\r\n"
        + "".join(f"{header}: {v}\r\n" for v in values)
        + "\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Response)
    return msg


def test_answer_prefers_sha256_and_keeps_the_request() -> None:
    resp = challenge_response(
        401,
        'Digest realm="example.com", nonce="n1", algorithm=MD5, qop="auth"',
        'Digest realm="example.com", nonce="n1", algorithm=SHA-256, qop="auth"',
        'Newauth realm="example.com"',
    )
    req = register()
    out = answer_challenge(req, resp, Credentials("bob", "zanzibar"), nc=3, cnonce="c")
    (value,) = out.headers.get_all("Authorization")
    creds = DigestCredentials.parse(value)
    assert (creds.algorithm, creds.nc, creds.uri, creds.username) == (
        "SHA-256",
        "00000003",
        "sip:example.com",
        "bob",
    )
    assert out.cseq == req.cseq
    assert out.headers.get_all("Via") == req.headers.get_all("Via")
    assert "Authorization" not in req.headers  # the original is untouched
    again = answer_challenge(out, resp, Credentials("bob", "zanzibar"), nc=4, cnonce="c")
    assert len(again.headers.get_all("Authorization")) == 1  # replaced for the same realm


def test_answer_407_uses_proxy_authorization_and_realm_filter() -> None:
    resp = challenge_response(
        407,
        'Digest realm="a.example", nonce="1", qop="auth"',
        'Digest realm="b.example", nonce="2", qop="auth"',
    )
    out = answer_challenge(register(), resp, Credentials("bob", "pw", realm="b.example"), cnonce="c")
    assert DigestCredentials.parse(out.headers.get("Proxy-Authorization") or "").realm == "b.example"
    with pytest.raises(AuthError, match="no usable challenge"):
        answer_challenge(register(), resp, Credentials("bob", "pw", realm="c.example"), cnonce="c")
    with pytest.raises(AuthError):
        answer_challenge(
            register(), challenge_response(401, 'Digest realm="r", nonce="n", qop="x"'), MUFASA, cnonce="c"
        )
    with pytest.raises(AuthError):
        answer_challenge(register(), replace(resp, status=403), MUFASA, cnonce="c")
    with pytest.raises(AuthError):
        answer_challenge(register(), resp, Credentials("bob", "pw"), nc=0, cnonce="c")


# --- DigestServer ----------------------------------------------------------------------------------


def test_challenge_shape() -> None:
    server = make_server()
    result = server.check(register(), 10.0, "192.0.2.10")
    assert result.status is AuthStatus.CHALLENGE
    assert result.event is None
    assert not result.ok
    resp = result.response
    assert resp is not None
    assert resp.status == 401
    challenges = [DigestChallenge.parse(v) for v in resp.headers.get_all("WWW-Authenticate")]
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    assert all(c.qop == ("auth",) and c.realm == "example.com" and not c.stale for c in challenges)
    assert resp.to.tag is not None
    assert resp.from_.tag == "456248"
    assert resp.cseq == (1826, "REGISTER")
    assert resp.headers.get_all("Via") == register().headers.get_all("Via")


@pytest.mark.parametrize("algorithms", [("SHA-256", "MD5"), ("MD5",), ("SHA-256-SESS",), ("MD5-SESS",)])
def test_right_credentials_pass(algorithms: tuple[str, ...]) -> None:
    server = make_server(algorithms=algorithms)
    req = answered(server, register(), Credentials("bob", "zanzibar"), 10.0)
    result = server.check(req, 11.0, "192.0.2.10")
    assert result.ok
    assert result.username == "bob"
    assert result.response is None
    assert result.event is None


def test_auth_int_and_proxy_mode() -> None:
    server = make_server(proxy=True)
    req = register()
    req.body = b"v=0\r\n"
    req.headers.set("Content-Type", "application/sdp")
    first = server.check(req, 1.0, "s")
    assert first.response is not None
    assert first.response.status == 407
    value = first.response.headers.get("Proxy-Authenticate") or ""
    assert value.startswith("Digest ")
    challenge = replace(DigestChallenge.parse(value), qop=("auth-int",))
    creds = credentials_for(
        challenge, Credentials("bob", "zanzibar"), method="REGISTER", uri="sip:example.com", nc=1, cnonce="c",
        body=req.body,
    )  # fmt: skip
    req.headers.add("Proxy-Authorization", str(creds))
    assert server.check(req, 2.0, "s").ok


@pytest.mark.parametrize(
    ("mutate", "kind"),
    [
        (lambda c: replace(c, response="0" * 64), "bad_response"),
        (lambda c: replace(c, username="mallory"), "unknown_user"),
        (
            lambda c: replace(c, nonce=c.nonce[:-2] + ("AA" if not c.nonce.endswith("AA") else "BB")),
            "bad_nonce",
        ),
        (lambda c: replace(c, nonce="forged"), "bad_nonce"),
        (lambda c: replace(c, algorithm="SHA-512-256"), "bad_algorithm"),
        (lambda c: replace(c, qop=None, nc=None, cnonce=None), "malformed"),
        (lambda c: replace(c, userhash=True), "malformed"),
    ],
)
def test_failures_challenge_again_with_a_security_event(
    mutate: Callable[[DigestCredentials], DigestCredentials], kind: str
) -> None:
    server = make_server()
    req = answered(server, register(), Credentials("bob", "zanzibar"), 10.0)
    creds = mutate(DigestCredentials.parse(req.headers.get("Authorization") or ""))
    req.headers.set("Authorization", str(creds))
    result = server.check(req, 11.0, "192.0.2.10")
    assert result.status is AuthStatus.CHALLENGE
    assert result.response is not None
    assert result.response.status == 401
    assert result.event is not None
    assert (result.event.kind, result.event.source, result.event.failures) == (kind, "192.0.2.10", 1)
    assert result.event.realm == "example.com"
    assert result.event.method == "REGISTER"
    assert result.event.at == 11.0


def test_wrong_password_and_garbage_digest() -> None:
    server = make_server()
    req = answered(server, register(), Credentials("bob", "wrong"), 10.0)
    assert server.check(req, 11.0, "x").event.kind == "bad_response"  # type: ignore[union-attr]
    req.headers.set("Authorization", 'Digest realm="example.com", username=')
    assert server.check(req, 12.0, "x").event.kind == "malformed"  # type: ignore[union-attr]


def test_nonce_of_another_server_is_refused() -> None:
    other = DigestServer("example.com", USERS.get, secret=b"another-secret-of-32-bytes......")
    req = answered(other, register(), Credentials("bob", "zanzibar"), 10.0)
    assert other.check(req, 11.0, "s").ok
    assert make_server().check(req, 11.0, "s").event.kind == "bad_nonce"  # type: ignore[union-attr]


def test_uri_mismatch_is_rejected_with_400() -> None:
    server = make_server()
    req = answered(server, register(), Credentials("bob", "zanzibar"), 10.0)
    moved = replace(req, uri=replace(req.uri, host="elsewhere.example.com"))
    result = server.check(moved, 11.0, "s")
    assert result.status is AuthStatus.REJECTED
    assert result.response is not None
    assert result.response.status == 400
    assert result.event is not None
    assert result.event.kind == "uri_mismatch"


def test_expired_nonce_gets_stale_challenge_without_event() -> None:
    server = make_server(nonce_ttl=30.0)
    req = answered(server, register(), Credentials("bob", "zanzibar"), 10.0)
    result = server.check(req, 41.0, "s")
    assert result.status is AuthStatus.CHALLENGE
    assert result.event is None
    assert result.response is not None
    stale = DigestChallenge.parse(result.response.headers.get("WWW-Authenticate") or "")
    assert stale.stale
    fresh = answer_challenge(req, result.response, Credentials("bob", "zanzibar"), cnonce="d")
    assert server.check(fresh, 42.0, "s").ok


def test_nonce_count_replay_is_refused() -> None:
    server = make_server()
    req = answered(server, register(), Credentials("bob", "zanzibar"), 10.0, nc=1)
    assert server.check(req, 11.0, "s").ok
    replayed = server.check(req, 12.0, "s")
    assert replayed.status is AuthStatus.CHALLENGE
    assert replayed.event is not None
    assert replayed.event.kind == "replay"
    creds = DigestCredentials.parse(req.headers.get("Authorization") or "")
    challenge = DigestChallenge("example.com", creds.nonce, creds.algorithm, ("auth",))
    nxt = credentials_for(
        challenge, Credentials("bob", "zanzibar"), method="REGISTER", uri=creds.uri, nc=2, cnonce="c"
    )
    req.headers.set("Authorization", str(nxt))
    assert server.check(req, 13.0, "s").ok


def test_throttling_locks_a_source_out_and_recovers() -> None:
    server = make_server(max_failures=5, failure_window=60.0, lockout=300.0)
    bad = answered(server, register(), Credentials("bob", "guess"), 0.0)
    events = [server.check(bad, float(t), "203.0.113.9").event for t in range(1, 6)]
    assert [e.failures for e in events if e] == [1, 2, 3, 4, 5]
    assert [e.throttled_until for e in events if e] == [None, None, None, None, 305.0]
    assert server.is_throttled("203.0.113.9", 6.0)
    assert not server.is_throttled("198.51.100.1", 6.0)

    good = answered(server, register(), Credentials("bob", "zanzibar"), 6.0)
    refused = server.check(good, 7.0, "203.0.113.9")
    assert refused.status is AuthStatus.THROTTLED
    assert refused.response is not None
    assert refused.response.status == 403
    assert refused.event is not None
    assert refused.event.kind == "throttled"
    assert refused.event.throttled_until == 305.0
    assert server.check(good, 7.0, "198.51.100.1").ok  # other sources are not affected

    later = answered(server, register(), Credentials("bob", "zanzibar"), 306.0)
    assert not server.is_throttled("203.0.113.9", 306.0)
    assert server.check(later, 307.0, "203.0.113.9").ok


def test_failures_outside_the_window_or_before_a_success_do_not_add_up() -> None:
    server = make_server(max_failures=3, failure_window=60.0)
    bad = answered(server, register(), Credentials("bob", "guess"), 0.0)
    assert server.check(bad, 1.0, "s").event.failures == 1  # type: ignore[union-attr]
    assert server.check(bad, 2.0, "s").event.failures == 2  # type: ignore[union-attr]
    assert server.check(bad, 70.0, "s").event.failures == 1  # type: ignore[union-attr]
    good = answered(server, register(), Credentials("bob", "zanzibar"), 70.0)
    assert server.check(good, 71.0, "s").ok
    assert server.check(bad, 72.0, "s").event.failures == 1  # type: ignore[union-attr]
    assert not server.is_throttled("s", 72.0)


def test_tracking_tables_stay_bounded() -> None:
    server = make_server(max_tracked=50)
    bad = answered(server, register(), Credentials("bob", "guess"), 0.0)
    for i in range(500):
        server.check(bad, 100.0 + i, f"198.51.100.{i}")
    assert server.tracked_sources <= 51


def test_constructor_validates_settings() -> None:
    with pytest.raises(ValueError, match="too short"):
        DigestServer("r", USERS.get, secret=b"short")
    with pytest.raises(ValueError, match="unsupported"):
        DigestServer("r", USERS.get, secret=SECRET, algorithms=("SHA-1",))
    with pytest.raises(ValueError, match="positive"):
        DigestServer("r", USERS.get, secret=SECRET, max_failures=0)
