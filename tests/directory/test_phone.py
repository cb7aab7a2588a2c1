"""comms.phone: E.164 and SIP URI normalisation, refusals that name the reason, masking for logs."""

from __future__ import annotations

import pytest

from comms.phone import PhoneNumberError, mask, normalize_address, normalize_e164, normalize_sip_uri


@pytest.mark.parametrize(
    ("text", "e164"),
    [
        ("(312) 555-0142", "+13125550142"),
        ("+1 312 555 0142", "+13125550142"),
        ("tel:+13125550142;phone-context=x", "+13125550142"),
        ("+44 20 7946 0958", "+442079460958"),
    ],
)
def test_e164(text: str, e164: str) -> None:
    assert normalize_e164(text) == e164


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("12345", "TOO_SHORT"),
        ("+1 312 555 012345678", "TOO_LONG"),
        ("+999 123", "INVALID_COUNTRY_CODE"),
        ("call me", "NOT_A_NUMBER"),
        ("+1 099 555 0142", "INVALID_NUMBER"),
    ],
)
def test_e164_refusals_name_the_reason(text: str, reason: str) -> None:
    with pytest.raises(PhoneNumberError) as info:
        normalize_e164(text)
    assert info.value.reason == reason
    assert repr(text) in str(info.value)


def test_sip_uri_normal_form_and_refusals() -> None:
    assert normalize_sip_uri("SIPS:Alice@PBX.Example.ORG:5061") == "sips:Alice@pbx.example.org:5061"
    for text, reason in [
        ("sip:pbx.example.org", "NO_SIP_USER"),
        ("tel:+13125550142", "BAD_SIP_SCHEME"),
        ("mailto:a@b", "BAD_SIP_URI"),
        ("sip:alice:secret@pbx.example.org", "SIP_PASSWORD"),
    ]:
        with pytest.raises(PhoneNumberError) as info:
            normalize_sip_uri(text)
        assert info.value.reason == reason, text


def test_normalize_address_by_kind() -> None:
    assert normalize_address("sms", "312-555-0142") == "+13125550142"
    assert normalize_address("sip", "sip:a@h") == "sip:a@h"
    with pytest.raises(PhoneNumberError, match="unknown contact kind 'fax'"):
        normalize_address("fax", "+13125550142")


def test_mask() -> None:
    assert mask("+13125550142") == "+1312555****"
    assert mask("sip:alice@pbx.example.org") == "sip:a***@pbx.example.org"
    assert mask("123") == "***"
