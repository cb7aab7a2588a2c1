"""Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 2617 compatibility, RFC 8760 algorithms).

Theory of operation
-------------------
**Client.** A 401 carries ``WWW-Authenticate`` challenges, a 407 ``Proxy-Authenticate`` ones.
:func:`answer_challenge` picks the strongest Digest challenge it can answer (SHA-256 before MD5, a ``-sess``
variant after its plain one; the realm of the :class:`Credentials` if it names one), computes the response
(qop ``auth`` or ``auth-int`` with the caller's ``nc``/``cnonce``, or the legacy RFC 2069 form when the
challenge offers no qop) and returns a copy of the request with ``Authorization``/``Proxy-Authorization``
added (an earlier one for the same realm is replaced). The caller bumps CSeq and sends it as a new
transaction. The arithmetic is :func:`digest_response`, checked against RFC 7616 §3.9.1.

**Server.** :class:`DigestServer` is stateless for nonces: a nonce is ``base64url(issued-at ms | 8 random
octets | HMAC-SHA256(secret, realm | issued-at | random)[:16])``, so any process holding the secret can verify
it and nobody else can mint one. :meth:`DigestServer.check` takes a request, ``now`` (the adapter's monotonic
clock) and the source address and returns an :class:`AuthResult`:

* ``OK`` with the username when the credentials are right and the nonce is fresh and not replayed;
* ``CHALLENGE`` with the 401/407 to send: no credentials for our realm yet (no event), a nonce older than
  ``nonce_ttl`` with an otherwise right answer (``stale=true``, no event), or a failure (event);
* ``REJECTED`` (400) when the credentials name another URI than the Request-URI (event);
* ``THROTTLED`` (403) while the source is locked out (event).

Each failure (wrong response, unknown user, forged or foreign nonce, replayed nc, malformed credentials,
unsupported algorithm) is a :class:`SecurityEvent` value in the result; the adapter logs/stores it. Failures
are counted per source in a sliding ``failure_window``: the ``max_failures``-th one locks the source out for
``lockout`` seconds. A right answer clears the count. Replay protection keeps the highest ``nc`` seen per
nonce for ``nonce_ttl`` (bounded memory); the throttling table is bounded too. Pure: no sockets, no clock
reads, randomness injectable.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import itertools
import re
import secrets
import struct
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from sip.errors import SipError, SipParseError
from sip.message import URI, Headers, Request, Response, quote_string

__all__ = [
    "ALGORITHMS",
    "AuthError",
    "AuthResult",
    "AuthStatus",
    "Credentials",
    "DigestChallenge",
    "DigestCredentials",
    "DigestServer",
    "SecurityEvent",
    "answer_challenge",
    "credentials_for",
    "digest_response",
    "parse_auth_header",
]

_HASHES: dict[str, Callable[[bytes], hashlib._Hash]] = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
# Client preference order; every entry is supported by digest_response.
ALGORITHMS: tuple[str, ...] = ("SHA-256", "SHA-256-SESS", "MD5", "MD5-SESS")

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_SCHEME_RE = re.compile(rf"[ \t]*({_TOKEN})(?:[ \t]+|$)")
_PARAM_RE = re.compile(rf'[ \t]*({_TOKEN})[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^\s,"]+)[ \t]*')
_UNESCAPE_RE = re.compile(r"\\(.)", re.S)
_NC_RE = re.compile(r"[0-9a-fA-F]{8}")


class AuthError(SipError):
    """A challenge cannot be answered (no usable Digest challenge) or an auth header is malformed."""


@dataclass(frozen=True)
class Credentials:
    """What a UAC answers challenges with; ``realm=None`` answers whichever realm challenges first."""

    username: str
    password: str
    realm: str | None = None

    def __repr__(self) -> str:  # never print the password
        return f"Credentials(username={self.username!r}, password='***', realm={self.realm!r})"


# ----------------------------------------------------------------------------------------------------
# Header syntax: ``scheme param=value, param="quoted", ...`` (RFC 3261 §25.1 challenge / credentials)


def parse_auth_header(value: str) -> tuple[str, dict[str, str]]:
    """Split a WWW-Authenticate/Authorization value into (scheme, {lowercased name: unquoted value})."""
    m = _SCHEME_RE.match(value)
    if not m:
        raise AuthError(f"cannot parse auth header {value!r}: expected '<scheme> name=value, ...'")
    scheme = m.group(1)
    params: dict[str, str] = {}
    i = m.end()
    while i < len(value):
        pm = _PARAM_RE.match(value, i)
        if not pm:
            raise AuthError(f"cannot parse auth header {value!r}: expected name=value at {value[i:]!r}")
        name, raw = pm.group(1).lower(), pm.group(2)
        if name in params:
            raise AuthError(f"cannot parse auth header {value!r}: parameter {name!r} appears twice")
        params[name] = _UNESCAPE_RE.sub(r"\1", raw[1:-1]) if raw.startswith('"') else raw
        i = pm.end()
        if i < len(value):
            if value[i] != ",":
                raise AuthError(f"cannot parse auth header {value!r}: expected ',' at {value[i:]!r}")
            i += 1
    return scheme, params


def _hash(algorithm: str, data: bytes) -> str:
    base = algorithm.upper().removesuffix("-SESS")
    try:
        return _HASHES[base](data).hexdigest()
    except KeyError:
        raise AuthError(f"unsupported digest algorithm {algorithm!r}: expected one of {ALGORITHMS}") from None


def digest_response(
    *,
    algorithm: str = "MD5",
    username: str,
    password: str,
    realm: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The ``response`` value of RFC 7616 §3.4.1 (qop auth/auth-int) or RFC 2069 (``qop=None``)."""
    alg = algorithm.upper()

    def h(text: str) -> str:
        return _hash(alg, text.encode("utf-8"))

    ha1 = h(f"{username}:{realm}:{password}")
    if alg.endswith("-SESS"):
        if cnonce is None:
            raise AuthError(f"algorithm {algorithm} needs a cnonce")
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    ha2 = h(f"{method}:{uri}:{_hash(alg, body)}") if qop == "auth-int" else h(f"{method}:{uri}")
    if qop is None:
        return h(f"{ha1}:{nonce}:{ha2}")
    if qop not in ("auth", "auth-int") or nc is None or cnonce is None:
        raise AuthError(f"qop {qop!r} needs nc and cnonce and must be auth or auth-int")
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


@dataclass(frozen=True)
class DigestChallenge:
    """One ``Digest`` challenge (RFC 7616 §3.3)."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    userhash: bool = False

    @classmethod
    def parse(cls, value: str) -> DigestChallenge:
        scheme, p = parse_auth_header(value)
        if scheme.lower() != "digest":
            raise AuthError(f"challenge scheme {scheme!r} is not Digest")
        if "realm" not in p or "nonce" not in p:
            raise AuthError(f"Digest challenge {value!r} lacks realm or nonce")
        qop = tuple(q.strip(" \t").lower() for q in p.get("qop", "").split(",") if q.strip(" \t"))
        return cls(
            realm=p["realm"],
            nonce=p["nonce"],
            algorithm=p.get("algorithm", "MD5").upper(),
            qop=qop,
            opaque=p.get("opaque"),
            stale=p.get("stale", "").lower() == "true",
            userhash=p.get("userhash", "").lower() == "true",
        )

    def __str__(self) -> str:
        parts = [f"realm={quote_string(self.realm)}", f"nonce={quote_string(self.nonce)}"]
        if self.opaque is not None:
            parts.append(f"opaque={quote_string(self.opaque)}")
        parts.append(f"algorithm={self.algorithm}")
        if self.qop:
            parts.append(f"qop={quote_string(','.join(self.qop))}")
        if self.stale:
            parts.append("stale=true")
        if self.userhash:
            parts.append("userhash=true")
        return "Digest " + ", ".join(parts)


@dataclass(frozen=True)
class DigestCredentials:
    """The value of an ``Authorization``/``Proxy-Authorization`` header with the Digest scheme."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None
    userhash: bool = False

    @classmethod
    def parse(cls, value: str) -> DigestCredentials:
        scheme, p = parse_auth_header(value)
        if scheme.lower() != "digest":
            raise AuthError(f"credentials scheme {scheme!r} is not Digest")
        missing = [k for k in ("username", "realm", "nonce", "uri", "response") if k not in p]
        if missing:
            raise AuthError(f"Digest credentials lack {missing}")
        qop = p.get("qop")
        if qop is not None and (not _NC_RE.fullmatch(p.get("nc", "")) or not p.get("cnonce")):
            raise AuthError(f"Digest credentials with qop={qop!r} need nc=<8 hex digits> and a cnonce")
        return cls(
            username=p["username"],
            realm=p["realm"],
            nonce=p["nonce"],
            uri=p["uri"],
            response=p["response"].lower(),
            algorithm=p.get("algorithm", "MD5").upper(),
            qop=qop.lower() if qop is not None else None,
            nc=p.get("nc"),
            cnonce=p.get("cnonce"),
            opaque=p.get("opaque"),
            userhash=p.get("userhash", "").lower() == "true",
        )

    def __str__(self) -> str:
        parts = [
            f"username={quote_string(self.username)}",
            f"realm={quote_string(self.realm)}",
            f"nonce={quote_string(self.nonce)}",
            f"uri={quote_string(self.uri)}",
            f"response={quote_string(self.response)}",
            f"algorithm={self.algorithm}",
        ]
        if self.qop is not None:
            parts += [f"qop={self.qop}", f"nc={self.nc}", f"cnonce={quote_string(self.cnonce or '')}"]
        if self.opaque is not None:
            parts.append(f"opaque={quote_string(self.opaque)}")
        if self.userhash:
            parts.append("userhash=true")
        return "Digest " + ", ".join(parts)


# ----------------------------------------------------------------------------------------------------
# Client


def _rank(challenge: DigestChallenge) -> int:
    return ALGORITHMS.index(challenge.algorithm) if challenge.algorithm in ALGORITHMS else len(ALGORITHMS)


def credentials_for(
    challenge: DigestChallenge,
    credentials: Credentials,
    *,
    method: str,
    uri: str,
    nc: int,
    cnonce: str,
    body: bytes = b"",
) -> DigestCredentials:
    """Answer one challenge (qop auth preferred over auth-int; legacy form when no qop is offered)."""
    if challenge.algorithm not in ALGORITHMS:
        raise AuthError(f"cannot answer algorithm {challenge.algorithm!r}: expected one of {ALGORITHMS}")
    if challenge.qop:
        qop: str | None = next((q for q in ("auth", "auth-int") if q in challenge.qop), None)
        if qop is None:
            raise AuthError(f"cannot answer qop {challenge.qop}: expected auth or auth-int")
    else:
        qop = None
    if not 0 < nc < 2**32:
        raise AuthError(f"nonce count {nc} outside 1..2**32-1")
    nc_text = f"{nc:08x}" if qop else None
    cnonce_value = cnonce if (qop or challenge.algorithm.endswith("-SESS")) else None
    username = credentials.username
    if challenge.userhash:
        username = _hash(challenge.algorithm, f"{username}:{challenge.realm}".encode())
    response = digest_response(
        algorithm=challenge.algorithm,
        username=credentials.username,
        password=credentials.password,
        realm=challenge.realm,
        nonce=challenge.nonce,
        method=method,
        uri=uri,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce_value,
        body=body,
    )
    return DigestCredentials(
        username=username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=challenge.algorithm,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce_value,
        opaque=challenge.opaque,
        userhash=challenge.userhash,
    )


def answer_challenge(
    request: Request, challenge: Response, credentials: Credentials, *, nc: int = 1, cnonce: str
) -> Request:
    """A copy of ``request`` carrying credentials for the best Digest challenge in a 401/407.

    The caller bumps CSeq and sends the copy as a new transaction. Raises :class:`AuthError` when the
    response is not a 401/407 or holds no challenge these credentials can answer.
    """
    if challenge.status == 401:
        challenge_header, answer_header = "WWW-Authenticate", "Authorization"
    elif challenge.status == 407:
        challenge_header, answer_header = "Proxy-Authenticate", "Proxy-Authorization"
    else:
        raise AuthError(f"cannot answer a {challenge.status} response: expected 401 or 407")
    usable: list[DigestChallenge] = []
    seen: list[str] = []
    for value in challenge.headers.get_all(challenge_header):
        try:
            parsed = DigestChallenge.parse(value)
        except AuthError:
            seen.append(value.split(" ", 1)[0])
            continue
        seen.append(f"Digest {parsed.algorithm} realm={parsed.realm!r}")
        if parsed.algorithm not in ALGORITHMS:
            continue
        if credentials.realm is not None and parsed.realm != credentials.realm:
            continue
        if parsed.qop and not {"auth", "auth-int"} & set(parsed.qop):
            continue
        usable.append(parsed)
    if not usable:
        raise AuthError(
            f"no usable challenge in the {challenge.status}: saw {seen or 'none'}; "
            f"expected Digest {'/'.join(ALGORITHMS)} for realm {credentials.realm or 'any'}"
        )
    best = min(usable, key=_rank)
    answer = credentials_for(
        best,
        credentials,
        method=request.method,
        uri=str(request.uri),
        nc=nc,
        cnonce=cnonce,
        body=request.body,
    )
    headers = Headers()
    for name, value in request.headers:
        if name == answer_header and _realm_of(value) == best.realm:
            continue
        headers.add(name, value)
    headers.add(answer_header, str(answer))
    return replace(request, headers=headers)


def _realm_of(value: str) -> str | None:
    try:
        return parse_auth_header(value)[1].get("realm")
    except AuthError:
        return None


# ----------------------------------------------------------------------------------------------------
# Server


class AuthStatus(enum.Enum):
    OK = "ok"
    CHALLENGE = "challenge"
    REJECTED = "rejected"
    THROTTLED = "throttled"


@dataclass(frozen=True)
class SecurityEvent:
    """One authentication failure (or a refused request from a locked-out source), for the security log.

    ``kind``: bad_response, unknown_user, bad_nonce, replay, malformed, bad_algorithm, uri_mismatch,
    throttled. ``failures`` counts this source's failures in the window (0 for ``throttled``);
    ``throttled_until`` is set when this failure started (or a refused request falls in) a lockout.
    """

    kind: str
    source: str
    realm: str
    username: str | None
    method: str
    detail: str
    failures: int
    throttled_until: float | None
    at: float


@dataclass(frozen=True)
class AuthResult:
    """The outcome of :meth:`DigestServer.check`; ``response`` is what to send unless ``status`` is OK."""

    status: AuthStatus
    username: str | None = None
    response: Response | None = None
    event: SecurityEvent | None = None

    @property
    def ok(self) -> bool:
        return self.status is AuthStatus.OK


@dataclass
class _SourceRecord:
    failures: deque[float]
    locked_until: float = float("-inf")


class DigestServer:
    """Digest authentication for our UAS (or proxy with ``proxy=True``: 407 and Proxy-Authorization).

    ``lookup(username)`` returns the user's password, or None for an unknown user. ``source`` given to
    :meth:`check` should be the peer's IP address (not its port) so that throttling cannot be dodged.
    """

    def __init__(
        self,
        realm: str,
        lookup: Callable[[str], str | None],
        *,
        secret: bytes,
        nonce_ttl: float = 300.0,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        max_failures: int = 5,
        failure_window: float = 60.0,
        lockout: float = 300.0,
        proxy: bool = False,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        max_tracked: int = 10_000,
    ) -> None:
        if len(secret) < 16:
            raise ValueError(f"DigestServer secret of {len(secret)} bytes is too short: expected at least 16")
        algs = tuple(a.upper() for a in algorithms)
        bad = [a for a in algs if a not in ALGORITHMS]
        if not algs or bad:
            raise ValueError(f"unsupported algorithms {bad or algs}: expected some of {ALGORITHMS}")
        if max_failures < 1 or failure_window <= 0 or lockout < 0 or nonce_ttl <= 0:
            raise ValueError(
                f"bad throttling settings max_failures={max_failures} failure_window={failure_window} "
                f"lockout={lockout} nonce_ttl={nonce_ttl}: expected positive values"
            )
        self.realm = realm
        self._lookup = lookup
        self._secret = secret
        self.nonce_ttl = nonce_ttl
        self.algorithms = algs
        self.max_failures = max_failures
        self.failure_window = failure_window
        self.lockout = lockout
        self.proxy = proxy
        self._random = random_bytes
        self._max_tracked = max_tracked
        self._sources: dict[str, _SourceRecord] = {}
        self._nc_seen: OrderedDict[str, tuple[float, int]] = OrderedDict()

    # --- nonces --------------------------------------------------------------------------------------------
    def _mac(self, stamp: bytes, salt: bytes) -> bytes:
        return hmac.new(self._secret, self.realm.encode() + b"\0" + stamp + salt, hashlib.sha256).digest()[
            :16
        ]

    def make_nonce(self, now: float) -> str:
        stamp = struct.pack(">q", round(now * 1000))
        salt = self._random(8)
        return base64.urlsafe_b64encode(stamp + salt + self._mac(stamp, salt)).decode().rstrip("=")

    def _nonce_issued_at(self, nonce: str) -> float | None:
        """When we issued ``nonce`` (seconds, our clock), or None if it is not one of ours."""
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (ValueError, TypeError):
            return None
        if len(raw) != 32:
            return None
        stamp, salt, mac = raw[:8], raw[8:16], raw[16:]
        if not hmac.compare_digest(mac, self._mac(stamp, salt)):
            return None
        return float(struct.unpack(">q", stamp)[0]) / 1000.0

    # --- responses -----------------------------------------------------------------------------------------
    @property
    def _challenge_header(self) -> str:
        return "Proxy-Authenticate" if self.proxy else "WWW-Authenticate"

    @property
    def _credentials_header(self) -> str:
        return "Proxy-Authorization" if self.proxy else "Authorization"

    def _response(
        self, request: Request, status: int, reason: str, extra: Sequence[tuple[str, str]]
    ) -> Response:
        headers = Headers()
        for via in request.headers.get_all("Via"):
            headers.add("Via", via)
        for name in ("From", "To", "Call-ID", "CSeq"):
            value = request.headers.get(name)
            if value is None:
                continue
            if name == "To" and request.to.tag is None:
                value = str(request.to.with_tag(self._random(6).hex()))
            headers.add(name, value)
        for name, value in extra:
            headers.add(name, value)
        return Response(status, reason, headers)

    def challenge(self, request: Request, now: float, *, stale: bool = False) -> Response:
        """A 401 (407 for a proxy) with one challenge per algorithm, strongest first, sharing one nonce."""
        nonce = self.make_nonce(now)
        extra = [
            (self._challenge_header, str(DigestChallenge(self.realm, nonce, alg, ("auth",), stale=stale)))
            for alg in self.algorithms
        ]
        if self.proxy:
            return self._response(request, 407, "Proxy Authentication Required", extra)
        return self._response(request, 401, "Unauthorized", extra)

    # --- throttling ----------------------------------------------------------------------------------------
    def is_throttled(self, source: str, now: float) -> bool:
        record = self._sources.get(source)
        return record is not None and record.locked_until > now

    @property
    def tracked_sources(self) -> int:
        """Sources with failures or a lockout on record (bounded by ``max_tracked`` + 1)."""
        return len(self._sources)

    def _prune(self, now: float) -> None:
        if len(self._sources) > self._max_tracked:
            horizon = now - self.failure_window
            for key in [
                k
                for k, r in self._sources.items()
                if r.locked_until <= now and (not r.failures or r.failures[-1] <= horizon)
            ]:
                del self._sources[key]
            excess = len(self._sources) - int(self._max_tracked * 0.9)
            if excess > 0:  # still full of active sources (a spread-out attack): forget the oldest records
                for key in list(itertools.islice(self._sources, excess)):
                    del self._sources[key]
        while self._nc_seen:
            nonce, (issued, _) = next(iter(self._nc_seen.items()))
            if issued >= now - self.nonce_ttl and len(self._nc_seen) <= self._max_tracked * 10:
                break
            del self._nc_seen[nonce]

    def _fail(
        self,
        request: Request,
        now: float,
        source: str,
        kind: str,
        detail: str,
        username: str | None,
        *,
        status: AuthStatus = AuthStatus.CHALLENGE,
    ) -> AuthResult:
        record = self._sources.setdefault(source, _SourceRecord(deque()))
        while record.failures and record.failures[0] <= now - self.failure_window:
            record.failures.popleft()
        record.failures.append(now)
        count = len(record.failures)
        until: float | None = None
        if count >= self.max_failures:
            record.locked_until = now + self.lockout
            record.failures.clear()
            until = record.locked_until
        event = SecurityEvent(kind, source, self.realm, username, request.method, detail, count, until, now)
        self._prune(now)
        if status is AuthStatus.REJECTED:
            response = self._response(
                request, 400, "Bad Request (credentials do not match the Request-URI)", ()
            )
        else:
            response = self.challenge(request, now)
        return AuthResult(status, username, response, event)

    # --- the check -----------------------------------------------------------------------------------------
    def check(self, request: Request, now: float, source: str) -> AuthResult:
        """Authenticate ``request`` from ``source`` at ``now``; see the module docstring for the outcomes."""
        record = self._sources.get(source)
        if record is not None and record.locked_until > now:
            event = SecurityEvent(
                "throttled",
                source,
                self.realm,
                None,
                request.method,
                f"source locked out after {self.max_failures} failures",
                0,
                record.locked_until,
                now,
            )
            response = self._response(request, 403, "Forbidden (too many failed authentications)", ())
            return AuthResult(AuthStatus.THROTTLED, None, response, event)

        creds: DigestCredentials | None = None
        malformed: str | None = None
        for value in request.headers.get_all(self._credentials_header):
            scheme = value.strip(" \t").split(" ", 1)[0].lower()
            if scheme != "digest":
                continue  # another scheme (RFC 4475 regaut01): answer with our challenge
            try:
                parsed = DigestCredentials.parse(value)
            except AuthError as exc:
                if _realm_of(value) in (self.realm, None):
                    malformed = str(exc)
                continue
            if parsed.realm == self.realm:
                creds = parsed
                break
        if creds is None:
            if malformed is not None:
                return self._fail(request, now, source, "malformed", malformed, None)
            return AuthResult(AuthStatus.CHALLENGE, None, self.challenge(request, now))

        user = creds.username
        if creds.algorithm not in self.algorithms:
            detail = f"algorithm {creds.algorithm!r} not offered: expected one of {self.algorithms}"
            return self._fail(request, now, source, "bad_algorithm", detail, user)
        if creds.userhash:
            return self._fail(request, now, source, "malformed", "userhash was not offered", user)
        if creds.qop not in ("auth", "auth-int"):
            detail = f"qop {creds.qop!r} answered: expected auth or auth-int (qop=auth was offered)"
            return self._fail(request, now, source, "malformed", detail, user)
        issued = self._nonce_issued_at(creds.nonce)
        if issued is None:
            return self._fail(request, now, source, "bad_nonce", "nonce was not issued by this server", user)
        if not _same_uri(creds.uri, request.uri):
            detail = f"credentials for uri {creds.uri!r} on a request for {str(request.uri)!r}"
            return self._fail(request, now, source, "uri_mismatch", detail, user, status=AuthStatus.REJECTED)

        password = self._lookup(user)
        expected = digest_response(
            algorithm=creds.algorithm,
            username=user,
            password=password if password is not None else self._secret.hex(),
            realm=self.realm,
            nonce=creds.nonce,
            method=request.method,
            uri=creds.uri,
            qop=creds.qop,
            nc=creds.nc,
            cnonce=creds.cnonce,
            body=request.body,
        )
        right = hmac.compare_digest(expected, creds.response)
        if password is None:
            return self._fail(request, now, source, "unknown_user", f"no such user {user!r}", user)
        if not right:
            return self._fail(request, now, source, "bad_response", "digest response does not match", user)
        if not issued - 5.0 <= now <= issued + self.nonce_ttl:
            return AuthResult(AuthStatus.CHALLENGE, user, self.challenge(request, now, stale=True))
        nc = int(creds.nc or "0", 16)
        last = self._nc_seen.get(creds.nonce)
        if last is not None and nc <= last[1]:
            detail = f"nonce count {nc} not above {last[1]} already used with this nonce"
            return self._fail(request, now, source, "replay", detail, user)
        self._nc_seen[creds.nonce] = (issued, nc)
        self._sources.pop(source, None)
        self._prune(now)
        return AuthResult(AuthStatus.OK, user)


def _same_uri(text: str, uri: URI) -> bool:
    if text == str(uri):
        return True
    try:
        return URI.parse(text) == uri
    except SipParseError:
        return False
