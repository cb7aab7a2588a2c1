"""Phone numbers and SIP URIs: parse, check, normalise, mask.

* PSTN numbers are normalised to E.164 with ``phonenumbers`` (default region US). A refusal names the reason
  the library gives (``TOO_SHORT``, ``INVALID_COUNTRY_CODE``, ...) or says the number is not valid for its
  region.
* SIP contact addresses are parsed with :class:`sip.message.URI` and must be ``sip:``/``sips:`` with a user
  part and a host; the normal form is the URI rendered back (scheme and host lower-cased).
* Pager addresses name the protocol (see ``escalation/pager.py``): ``wctp:<recipient id>``,
  ``snpp:<pager id>`` (1-64 of letters, digits, ``_.-@+``; no spaces, since both go into a protocol field or
  an SNPP command line) or ``mailto:<local@domain>`` (one address; scheme and domain lower-cased).
* :func:`mask` is what logs show (no full phone numbers in logs).
"""

from __future__ import annotations

import re

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, ValidationResult

from comms.errors import ValidationError
from sip.errors import SipParseError
from sip.message import URI

_PARSE_ERRORS = {
    NumberParseException.INVALID_COUNTRY_CODE: "INVALID_COUNTRY_CODE",
    NumberParseException.NOT_A_NUMBER: "NOT_A_NUMBER",
    NumberParseException.TOO_SHORT_AFTER_IDD: "TOO_SHORT_AFTER_IDD",
    NumberParseException.TOO_SHORT_NSN: "TOO_SHORT_NSN",
    NumberParseException.TOO_LONG: "TOO_LONG",
}

_POSSIBLE = {
    ValidationResult.IS_POSSIBLE: "IS_POSSIBLE",
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "IS_POSSIBLE_LOCAL_ONLY",
    ValidationResult.INVALID_COUNTRY_CODE: "INVALID_COUNTRY_CODE",
    ValidationResult.TOO_SHORT: "TOO_SHORT",
    ValidationResult.INVALID_LENGTH: "INVALID_LENGTH",
    ValidationResult.TOO_LONG: "TOO_LONG",
}


class PhoneNumberError(ValidationError):
    """A phone number or SIP URI was refused; ``reason`` is a short machine name such as ``TOO_SHORT``."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def normalize_e164(text: str, region: str = "US") -> str:
    """Return ``text`` as an E.164 number (``+13125550123``) or raise :class:`PhoneNumberError`."""
    raw = text.strip()
    if raw.lower().startswith("tel:"):
        raw = raw[4:].split(";", 1)[0]
    try:
        number = phonenumbers.parse(raw, region)
    except NumberParseException as exc:
        name = _PARSE_ERRORS.get(exc.error_type, f"ERROR_{exc.error_type}")
        raise PhoneNumberError(f"cannot parse phone number {text!r}: {name} ({exc._msg})", name) from exc
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible not in (ValidationResult.IS_POSSIBLE, ValidationResult.IS_POSSIBLE_LOCAL_ONLY):
        name = _POSSIBLE.get(possible, f"ERROR_{possible}")
        raise PhoneNumberError(f"phone number {text!r} is not a possible number: {name}", name)
    if not phonenumbers.is_valid_number(number):
        where = phonenumbers.region_code_for_number(number) or f"+{number.country_code}"
        raise PhoneNumberError(
            f"phone number {text!r} is not a valid number for region {where}: expected an assigned range",
            "INVALID_NUMBER",
        )
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def normalize_sip_uri(text: str) -> str:
    """Return the normal form of a SIP/SIPS URI with a user and a host, or raise :class:`PhoneNumberError`."""
    try:
        uri = URI.parse(text)
    except SipParseError as exc:
        raise PhoneNumberError(f"cannot parse SIP URI {text!r}: {exc}", "BAD_SIP_URI") from exc
    if uri.scheme not in ("sip", "sips"):
        raise PhoneNumberError(
            f"SIP URI {text!r} has scheme {uri.scheme!r}: expected sip or sips", "BAD_SIP_SCHEME"
        )
    if not uri.user:
        raise PhoneNumberError(f"SIP URI {text!r} has no user part: expected sip:user@host", "NO_SIP_USER")
    if not uri.host:
        raise PhoneNumberError(f"SIP URI {text!r} has no host: expected sip:user@host", "NO_SIP_HOST")
    if uri.password is not None:
        raise PhoneNumberError(
            f"SIP URI {text!r} carries a password: expected none (credentials belong in config)",
            "SIP_PASSWORD",
        )
    return str(uri)


PAGER_SCHEMES = ("wctp", "snpp", "mailto")
_PAGER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+\-]{0,63}")
_EMAIL = re.compile(
    r"(?P<local>[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+)*)"
    r"@(?P<domain>([A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)"
)
_PAGER_EXPECTED = "expected wctp:<recipient id>, snpp:<pager id> or mailto:<e-mail address>"


def normalize_pager_address(text: str) -> str:
    """Return the normal form of a pager address (``wctp:``, ``snpp:`` or ``mailto:``) or raise
    :class:`PhoneNumberError` naming what was seen and what was expected."""
    if not isinstance(text, str):
        raise PhoneNumberError(f"pager address {text!r} is not text: {_PAGER_EXPECTED}", "BAD_PAGER_ADDRESS")
    raw = text.strip()
    scheme, colon, rest = raw.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in PAGER_SCHEMES:
        seen = f"scheme {scheme!r}" if colon else "no scheme"
        raise PhoneNumberError(f"pager address {text!r} has {seen}: {_PAGER_EXPECTED}", "BAD_PAGER_SCHEME")
    if scheme == "mailto":
        match = _EMAIL.fullmatch(rest)
        if match is None or len(rest) > 254:
            raise PhoneNumberError(
                f"pager address {text!r}: {rest!r} is not one e-mail address: expected mailto:local@domain "
                "(no name, no list, no spaces)",
                "BAD_PAGER_EMAIL",
            )
        return f"mailto:{match.group('local')}@{match.group('domain').lower()}"
    if not _PAGER_ID.fullmatch(rest):
        what = "recipient id" if scheme == "wctp" else "pager id"
        raise PhoneNumberError(
            f"pager address {text!r}: {what} {rest!r} is not valid: expected 1-64 of letters, digits, "
            "_ . - @ + (no spaces), e.g. wctp:5551001",
            "BAD_PAGER_ID",
        )
    return f"{scheme}:{rest}"


def normalize_address(kind: str, text: str, region: str = "US") -> str:
    """Normalise a contact address for its kind: ``sip`` -> SIP URI, ``pstn_voice``/``sms`` -> E.164,
    ``pager`` -> ``wctp:``/``snpp:``/``mailto:`` address."""
    if kind == "sip":
        return normalize_sip_uri(text)
    if kind in ("pstn_voice", "sms"):
        return normalize_e164(text, region)
    if kind == "pager":
        return normalize_pager_address(text)
    raise PhoneNumberError(
        f"unknown contact kind {kind!r} for address {text!r}: expected sip, pstn_voice, sms or pager",
        "BAD_KIND",
    )


def mask(address: str) -> str:
    """What logs may show of an address: ``+1312555****``, ``sip:1***@host`` or ``mailto:a***@host``."""
    if address.startswith(("sip:", "sips:", "mailto:")):
        scheme, _, rest = address.partition(":")
        user, at, host = rest.partition("@")
        if not at:
            return address
        return f"{scheme}:{user[:1]}***@{host}"
    if len(address) <= 4:
        return "*" * len(address)
    return address[:-4] + "****"
