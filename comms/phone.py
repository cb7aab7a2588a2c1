"""Phone numbers and SIP URIs: parse, check, normalise, mask.

* PSTN numbers are normalised to E.164 with ``phonenumbers`` (default region US). A refusal names the reason
  the library gives (``TOO_SHORT``, ``INVALID_COUNTRY_CODE``, ...) or says the number is not valid for its
  region.
* SIP contact addresses are parsed with :class:`sip.message.URI` and must be ``sip:``/``sips:`` with a user
  part and a host; the normal form is the URI rendered back (scheme and host lower-cased).
* :func:`mask` is what logs show (no full phone numbers in logs).
"""

from __future__ import annotations

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


def normalize_address(kind: str, text: str, region: str = "US") -> str:
    """Normalise a contact address for its kind: ``sip`` -> SIP URI, ``pstn_voice``/``sms`` -> E.164."""
    if kind == "sip":
        return normalize_sip_uri(text)
    if kind in ("pstn_voice", "sms"):
        return normalize_e164(text, region)
    raise PhoneNumberError(
        f"unknown contact kind {kind!r} for address {text!r}: expected sip, pstn_voice or sms", "BAD_KIND"
    )


def mask(address: str) -> str:
    """What logs may show of an address: ``+1312555****`` or ``sip:1***@host``."""
    if address.startswith(("sip:", "sips:")):
        scheme, _, rest = address.partition(":")
        user, at, host = rest.partition("@")
        if not at:
            return address
        return f"{scheme}:{user[:1]}***@{host}"
    if len(address) <= 4:
        return "*" * len(address)
    return address[:-4] + "****"
