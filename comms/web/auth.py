"""Who is calling: staff sessions, room device tokens, route access declarations and login throttling.

Theory of operation
-------------------
* **Every route declares an** :class:`Access` (staff roles, ``device``, or ``public``) in the route table of
  :mod:`comms.web.app`; the access middleware refuses any matched route that has no declaration (fail
  closed), and a test walks the router so a route without one never ships.
* **Staff sessions are table-free signed cookies.** The cookie is
  ``v1.<session id>.<person id>.<expires>.<mac>`` where
  ``mac = HMAC-SHA256(secret, "v1|sid|pid|expires|" + sha256(person's password hash))``. Binding the MAC to
  the current password hash means a password change ends every session of that person; the person row is
  loaded on every request, so a removed or deactivated person (or one whose roles changed) is seen at once.
  Logout adds the session id to an in-memory revocation list kept until the cookie's own expiry (lost on
  restart: the cookie then lives until it expires, at most ``session_lifetime``).
* **Device tokens** come as ``Authorization: Bearer <token>``; the room is found by ``sha256(token)`` and the
  stored hash compared with :func:`hmac.compare_digest`.
* **Login throttling** (:class:`LoginThrottle`) is sans-I/O: monotonic ``now`` in, ``retry_after`` out.
  Failures are counted per username and per client address in a sliding window; over the limit, logins are
  refused with 429 before any password is checked.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from comms.db.types import Role

__all__ = [
    "ALL_STAFF",
    "Access",
    "DevicePrincipal",
    "LoginThrottle",
    "Principal",
    "SessionCodec",
    "SessionRevocations",
    "StaffPrincipal",
    "ThrottlePolicy",
    "UnverifiedSession",
]

ALL_STAFF: frozenset[Role] = frozenset(Role)


@dataclass(frozen=True)
class Access:
    """Who may call a route: :meth:`staff`, :meth:`device_only`, :meth:`staff_or_device` or :meth:`public`."""

    roles: frozenset[Role] = frozenset()
    device: bool = False
    is_public: bool = False
    #: an HTML page: an anonymous browser is sent to /login instead of getting a 401
    page: bool = False

    def __post_init__(self) -> None:
        if self.is_public and (self.roles or self.device):
            raise ValueError(f"a public route cannot also list roles or device access: {self!r}")
        if not self.is_public and not self.roles and not self.device:
            raise ValueError("an Access must allow some staff role, a device, or be public: got none of them")

    @classmethod
    def staff(cls, *roles: Role, page: bool = False) -> Access:
        """Staff sessions with one of ``roles`` (none given: any staff role)."""
        return cls(roles=frozenset(roles) or ALL_STAFF, page=page)

    @classmethod
    def device_only(cls) -> Access:
        return cls(device=True)

    @classmethod
    def staff_or_device(cls, *roles: Role) -> Access:
        return cls(roles=frozenset(roles) or ALL_STAFF, device=True)

    @classmethod
    def public(cls, *, page: bool = False) -> Access:
        return cls(is_public=True, page=page)

    def describe(self) -> str:
        if self.is_public:
            return "public"
        parts = []
        if self.roles:
            parts.append("a staff session with role " + " or ".join(sorted(r.value for r in self.roles)))
        if self.device:
            parts.append("a room device token")
        return " or ".join(parts)


@dataclass(frozen=True)
class StaffPrincipal:
    person_id: str
    username: str
    display_name: str
    roles: frozenset[Role]
    session_id: str
    expires_at: int


@dataclass(frozen=True)
class DevicePrincipal:
    room_id: str
    room_code: str
    site_id: str


Principal = StaffPrincipal | DevicePrincipal


# ----------------------------------------------------------------------------------------------------------
# Session cookies


@dataclass(frozen=True)
class UnverifiedSession:
    """A cookie that parsed; its MAC is checked only once the person's password hash is known."""

    session_id: str
    person_id: str
    expires_at: int
    mac: bytes


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionCodec:
    """Issues and checks ``v1`` session cookies (see the module docstring)."""

    VERSION = "v1"

    def __init__(self, secret: bytes, lifetime_s: int) -> None:
        if len(secret) < 32:
            raise ValueError(f"session secret too short: expected at least 32 bytes, got {len(secret)}")
        if lifetime_s <= 0:
            raise ValueError(f"session lifetime must be positive seconds, got {lifetime_s}")
        self._secret = secret
        self.lifetime_s = lifetime_s

    def _mac(self, session_id: str, person_id: str, expires_at: int, password_hash: str) -> bytes:
        credential = hashlib.sha256(password_hash.encode("utf-8")).hexdigest()
        msg = f"{self.VERSION}|{session_id}|{person_id}|{expires_at}|{credential}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def issue(self, person_id: str, password_hash: str, now_unix: int) -> tuple[str, str, int]:
        """Return ``(cookie value, session id, expires_at)`` for a fresh session starting at ``now_unix``."""
        session_id = secrets.token_urlsafe(16)
        expires_at = now_unix + self.lifetime_s
        mac = self._mac(session_id, person_id, expires_at, password_hash)
        return f"{self.VERSION}.{session_id}.{person_id}.{expires_at}.{_b64(mac)}", session_id, expires_at

    def parse(self, value: str) -> UnverifiedSession | None:
        """Split a cookie value; None when it is not a well-formed ``v1`` cookie."""
        parts = value.split(".")
        if len(parts) != 5 or parts[0] != self.VERSION:
            return None
        _, session_id, person_id, expires, mac_text = parts
        if not (session_id and person_id and expires.isdigit() and len(expires) <= 12):
            return None
        try:
            mac = _unb64(mac_text)
        except ValueError:
            return None
        return UnverifiedSession(session_id, person_id, int(expires), mac)

    def verify(self, session: UnverifiedSession, password_hash: str, now_unix: int) -> bool:
        """True when the MAC matches the person's current password hash and the session has not expired."""
        expected = self._mac(session.session_id, session.person_id, session.expires_at, password_hash)
        return hmac.compare_digest(expected, session.mac) and now_unix < session.expires_at


class SessionRevocations:
    """Session ids logged out before their expiry; each is forgotten once its cookie would have expired."""

    def __init__(self) -> None:
        self._until: dict[str, int] = {}

    def revoke(self, session_id: str, expires_at: int, now_unix: int) -> None:
        self._prune(now_unix)
        self._until[session_id] = expires_at

    def is_revoked(self, session_id: str) -> bool:
        return session_id in self._until

    def _prune(self, now_unix: int) -> None:
        for sid in [sid for sid, until in self._until.items() if until <= now_unix]:
            del self._until[sid]


# ----------------------------------------------------------------------------------------------------------
# Login throttling


@dataclass(frozen=True)
class ThrottlePolicy:
    window_s: float = 900.0
    max_failures_per_username: int = 5
    max_failures_per_address: int = 20
    #: bound on remembered keys so a flood of random usernames cannot grow memory without limit
    max_keys: int = 50_000


@dataclass
class LoginThrottle:
    """Sliding-window failure counts per username and per client address (sans-I/O: monotonic ``now``)."""

    policy: ThrottlePolicy = field(default_factory=ThrottlePolicy)
    _failures: collections.OrderedDict[str, collections.deque[float]] = field(
        default_factory=collections.OrderedDict
    )

    @staticmethod
    def _keys(username: str, address: str) -> tuple[str, str]:
        return "u:" + username.strip().lower(), "a:" + address

    def _recent(self, key: str, now: float) -> collections.deque[float]:
        times = self._failures.get(key)
        if times is None:
            return collections.deque()
        while times and times[0] <= now - self.policy.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, username: str, address: str, now: float) -> float | None:
        """Seconds until ``username`` may try again from ``address``; None when allowed now."""
        user_key, addr_key = self._keys(username, address)
        waits = []
        for key, limit in (
            (user_key, self.policy.max_failures_per_username),
            (addr_key, self.policy.max_failures_per_address),
        ):
            times = self._recent(key, now)
            if len(times) >= limit:
                # allowed again when the failure that pushed it over the limit leaves the window
                waits.append(times[len(times) - limit] + self.policy.window_s - now)
        return max(waits) if waits else None

    def failed(self, username: str, address: str, now: float) -> None:
        for key in self._keys(username, address):
            times = self._recent(key, now)
            if key not in self._failures:
                self._failures[key] = times
            self._failures.move_to_end(key)
            times.append(now)
        while len(self._failures) > self.policy.max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, username: str, address: str) -> None:
        """A correct password clears that username's failures (the address keeps its count)."""
        self._failures.pop(self._keys(username, address)[0], None)

    def keys(self) -> Iterable[str]:
        return list(self._failures)
