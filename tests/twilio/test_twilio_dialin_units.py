"""Units of the Twilio dial-in and streams: grant tokens, hold TwiML, caller-ID matching, the config key."""

from __future__ import annotations

import pytest

from comms.clock import FakeClock
from config.loader import load
from config.settings import ConfigError
from escalation.twilio_dialin import TwilioDialIn
from escalation.twilio_streams import StreamGrants, stream_url
from ivr.twiml import conference, connect_stream, hold
from media.errors import MediaError
from tests.twilio.twiml_caller import parse_verbs

CALL = "CA" + "1" * 32


def _never(_ctx):  # type: ignore[no-untyped-def]
    raise AssertionError("not attached in these tests")


def test_a_grant_is_used_once_for_its_call_only_and_expires() -> None:
    clock = FakeClock()
    grants = StreamGrants(clock, ttl_s=60.0)
    token = grants.issue(incident_id="i1", leg_id="l1", call_sid=CALL, purpose="room", attach=_never)
    other = grants.issue(incident_id="i1", leg_id="l1", call_sid=CALL, purpose="room", attach=_never)
    assert token != other and len(token) >= 32
    with pytest.raises(MediaError, match=f"issued for call {CALL}, not CAother"):
        grants.claim(token, "CAother")
    grant = grants.claim(token, CALL)
    assert (grant.incident_id, grant.leg_id, grant.purpose) == ("i1", "l1", "room")
    with pytest.raises(MediaError, match="unknown, used or expired"):
        grants.claim(token, CALL)  # used
    with pytest.raises(MediaError, match="unknown, used or expired"):
        grants.claim("", CALL)
    clock.advance(61.0)
    with pytest.raises(MediaError, match="unknown, used or expired"):
        grants.claim(other, CALL)  # expired
    third = grants.issue(incident_id="i2", leg_id=None, call_sid=CALL, purpose="dialin", attach=_never)
    grants.revoke(CALL)
    with pytest.raises(MediaError):
        grants.claim(third, CALL)


def test_stream_and_hold_twiml() -> None:
    url = stream_url("https://comms.example.org/")
    assert url == "wss://comms.example.org/twilio/media-stream"
    (say, connect, after, hangup) = parse_verbs(
        connect_stream(["Hello."], url, {"token": "t0k"}, after=["Bye."])
    )
    assert (say.text, connect.stream_url, connect.parameters, after.text, hangup.tag) == (
        "Hello.",
        url,
        {"token": "t0k"},
        "Bye.",
        "Hangup",
    )
    say, pause, redirect = parse_verbs(
        hold(["Doctor Lee is being called, attempt 2."], pause_s=0, redirect_url="u")
    )
    assert pause.attrs == {"length": "1"} and redirect.text == "u" and redirect.attrs["method"] == "POST"
    (pause,) = parse_verbs(hold([], pause_s=2, redirect_url="u"))[:1]
    assert pause.tag == "Pause"
    verbs = parse_verbs(conference(["Hi."], "incident-x", status_callback="https://h/cb"))
    dial = verbs[1]
    assert dial.conference == "incident-x"
    assert dial.conference_attrs["endConferenceOnExit"] == "true"
    assert dial.conference_attrs["statusCallbackEvent"] == "join leave end"


def test_room_by_caller_id_matches_the_number_in_the_room_phone_uri() -> None:
    rooms = [("CT2", "sip:+13125550150@pbx.example.org"), ("MR4", None), ("US1", "sip:desk@10.0.0.1")]
    assert TwilioDialIn._room_by_caller_id("+13125550150", rooms) == "CT2"
    assert TwilioDialIn._room_by_caller_id("(312) 555-0150", rooms) == "CT2"
    assert TwilioDialIn._room_by_caller_id("+13125550151", rooms) is None
    assert TwilioDialIn._room_by_caller_id("anonymous", rooms) is None
    twice = [*rooms, ("CT3", "sip:+13125550150@other.example.org")]
    assert TwilioDialIn._room_by_caller_id("+13125550150", twice) is None  # ambiguous: ask for the code


def test_config_twilio_dialin_number() -> None:
    env = {
        "COMMS_TWILIO__ACCOUNT_SID": "AC" + "0" * 32,
        "COMMS_TWILIO__AUTH_TOKEN": "secret",
        "COMMS_TWILIO__FROM_NUMBER": "+13125550100",
    }
    settings = load(None, {**env, "COMMS_TWILIO__DIALIN_NUMBER": "+13125550199"})
    assert settings.twilio is not None and settings.twilio.dialin_number == "+13125550199"
    unset = load(None, env).twilio
    assert unset is not None and unset.dialin_number is None
    with pytest.raises(ConfigError, match=r"twilio\.dialin_number.*E\.164"):
        load(None, {**env, "COMMS_TWILIO__DIALIN_NUMBER": "555-0199"})
