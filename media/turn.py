"""Short-lived TURN credentials: the "TURN REST API" scheme coturn checks with ``use-auth-secret``. Pure.

Theory of operation
-------------------
coturn (``use-auth-secret`` + ``static-auth-secret=<secret>``) and this gateway share one secret. For each
browser that asks for its ICE configuration we mint a credential that coturn can verify without any database
(draft-uberti-behave-turn-rest-00, as coturn implements it):

* ``username = "<expiry>:<user>"``, where ``expiry`` is a Unix time in whole seconds (now + ``ttl_s``) and
  ``user`` a label of who asked (a person id, ``room-<code>``); ``:`` is coturn's default
  ``rest-api-separator``;
* ``credential = base64(HMAC-SHA1(secret, username))``.

coturn refuses the credential once the expiry has passed (an allocation already made lives on until it is
refreshed). The secret itself never leaves the server: pages only ever see ``(username, credential)``.
Time comes in as ``now_unix`` (the caller reads the one clock).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
from dataclasses import dataclass, field

from media.errors import MediaError

__all__ = ["DEFAULT_TTL_S", "TurnCredential", "TurnRest", "turn_credential"]

DEFAULT_TTL_S = 86400
_USER = re.compile(r"[A-Za-z0-9._@+\-]{1,64}")


@dataclass(frozen=True)
class TurnCredential:
    username: str
    credential: str
    expires_unix: int


def turn_credential(secret: str, user: str, now_unix: float, ttl_s: int = DEFAULT_TTL_S) -> TurnCredential:
    """The credential of ``user`` valid from ``now_unix`` for ``ttl_s`` seconds."""
    if not secret:
        raise MediaError(
            "cannot mint a TURN credential with an empty secret: expected coturn's static-auth-secret"
        )
    if not _USER.fullmatch(user):
        raise MediaError(
            f"TURN user label {user[:70]!r}: expected 1-64 characters of letters, digits and ._@+- (no ':')"
        )
    if ttl_s <= 0:
        raise MediaError(f"TURN credential lifetime {ttl_s} s: expected a positive number of seconds")
    expires = math.floor(now_unix) + ttl_s
    username = f"{expires}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredential(username, base64.b64encode(digest).decode("ascii"), expires)


@dataclass(frozen=True)
class TurnRest:
    """TURN servers that take short-lived credentials from a secret shared with coturn."""

    urls: tuple[str, ...]
    secret: str = field(repr=False)
    ttl_s: int = DEFAULT_TTL_S

    def __post_init__(self) -> None:
        if not self.urls:
            raise MediaError(
                "TURN REST credentials without TURN URLs: expected at least one turn: or turns: URL"
            )
        for url in self.urls:
            if not url.startswith(("turn:", "turns:")):
                raise MediaError(f"TURN URL {url!r}: expected turn: or turns:")
        if self.ttl_s <= 0:
            raise MediaError(
                f"TURN credential lifetime {self.ttl_s} s: expected a positive number of seconds"
            )

    def credential(self, user: str, now_unix: float) -> TurnCredential:
        return turn_credential(self.secret, user, now_unix, self.ttl_s)
