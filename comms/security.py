"""Secrets at rest: people's passwords (argon2id) and room device tokens (SHA-256, compared in constant time).

* A password is stored as an argon2id PHC string (``$argon2id$v=19$m=...``) made by argon2-cffi; the
  parameters travel inside the string, so raising them later only needs :func:`password_needs_rehash` at the
  next login.
* A device token is a random 256-bit URL-safe string handed to a room once; only ``sha256(token)`` in hex is
  stored (``Room.device_token_hash``). A plain hash is enough because the token has full entropy: there is
  nothing to guess, so no slow hash is needed, and a lookup by hash stays an index hit.
* Every comparison of secrets goes through :func:`hmac.compare_digest`.

Hashing a password costs ~85 ms of CPU: call these from a thread (``loop.run_in_executor``) in a server.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "DEFAULT_HASHER",
    "check_password_or_dummy",
    "hash_device_token",
    "hash_password",
    "new_device_token",
    "password_needs_rehash",
    "verify_device_token",
    "verify_password",
]

#: argon2id with argon2-cffi's RFC 9106 "low memory" defaults (t=3, m=64 MiB, p=4).
DEFAULT_HASHER = PasswordHasher()

_DEVICE_TOKEN_BYTES = 32
_dummy_hash: str | None = None


def hash_password(password: str, *, hasher: PasswordHasher = DEFAULT_HASHER) -> str:
    """Return the argon2id PHC string for ``password`` (refuses an empty password)."""
    if not password:
        raise ValueError("cannot hash an empty password: expected at least one character")
    return hasher.hash(password)


def verify_password(stored_hash: str, password: str, *, hasher: PasswordHasher = DEFAULT_HASHER) -> bool:
    """True when ``password`` matches ``stored_hash``; False on a mismatch or an unreadable stored hash."""
    try:
        return hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def check_password_or_dummy(
    stored_hash: str | None, password: str, *, hasher: PasswordHasher = DEFAULT_HASHER
) -> bool:
    """Like :func:`verify_password`, but for an unknown user (``stored_hash`` None) spend the time and fail.

    This keeps a login for a username that does not exist as slow as a wrong password, so timing does not tell
    which usernames exist.
    """
    global _dummy_hash
    if stored_hash is None:
        if _dummy_hash is None:
            _dummy_hash = hasher.hash(secrets.token_urlsafe(16))
        verify_password(_dummy_hash, password, hasher=hasher)
        return False
    return verify_password(stored_hash, password, hasher=hasher)


def password_needs_rehash(stored_hash: str, *, hasher: PasswordHasher = DEFAULT_HASHER) -> bool:
    """True when ``stored_hash`` was made with weaker parameters than ``hasher`` uses now."""
    try:
        return hasher.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return True


def new_device_token() -> str:
    """A fresh room device token (43 URL-safe characters, 256 bits). Show it once; store only its hash."""
    return secrets.token_urlsafe(_DEVICE_TOKEN_BYTES)


def hash_device_token(token: str) -> str:
    """The value stored in ``Room.device_token_hash``: SHA-256 of the UTF-8 token, 64 lowercase hex digits."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def verify_device_token(token: str, stored_hash: str) -> bool:
    """True when ``token`` hashes to ``stored_hash``, compared in constant time."""
    return hmac.compare_digest(hash_device_token(token), stored_hash.lower())
