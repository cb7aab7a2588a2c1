"""validate_directory: the example is clean; a broken file yields every problem with its line and key path."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from comms.db.types import ContactKind, GroupPick, TierName
from comms.directory import GroupEntry, Problem, validate_directory

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "directory.example.toml"


def test_example_is_valid_and_complete() -> None:
    d, problems = validate_directory(EXAMPLE.read_text(), "example.toml")
    assert problems == []
    assert [s.code for s in d.sites] == ["NSI"]
    assert (d.sites[0].timezone, d.sites[0].us_state) == ("America/Chicago", "IL")
    assert [r.code for r in d.rooms] == ["CT2", "MR1"]
    assert d.rooms[0].device_token == "demo-ct2-device-token-change-me"
    assert d.rooms[1].device_token is None
    radiologists = [p.username for p in d.people if "radiologist" in p.roles.split(",")]
    assert radiologists == ["achen", "bpatel", "cgarcia"]
    assert [p.username for p in d.people if p.roles == "technologist"] == ["dtech"]
    achen = d.people[0]
    assert [(c.kind, c.address) for c in achen.contacts] == [
        (ContactKind.SIP, "sip:achen@127.0.0.1:5071"),
        (ContactKind.PSTN_VOICE, "+13125550101"),
        (ContactKind.PAGER, "wctp:5550101"),
    ]
    assert [c.priority for c in achen.contacts] == [0, 1, 2]
    assert [(r.tier, r.members) for r in d.rotations] == [
        (TierName.PRIMARY, ("achen", "bpatel", "cgarcia")),
        (TierName.BACKUP, ("bpatel", "cgarcia", "achen")),
    ]
    assert d.rotations[0].start_date == dt.date(2026, 1, 5)
    assert [(len(p.tiers), p.repeat, p.severe_fanout) for p in d.policies] == [(4, 2, 2)]
    assert [t.parallel for t in d.policies[0].tiers] == [True, True, True, True]
    assert d.policies[0].tiers[3].targets == ("group:body-pool",)
    assert d.groups == (GroupEntry("NSI", "body-pool", ("bpatel", "cgarcia"), GroupPick.LEAST_RECENT, 1),)
    assert d.policies[0].tiers[2].targets == ("rotation:primary", "rotation:backup", "person:cgarcia")


BROKEN = """\
[[site]]
code = "NSI"
name = "Northside Imaging"
timezone = "America/Chicag"
us_state = "ZZ"
colour = "blue"

[[room]]
site = "NSX"
code = "CT2"
name = "CT 2"
device_token = "short"

[[room]]
site = "NSI"
code = "CT2"
name = "CT 2 again"

[[person]]
username = "achen"
display_name = "Dr. Alice Chen"
roles = ["radiologist", "wizard"]
npi = "1234567890"

[[person.contact]]
kind = "pstn_voice"
address = "12345"

[[person.contact]]
kind = "fax"
address = "+13125550100"

[[person]]
username = "bpatel"
display_name = "Dr. Bharat Patel"
roles = ["radiologist"]

[[person.contact]]
kind = "sip"
address = "sip:example.org"

[[person]]
username = "dtech"
display_name = "Dana"
roles = ["technologist"]

[[rotation]]
site = "NSI"
name = "Primary"
tier = "primary"
handoff_weekday = 7
handoff_time = "7:00"
start_date = "2026-13-01"
members = ["achen", "nobody", "dtech"]

[[policy]]
site = "NSI"
name = "Contrast"

[[policy.tier]]
ring_timeout_s = 5
targets = ["rotation:primary"]

[[policy.tier]]
targets = ["rotation:backup", "person:ghost"]

[[polcy]]
site = "NSI"
"""

EXPECTED = [
    (4, "site[0].timezone", "time zone 'America/Chicag' is not an IANA zone"),
    (5, "site[0].us_state", "US state 'ZZ' is not a two-letter USPS code"),
    (6, "site[0].colour", "unknown key 'colour'"),
    (9, "room[0].site", "site 'NSX' is not declared in this file (did you mean 'NSI'?)"),
    (12, "room[0].device_token", "device token is too weak: expected at least 16"),
    (16, "room[1].code", "room 'CT2' appears twice"),
    (22, "person[0].roles", "role 'wizard' is unknown"),
    (23, "person[0].npi", "NPI '1234567890' fails the Luhn check digit"),
    (27, "person[0].contact[0].address", "TOO_SHORT"),
    (30, "person[0].contact[1].kind", "'fax' is not allowed: expected one of sip, pstn_voice, sms"),
    (33, "person[1]", "radiologist 'bpatel' has no npi"),
    (40, "person[1].contact[0].address", "has no user part"),
    (51, "rotation[0].handoff_weekday", "weekday 7 is out of range: expected 0 (Monday) to 6 (Sunday)"),
    (52, "rotation[0].handoff_time", "time '7:00' is not HH:MM"),
    (53, "rotation[0].start_date", "'2026-13-01' is not a date: expected YYYY-MM-DD"),
    (54, "rotation[0].members", "person 'nobody' is not declared in this file"),
    (54, "rotation[0].members", "member 'dtech' is not a radiologist"),
    (61, "policy[0].tier[0].ring_timeout_s", "ring timeout 5 s is out of range: expected 10-120 s"),
    (65, "policy[0].tier[1].targets", "site 'NSI' has no backup rotation"),
    (65, "policy[0].tier[1].targets", "person 'ghost' is not declared in this file"),
    (67, "polcy", "unknown section 'polcy' (did you mean 'policy'?)"),
]


def test_broken_file_lists_every_problem_with_line_and_path() -> None:
    _, problems = validate_directory(BROKEN, "broken.toml")
    found = [(p.line, p.path, p.reason) for p in problems]
    for line, path, reason in EXPECTED:
        assert any(f == line and pa == path and reason in r for f, pa, r in found), (
            line,
            path,
            reason,
            found,
        )
    assert len(problems) == len(EXPECTED), "\n".join(map(str, problems))
    assert all(p.file == "broken.toml" for p in problems)
    assert str(problems[0]).startswith("broken.toml:4: site[0].timezone: ")


def test_toml_syntax_error_names_the_line() -> None:
    d, problems = validate_directory('[[site]]\ncode = "A"\nname = \n', "bad.toml")
    assert d.sites == ()
    assert len(problems) == 1
    assert problems[0].line == 3
    assert "not valid TOML" in problems[0].reason


_SITE = "[[site]]\ncode = 'A'\nname = 'A'\ntimezone = 'UTC'\nus_state = 'IL'\n"
_POLICY = _SITE + "[[policy]]\nsite = 'A'\nname = 'P'\n"
_TIER = "[[policy.tier]]\ntargets = ['person:x']\n"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('site = "x"\n', "expected an array of tables written [[site]]"),
        ("[[site]]\ncode = 1\n", "1 is an integer: expected a string"),
        ("[[site]]\ncode = 'A'\n", "missing key 'name'"),
        ("[[person]]\nusername = 'x'\ndisplay_name = 'X'\nroles = []\n", "are empty"),
        (
            "[[person]]\nusername = 'X Y'\ndisplay_name = 'X'\nroles = 'admin'\n",
            "username 'X Y' is not valid",
        ),
        (
            "[[person]]\nusername = 'x'\ndisplay_name = 'X'\nroles = 'admin'\npassword_hash = 'hunter2'\n",
            "argon2",
        ),
        (
            "[[person]]\nusername = 'x'\ndisplay_name = 'X'\nroles = 'admin'\nnpi = 1234567893\n",
            "expected a string",
        ),
        ("[[policy]]\nsite = 'A'\nname = 'P'\n", "expected at least one [[policy.tier]]"),
        (_POLICY + "repeat = 0\n" + _TIER, "repeat: 0 is out of range: expected 1-10 walks of the tree"),
        (_POLICY + "severe_fanout = 2\n" + _TIER, "2 is more than the 1 tier(s): expected 0-1"),
        (_POLICY + _TIER + "parallel = 'yes'\n", "'yes' is a string: expected a boolean"),
        (_SITE + "onsite_activation_uri = 'tel:+13125550100'\n", "has scheme 'tel': expected sip or sips"),
    ],
)
def test_single_problems(text: str, reason: str) -> None:
    _, problems = validate_directory(text, "f.toml")
    assert any(reason in str(p) for p in problems), [str(p) for p in problems]


def test_duplicates_and_one_policy_and_rotation_per_tier() -> None:
    text = EXAMPLE.read_text() + (
        '\n[[person]]\nusername = "achen"\ndisplay_name = "Twin"\nroles = ["admin"]\n'
        '\n[[rotation]]\nsite = "NSI"\nname = "Another"\ntier = "primary"\nhandoff_weekday = 0\n'
        'handoff_time = "07:00"\nstart_date = 2026-01-05\nmembers = ["achen"]\n'
        '\n[[policy]]\nsite = "NSI"\nname = "Second"\n[[policy.tier]]\ntargets = ["rotation:primary"]\n'
    )
    _, problems = validate_directory(text, "f.toml")
    reasons = [p.reason for p in problems]
    assert any("username 'achen' appears twice" in r for r in reasons), reasons
    assert any("already has a primary rotation" in r for r in reasons), reasons
    assert any("already has policy 'Contrast reaction'" in r for r in reasons), reasons
    assert len(problems) == 3
    assert all(isinstance(p, Problem) and p.line for p in problems)
