"""Field checks shared by the models, the directory import and the API.

Each function returns the normal form of a value or raises :class:`comms.errors.ValidationError` with a
message that names the value and what was expected. They are pure (no database).
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterable

from comms.db.types import Role
from comms.errors import ValidationError

_STATES = """AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY
NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC PR GU VI AS MP"""
US_STATES = frozenset(_STATES.split())

_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}")
_USERNAME = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,63}")
_GROUP_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
_TARGET = re.compile(rf"rotation:(primary|backup)|person:[a-z0-9][a-z0-9_.\-]{{0,63}}|group:{_GROUP_NAME}")
_GROUP = re.compile(_GROUP_NAME)

RING_TIMEOUT_MIN_S = 10
RING_TIMEOUT_MAX_S = 120
GROUP_SIZE_MAX = 50


def timezone_name(value: str) -> str:
    """An IANA zone name such as ``America/Chicago``."""
    if not isinstance(value, str) or not value or value.startswith("/") or ".." in value:
        raise ValidationError(f"time zone {value!r} is not an IANA zone: expected e.g. 'America/Chicago'")
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(
            f"time zone {value!r} is not an IANA zone: expected e.g. 'America/Chicago'"
        ) from exc
    return value


def us_state(value: str) -> str:
    """A two-letter USPS state or territory code, upper-cased."""
    norm = value.strip().upper() if isinstance(value, str) else ""
    if norm not in US_STATES:
        raise ValidationError(f"US state {value!r} is not a two-letter USPS code: expected e.g. 'IL'")
    return norm


def npi(value: str) -> str:
    """A National Provider Identifier: 10 digits, the last a Luhn check digit over ``80840`` + the first 9."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{10}", value):
        raise ValidationError(f"NPI {value!r} is not 10 digits: expected e.g. '1234567893'")
    if not _luhn_ok("80840" + value):
        raise ValidationError(f"NPI {value!r} fails the Luhn check digit: expected a valid NPI")
    return value


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def roles(values: Iterable[str] | str) -> str:
    """Roles as the stored comma string (sorted, unique); every role must be known."""
    items = values.split(",") if isinstance(values, str) else list(values)
    known = {r.value for r in Role}
    out: set[str] = set()
    for item in items:
        name = item.strip()
        if not name:
            continue
        if name not in known:
            raise ValidationError(f"role {name!r} is unknown: expected one of {', '.join(sorted(known))}")
        out.add(name)
    return ",".join(sorted(out))


def hhmm(value: str) -> str:
    """A local wall time ``HH:MM`` (24 h)."""
    if not isinstance(value, str) or not _HHMM.fullmatch(value):
        raise ValidationError(f"time {value!r} is not HH:MM: expected 24-hour local time such as '07:00'")
    return value


def weekday(value: int) -> int:
    """0 = Monday ... 6 = Sunday (Python's ``date.weekday()``)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 6:
        raise ValidationError(f"weekday {value!r} is out of range: expected 0 (Monday) to 6 (Sunday)")
    return value


def code(value: str, what: str = "code") -> str:
    """A short code (site, room): letters, digits, ``_.-``, 1-32 chars."""
    if not isinstance(value, str) or not _CODE.fullmatch(value):
        raise ValidationError(f"{what} {value!r} is not a short code: expected 1-32 of A-Z a-z 0-9 _ . -")
    return value


def username(value: str) -> str:
    if not isinstance(value, str) or not _USERNAME.fullmatch(value):
        raise ValidationError(f"username {value!r} is not valid: expected 1-64 of a-z 0-9 _ . - (lower case)")
    return value


def ring_timeout(value: int) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not (RING_TIMEOUT_MIN_S <= value <= RING_TIMEOUT_MAX_S)
    ):
        raise ValidationError(
            f"ring timeout {value!r} s is out of range: expected {RING_TIMEOUT_MIN_S}-{RING_TIMEOUT_MAX_S} s"
        )
    return value


def group_name(value: str) -> str:
    """A person group's name, as policies name it in ``group:<name>``: 1-64 of A-Z a-z 0-9 _ . - (no spaces)."""
    if not isinstance(value, str) or not _GROUP.fullmatch(value):
        raise ValidationError(
            f"group name {value!r} is not valid: expected 1-64 of A-Z a-z 0-9 _ . - starting with a letter "
            "or digit (no spaces)"
        )
    return value


def group_size(value: int) -> int:
    """How many members a ``least_recent`` group pages at once: 1 to :data:`GROUP_SIZE_MAX`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= GROUP_SIZE_MAX:
        raise ValidationError(f"group size {value!r} is out of range: expected 1-{GROUP_SIZE_MAX} members")
    return value


def tier_targets(values: list[str]) -> list[str]:
    """A tier's targets: ``rotation:primary``, ``rotation:backup``, ``person:<username>`` or ``group:<name>``;
    at least one."""
    if not isinstance(values, list) or not values:
        raise ValidationError(f"tier targets {values!r} are empty: expected a non-empty list")
    for v in values:
        if not isinstance(v, str) or not _TARGET.fullmatch(v):
            raise ValidationError(
                f"tier target {v!r} is not valid: expected 'rotation:primary', 'rotation:backup', "
                "'person:<username>' or 'group:<name>'"
            )
    if len(set(values)) != len(values):
        raise ValidationError(f"tier targets {values!r} repeat a target: expected each once")
    return list(values)
