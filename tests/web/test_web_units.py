"""Pure pieces: password and device-token hashing, the session cookie codec, the login throttle, status lines."""

from __future__ import annotations

import hashlib

import pytest
from argon2 import PasswordHasher

from comms.db.types import IncidentState, LegStatus
from comms.security import (
    check_password_or_dummy,
    hash_device_token,
    hash_password,
    new_device_token,
    password_needs_rehash,
    verify_device_token,
    verify_password,
)
from comms.web.auth import LoginThrottle, SessionCodec, SessionRevocations, ThrottlePolicy
from comms.web.status import LegView, doctor, status_line

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)

# ------------------------------------------------------------------------------------------------- security


def test_default_password_hash_is_argon2id_and_verifies() -> None:
    stored = hash_password("s3cret pass")  # the production parameters, once
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert verify_password(stored, "s3cret pass")
    assert not verify_password(stored, "s3cret pasS")
    assert not password_needs_rehash(stored)
    assert password_needs_rehash(hash_password("x", hasher=CHEAP))


def test_verify_password_survives_garbage_hashes() -> None:
    assert not verify_password("not-a-hash", "x", hasher=CHEAP)
    assert not verify_password("$argon2id$v=19$m=8,t=1,p=1$AAAA$BBBB", "x", hasher=CHEAP)
    assert password_needs_rehash("plaintext")


def test_empty_password_is_refused() -> None:
    with pytest.raises(ValueError, match="empty password"):
        hash_password("")


def test_unknown_user_check_spends_a_hash_and_fails() -> None:
    stored = hash_password("pw", hasher=CHEAP)
    assert check_password_or_dummy(stored, "pw", hasher=CHEAP)
    assert not check_password_or_dummy(stored, "nope", hasher=CHEAP)
    assert not check_password_or_dummy(None, "pw", hasher=CHEAP)


def test_device_tokens() -> None:
    token = new_device_token()
    assert len(token) == 43
    assert token != new_device_token()
    stored = hash_device_token(token)
    assert stored == hashlib.sha256(token.encode()).hexdigest()
    assert verify_device_token(token, stored)
    assert verify_device_token(token, stored.upper())
    assert not verify_device_token(token + "x", stored)
    assert not verify_device_token("", stored)


# ---------------------------------------------------------------------------------------------- session codec

SECRET = b"k" * 32


def test_session_cookie_round_trip_and_expiry() -> None:
    codec = SessionCodec(SECRET, lifetime_s=60)
    value, sid, expires = codec.issue("person-1", "$argon2id$hash-a", now_unix=1000)
    assert expires == 1060
    parsed = codec.parse(value)
    assert parsed is not None
    assert (parsed.session_id, parsed.person_id, parsed.expires_at) == (sid, "person-1", 1060)
    assert codec.verify(parsed, "$argon2id$hash-a", now_unix=1059)
    assert not codec.verify(parsed, "$argon2id$hash-a", now_unix=1060)  # expired
    assert not codec.verify(parsed, "$argon2id$hash-b", now_unix=1001)  # password changed
    other = SessionCodec(b"z" * 32, lifetime_s=60)
    assert not other.verify(parsed, "$argon2id$hash-a", now_unix=1001)  # another server's secret


@pytest.mark.parametrize(
    "value", ["", "v1", "v1.a.b.c", "v1.a.b.notdigits.mac", "v0.a.b.1.mac", "v1..b.1.mac"]
)
def test_malformed_cookies_do_not_parse(value: str) -> None:
    assert SessionCodec(SECRET, 60).parse(value) is None


def test_codec_refuses_weak_settings() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        SessionCodec(b"short", 60)
    with pytest.raises(ValueError, match="positive"):
        SessionCodec(SECRET, 0)


def test_revocations_forget_expired_sessions() -> None:
    rev = SessionRevocations()
    rev.revoke("s1", expires_at=100, now_unix=50)
    assert rev.is_revoked("s1")
    rev.revoke("s2", expires_at=300, now_unix=150)  # prunes s1, whose cookie is dead anyway
    assert not rev.is_revoked("s1")
    assert rev.is_revoked("s2")


# ---------------------------------------------------------------------------------------------- login throttle


def test_throttle_sliding_window() -> None:
    t = LoginThrottle(ThrottlePolicy(window_s=100, max_failures_per_username=3, max_failures_per_address=10))
    for now in (0.0, 10.0, 20.0):
        assert t.retry_after("Ada", "1.2.3.4", now) is None
        t.failed("Ada", "1.2.3.4", now)
    assert t.retry_after("ada", "9.9.9.9", 30.0) == pytest.approx(70.0)  # username is case-insensitive
    assert t.retry_after("bob", "1.2.3.4", 30.0) is None
    assert t.retry_after("ada", "1.2.3.4", 100.0) is None  # the first failure left the window
    t.failed("ada", "1.2.3.4", 100.0)
    assert t.retry_after("ada", "1.2.3.4", 101.0) == pytest.approx(9.0)
    t.succeeded("ada", "1.2.3.4")
    assert t.retry_after("ada", "1.2.3.4", 101.0) is None


def test_throttle_per_address_and_bounded_memory() -> None:
    t = LoginThrottle(
        ThrottlePolicy(window_s=100, max_failures_per_username=5, max_failures_per_address=2, max_keys=10)
    )
    t.failed("a", "10.0.0.1", 0.0)
    t.failed("b", "10.0.0.1", 1.0)
    assert t.retry_after("c", "10.0.0.1", 2.0) == pytest.approx(98.0)
    for i in range(50):
        t.failed(f"user{i}", f"10.1.0.{i}", 3.0)
    assert len(list(t.keys())) == 10


# ------------------------------------------------------------------------------------------------ status line


def _line(
    state: IncidentState,
    legs: list[LegView],
    tier: int | None = 0,
    *,
    by: str | None = None,
    after: float | None = None,
) -> tuple[str, str]:
    line = status_line(state, legs=legs, current_tier=tier, accepted_by=by, seconds_to_accept=after)
    return line.text, line.tone


def test_status_lines() -> None:
    ringing = LegView(0, "Ada Diaz", LegStatus.RINGING)
    assert _line(IncidentState.RAISED, [], None) == ("Alert raised — finding who is on call…", "calling")
    assert _line(IncidentState.PAGING, [ringing]) == ("Calling Dr Ada Diaz… (tier 1)", "calling")
    two = [ringing, LegView(0, "Dr. Bo Li", LegStatus.TRYING), LegView(0, "Cy Ng", LegStatus.CREATED)]
    assert _line(IncidentState.PAGING, two)[0] == "Calling Dr Ada Diaz, Dr. Bo Li and Dr Cy Ng… (tier 1)"
    moved_on = [LegView(0, "Ada Diaz", LegStatus.CANCELLED), LegView(1, "Bob", LegStatus.DIALING)]
    assert _line(IncidentState.PAGING, moved_on, 1)[0] == "Calling Dr Bob… (tier 2)"
    assert _line(IncidentState.PAGING, [LegView(0, "Ada", LegStatus.BUSY)], 0)[0] == "Paging… (tier 1)"
    accepted = _line(IncidentState.ACCEPTED, [ringing], by="Ada Diaz", after=7.4)
    assert accepted == ("Accepted by Dr Ada Diaz after 7.4 s", "accepted")
    assert (
        _line(IncidentState.CONNECTED, [], by="Dr Ada", after=12.04)[0] == "Accepted by Dr Ada after 12.0 s"
    )
    assert _line(IncidentState.EXHAUSTED, []) == ("Nobody accepted — activate the code team now", "exhausted")
    assert _line(IncidentState.CANCELLED, []) == ("Cancelled", "closed")
    assert _line(IncidentState.RESOLVED, []) == ("Resolved", "closed")
    assert doctor(" dr. Who ") == "dr. Who"
